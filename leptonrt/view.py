"""The live terminal view of a broker: one screen drawn from one ``Snapshot``.

``render`` turns a snapshot into a rich renderable and ``plain_line`` into one line of
text; both are pure, so the same snapshot always draws the same way (times are shown
relative to ``snapshot.now``). The screen is laid out for the width it is drawn at: no line
is longer, so nothing wraps. At 80 columns the actor table keeps what fits, dropping first
the columns no actor has a figure for, then in ``DROP_ORDER``; at 160 it shows them all,
with longer sparklines.

``leptonrt.watch`` is the loop around them (redraws, keys). Colours follow the console, so
``NO_COLOR`` is honoured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

from rich.console import Console, ConsoleOptions, RenderResult
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .broker.stats import ActorStats, FinishedJob, JobStats, QueuedJob, Snapshot

WINDOW_S = 60.0            # the throughput history covers this much time
SPARK_WIDTH = 30           # characters in a sparkline at 80 columns (60 at 160)
BLOCKS = "▁▂▃▄▅▆▇█"
STATE_STYLES = {"training": "green", "lost": "bold red", "restarting": "yellow", "joining": "yellow",
                "standby": "cyan", "idle": "dim", "stopped": "dim", "finished": "dim", "stopping": "yellow",
                "starting": "yellow", "done": "green", "failed": "bold red", "cancelled": "yellow"}
# the actor columns that give way when the screen is narrow, first to go first (rank, device,
# state, share and samples/s always stay); before these go the columns without a figure for any
# actor ("-" in every row; "0" for restarts)
DROP_ORDER = ("name", "pid", "power", "compute ms", "gpu mem", "restarts", "gpu%", "rss", "cpu%")



def hms(seconds: float | None) -> str:
    """``3725`` -> ``"1:02:05"``; ``None`` -> ``"-"``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = max(int(seconds), 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def ago(seconds: float) -> str:
    """A short age: ``"12s ago"``, ``"3m05s ago"``, ``"2h04m ago"``."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s ago"
    return f"{s // 3600}h{s // 60 % 60:02d}m ago"


def _num(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def size(n: int | None) -> str:
    """Bytes, short: ``"412M"``, ``"1.5G"``; ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f}G"
    return f"{n / (1 << 20):.0f}M"


def sparkline(points: tuple[tuple[float, float], ...], now: float, *, window_s: float = WINDOW_S,
              width: int = SPARK_WIDTH) -> str:
    """The values of ``points`` in the ``window_s`` before ``now`` as ``width`` block characters.

    Each character is the mean of the points that fall in its slice of time; a slice with no
    point repeats the one before it, or is a space before the first point. The tallest block
    is the highest slice, so all-zero data is a flat line.
    """
    start, slice_s = now - window_s, window_s / width
    sums, counts = [0.0] * width, [0] * width
    for t, v in points:
        if t < start:
            continue
        i = min(int((t - start) / slice_s), width - 1)
        sums[i] += v if math.isfinite(v) and v > 0 else 0.0
        counts[i] += 1
    means: list[float | None] = []
    for s, c in zip(sums, counts):   # a gap between samples holds the value before it
        means.append(s / c if c else (means[-1] if means else None))
    return "".join(" " if m is None else b for m, b in zip(means, _blocks([m or 0.0 for m in means])))


def bars(values: tuple[float, ...], width: int) -> str:
    """``values`` (oldest first) as at most ``width`` block characters, each the mean of its
    share of them; the highest is a full block, zero the lowest."""
    if width <= 0:
        return ""
    n = len(values)
    if n > width:   # slice i holds values [i*n/width, (i+1)*n/width): never empty when n > width
        slices = [values[i * n // width:(i + 1) * n // width] for i in range(width)]
        values = tuple(sum(s) / len(s) for s in slices)
    return "".join(_blocks(list(values)))


def _blocks(values: list[float]) -> list[str]:
    clean = [v if math.isfinite(v) and v > 0 else 0.0 for v in values]
    peak, top = max(clean, default=0.0), len(BLOCKS) - 1
    return [BLOCKS[min(round(v / peak * top), top) if peak > 0 else 0] for v in clean]


def _line(*parts, style: str = "") -> Text:
    """One line that never wraps: what does not fit ends in an ellipsis."""
    text = Text.assemble(*parts, style=style)
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def _spark_width(width: int, beside: int) -> int:
    """A sparkline's length on a line ``width`` wide that holds ``beside`` other characters."""
    return max(8, min(SPARK_WIDTH * 2, width - beside))


# -- the parts of the screen ------------------------------------------------------------------

def _header(snap: Snapshot) -> Text:
    jobs = f"jobs {snap.jobs_done} done, {snap.jobs_failed} failed, {len(snap.queued)} queued"
    return _line(("leptonrt", "bold"), "  ", (snap.state, STATE_STYLES.get(snap.state, "")), "  up ",
                 hms(snap.uptime_s), "  ", jobs, "  ", (snap.address, "dim"))


def _job(job: JobStats, width: int) -> list:
    epoch = job.current_epoch or min(job.epoch + 1, job.epochs)   # an older broker's snapshot: epochs finished
    title = _line(("job ", "bold"), (str(job.id), "bold"), f"  {job.dataset}  {job.model}")
    title.append(f"  epoch {epoch}/{job.epochs}  step {job.step:,}/{job.total_steps:,}")
    if job.state != "running":
        title.append(f"  {job.state}", style=STATE_STYLES.get(job.state, ""))
    total = max(job.total_steps, 1)
    bar = Table.grid(padding=(0, 2))
    bar.add_row(ProgressBar(total=total, completed=min(job.step, total), width=max(10, min(60, width - 24))),
                f"{min(job.step / total, 1.0):4.0%}", f"ETA {hms(job.eta_s)}")
    figures = _line(f"{_num(job.samples_per_s)} samples/s  train loss {_num(job.train_loss, '.4f')}"
                    f"  test accuracy {_num(job.test_accuracy, '.4f')}")
    parts = [title, bar, figures, *_histories(job, width)]
    if job.change:
        parts.append(_line("split ", job.change))
    if job.simulated:
        parts.append(_line(f"SIMULATED slowdown: {job.simulated}", style="bold yellow"))
    return parts


def _histories(job: JobStats, width: int) -> list[Text]:
    """The step time and loss over the whole job, as sparklines."""
    out = []
    if job.step_ms:
        ms = job.step_ms
        every = f"  ({job.step_ms_every} steps a block)" if width >= 120 and job.step_ms_every > 1 else ""
        figures = f"  now {ms[-1]:.2f}  min {min(ms):.2f}  max {max(ms):.2f}{every}"
        out.append(_line("step ms  ", (bars(ms, _spark_width(width, 9 + len(figures))), "cyan"), figures))
    if job.losses:
        figures = f"  now {job.losses[-1]:.4f}  first {job.losses[0]:.4f}"
        out.append(_line("loss     ", (bars(job.losses, _spark_width(width, 9 + len(figures))), "magenta"), figures))
    return out


def _starting(job: QueuedJob) -> Text:
    return _line(("job ", "bold"), (str(job.id), "bold"), f"  {job.dataset}  ",
                 ("starting: loading the data, actors joining", STATE_STYLES["starting"]))


def _idle(last: FinishedJob | None, now: float) -> list[Text]:
    out = [_line("idle — waiting for jobs", style="dim")]
    if last is None:
        return out
    state = (last.state, STATE_STYLES.get(last.state, ""))
    head = _line("last job ", (str(last.id), "bold"), f" {last.dataset} ", state,
                 f" after {hms(last.wall_s)}, ended {ago(now - last.finished_at)}")
    if last.state != "done":
        return [*out, head, *([_line(f"  {last.error}")] if last.error else [])]
    return [*out, head, _line(f"  test accuracy {_num(last.test_accuracy, '.4f')}  {_num(last.samples_per_s)} samples/s"
                              f"  digest {last.history_digest[:12] or '-'}")]


@dataclass(frozen=True)
class _Column:
    name: str
    cell: Callable[[ActorStats], Union[str, Text]]
    justify: str = "right"


def _device_name(a: ActorStats) -> str:
    return a.device_name if a.device_name and a.device != "cpu" else "-"


def _gpu_memory(a: ActorStats) -> str:
    if a.device == "cpu" or (a.gpu_memory_bytes is None and a.memory_bytes is None):
        return "-"
    return f"{size(a.gpu_memory_bytes)}/{size(a.memory_bytes)}" if a.memory_bytes else size(a.gpu_memory_bytes)


COLUMNS = (
    _Column("host", lambda a: a.host, "left"),
    _Column("rank", lambda a: str(a.rank)),
    _Column("device", lambda a: a.device, "left"),
    _Column("name", _device_name, "left"),
    _Column("pid", lambda a: _num(a.pid, "d")),
    _Column("state", lambda a: Text(a.state, style=STATE_STYLES.get(a.state, "")), "left"),
    _Column("share", lambda a: f"{a.share:.0%}"),
    _Column("compute ms", lambda a: _num(a.compute_ms, ".1f")),
    _Column("samples/s", lambda a: _num(a.samples_per_s)),
    _Column("cpu%", lambda a: _num(a.cpu_percent)),
    _Column("rss", lambda a: size(a.rss_bytes)),
    _Column("gpu%", lambda a: _num(a.gpu_percent)),
    _Column("gpu mem", _gpu_memory),
    _Column("power", lambda a: "-" if a.gpu_power_w is None else f"{a.gpu_power_w:.0f}W"),
    _Column("restarts", lambda a: str(a.restarts)),
)


def _actors(actors: tuple[ActorStats, ...], width: int) -> Union[Table, Text]:
    if not actors:
        return Text("no actors", style="dim")
    # grouped by host (in the order of their lowest rank); the host named once, atop its group
    first = {}
    for a in sorted(actors, key=lambda a: a.rank):
        first.setdefault(a.host, a.rank)
    ranked = sorted(actors, key=lambda a: (first[a.host], a.rank))
    cells = {c.name: [c.cell(a) for a in ranked] for c in COLUMNS}
    cells["host"] = [a.host if i == 0 or ranked[i - 1].host != a.host else "" for i, a in enumerate(ranked)]
    shown = [c.name for c in COLUMNS if c.name != "host" or len(first) > 1]   # one host: no column
    blank = {name: {"-", "0"} if name == "restarts" else {"-"} for name in DROP_ORDER}
    empty = [name for name in DROP_ORDER if all(str(v) in blank[name] for v in cells[name])]

    def needed() -> int:   # each column as wide as its widest cell, one space between
        return sum(max(len(n), *(len(str(v)) for v in cells[n])) for n in shown) + len(shown) - 1

    for name in (*empty, *DROP_ORDER):
        if needed() <= width:
            break
        if name in shown:
            shown.remove(name)
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, header_style="bold")
    for column in COLUMNS:
        if column.name in shown:
            table.add_column(column.name, justify=column.justify, no_wrap=True)
    for i in range(len(ranked)):
        table.add_row(*(cells[n][i] for n in shown))
    return table


def _throughput(snap: Snapshot, width: int) -> Text:
    recent = [v for t, v in snap.throughput if t >= snap.now - WINDOW_S]
    busy = snap.job is not None or snap.starting is not None
    if not any(recent) and not busy:
        return _line("throughput  idle", style="dim")
    if not recent:
        return _line(f"throughput  no data in the last {WINDOW_S:.0f} s", style="dim")
    now = f"{_num(recent[-1])}/s" if busy else "idle"
    figures = f"  now {now}  peak {_num(max(recent))}/s  (last {WINDOW_S:.0f} s)"
    spark = sparkline(snap.throughput, snap.now, width=_spark_width(width, 12 + len(figures)))
    return _line("throughput  ", (spark, "cyan"), figures)


def _events(snap: Snapshot, limit: int) -> list[Text]:
    """The last ``limit`` events, one line each: the age in full, the text cut to fit."""
    shown = snap.events[-limit:]
    if not shown:
        return [Text("no events yet", style="dim")]
    ages = [ago(snap.now - e.at) for e in shown]
    width = max(map(len, ages))
    return [_line((age.rjust(width), "dim"), "  ", e.text) for age, e in zip(ages, shown)]


class Screen:
    """The whole screen for one snapshot, laid out for the width it is drawn at: header,
    job (or the last job's summary), actors, throughput, the last events, the keys."""

    def __init__(self, snapshot: Snapshot, *, events: int = 5, footer: str = "") -> None:
        self.snapshot, self.events, self.footer = snapshot, events, footer

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        snap, width = self.snapshot, options.max_width
        yield _header(snap)
        if snap.job is not None:
            yield from _job(snap.job, width)
        elif snap.starting is not None:
            yield _starting(snap.starting)
        else:
            yield from _idle(snap.last_job, snap.now)
        yield Text()
        yield _actors(snap.actors, width)
        yield Text()
        yield _throughput(snap, width)
        if self.events > 0:
            yield Text()
            yield from _events(snap, self.events)
        if self.footer:
            yield _line(self.footer, style="dim")


def render(snapshot: Snapshot, *, events: int = 5, footer: str = "") -> Screen:
    """The screen for one snapshot, with the last ``events`` events (0: the log hidden) and a
    ``footer`` line (the keys, say)."""
    return Screen(snapshot, events=events, footer=footer)


def plain_line(snapshot: Snapshot) -> str:
    """One line for logs and pipes, e.g. ``leptonrt ADDR up 0:01:02 | job 3 digits ... | queued 1``."""
    s = snapshot
    head = f"leptonrt {s.address} up {hms(s.uptime_s)}" + ("" if s.state == "serving" else f" {s.state}")
    parts = [head]
    if s.starting is not None:
        parts.append(f"job {s.starting.id} {s.starting.dataset} starting")
    elif s.job is None:
        parts.append("idle")
    else:
        j = s.job
        epoch = j.current_epoch or min(j.epoch + 1, j.epochs)
        parts.append(f"job {j.id} {j.dataset} epoch {epoch}/{j.epochs} step {j.step}/{j.total_steps} "
                     f"{_num(j.samples_per_s)} samples/s loss {_num(j.train_loss, '.4f')} "
                     f"acc {_num(j.test_accuracy, '.4f')}")
        if j.simulated:
            parts.append(f"SIMULATED slowdown: {j.simulated}")
    training = sum(a.state == "training" for a in s.actors)
    parts.append(f"actors {len(s.actors)} ({training} training)")
    parts.append(f"queued {len(s.queued)}")
    if s.job is None and s.starting is None and s.last_job is not None:
        last = s.last_job
        done = f" acc {_num(last.test_accuracy, '.4f')} digest {last.history_digest[:12]}"
        parts.append(f"last job {last.id} {last.state}" + (done if last.state == "done" else ""))
    return " | ".join(parts)


def job_lines(snapshot: Snapshot) -> list[str]:
    """The broker's jobs as a table of plain text (``leptonrt jobs``), oldest first."""
    if not snapshot.jobs:
        return ["no jobs yet"]
    width = max(7, *(len(j.dataset) for j in snapshot.jobs))
    lines = [f"{'id':>4}  {'state':<9}  {'dataset':<{width}}  {'progress':<18}  submitted"]
    for j in snapshot.jobs:
        progress = "-" if not j.total_steps else f"{j.step}/{j.total_steps} ({min(j.step / j.total_steps, 1.0):.0%})"
        lines.append(f"{j.id:>4}  {j.state:<9}  {j.dataset:<{width}}  {progress:<18}  "
                     f"{ago(snapshot.now - j.submitted_at)}")
    return lines

# -- the loop ---------------------------------------------------------------------------------

__all__ = ["render", "plain_line", "job_lines", "sparkline", "bars", "hms", "ago", "size", "Screen"]
