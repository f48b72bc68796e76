"""The live terminal view of a broker: one screen drawn from one ``Snapshot``.

``render`` turns a snapshot into a rich renderable and ``plain_line`` into one line of
text; both are pure, so the same snapshot always draws the same way (times are shown
relative to ``snapshot.now``). ``watch`` is the loop around them: it redraws a
``rich.live.Live`` at most four times a second on a terminal, and prints a plain line
every few seconds anywhere else. Colours follow the console, so ``NO_COLOR`` is honoured.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from typing import Awaitable, Callable, Union

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .broker.stats import ActorStats, JobStats, Snapshot

MAX_REFRESH_HZ = 4.0
WINDOW_S = 60.0            # the throughput history covers this much time
SPARK_WIDTH = 30           # characters in the sparkline, so 2 s a character
BLOCKS = "▁▂▃▄▅▆▇█"
STATE_STYLES = {"training": "green", "lost": "bold red", "restarting": "yellow", "joining": "yellow",
                "standby": "cyan", "idle": "dim", "stopped": "dim", "finished": "dim", "stopping": "yellow"}

SnapshotSource = Callable[[], Union[Snapshot, Awaitable[Snapshot]]]


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


def _memory(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


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
    peak = max((m for m in means if m is not None), default=0.0)
    top = len(BLOCKS) - 1
    return "".join(" " if m is None else BLOCKS[min(round(m / peak * top), top) if peak > 0 else 0]
                   for m in means)


def _header(snap: Snapshot) -> Text:
    return Text.assemble(("leptonrt ", "bold"), snap.address, "  up ", hms(snap.uptime_s), "  ",
                         (snap.state, STATE_STYLES.get(snap.state, "")),
                         f"  jobs {snap.jobs_done} done, {snap.jobs_failed} failed, {len(snap.queued)} queued")


def _job(job: JobStats | None) -> RenderableType:
    if job is None:
        return Text("idle — waiting for jobs", style="dim")
    title = Text.assemble(("job ", "bold"), (str(job.id), "bold"), f"  {job.dataset}  {job.model}",
                          f"  epoch {job.epoch}/{job.epochs}  step {job.step}/{job.total_steps}")
    done = min(job.step / job.total_steps, 1.0) if job.total_steps > 0 else 0.0
    bar = Table.grid(padding=(0, 2))
    bar.add_row(ProgressBar(total=max(job.total_steps, 1), completed=min(job.step, max(job.total_steps, 1)),
                            width=40),
                f"{done:4.0%}", f"ETA {hms(job.eta_s)}")
    stats = Text(f"{_num(job.samples_per_s)} samples/s  train loss {_num(job.train_loss, '.4f')}"
                 f"  test accuracy {_num(job.test_accuracy, '.4f')}")
    parts: list[RenderableType] = [title, bar, stats]
    if job.simulated:
        parts.append(Text(f"SIMULATED slowdown: {job.simulated}", style="bold yellow"))
    return Group(*parts)


def _actors(actors: tuple[ActorStats, ...]) -> RenderableType:
    if not actors:
        return Text("no actors", style="dim")
    table = Table(box=None, padding=(0, 1), header_style="bold")
    for name in ("rank", "device", "pid", "state", "share", "compute ms", "samples/s", "memory", "restarts"):
        table.add_column(name, justify="left" if name in ("device", "state") else "right")
    for a in sorted(actors, key=lambda a: a.rank):
        device = f"{a.device} {a.device_name}" if a.device_name and a.device != "cpu" else a.device
        table.add_row(str(a.rank), device, _num(a.pid, "d"), Text(a.state, style=STATE_STYLES.get(a.state, "")),
                      f"{a.share:.0%}", _num(a.compute_ms, ".1f"), _num(a.samples_per_s),
                      _memory(a.memory_bytes), str(a.restarts))
    return table


def _throughput(snap: Snapshot) -> Text:
    recent = [v for t, v in snap.throughput if t >= snap.now - WINDOW_S]
    if not recent:
        return Text(f"throughput  no data in the last {WINDOW_S:.0f} s", style="dim")
    return Text.assemble("throughput  ", (sparkline(snap.throughput, snap.now), "cyan"),
                         f"  now {_num(recent[-1])}/s  peak {_num(max(recent))}/s  (last {WINDOW_S:.0f} s)")


def _events(snap: Snapshot, limit: int) -> RenderableType:
    shown = snap.events[-limit:] if limit > 0 else ()
    if not shown:
        return Text("no events yet", style="dim")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right", style="dim")
    grid.add_column()
    for e in shown:
        grid.add_row(ago(snap.now - e.at), e.text)
    return grid


def render(snapshot: Snapshot, *, events: int = 5) -> Group:
    """The whole screen for one snapshot: header, job, actors, throughput and the last events."""
    return Group(_header(snapshot), _job(snapshot.job), Text(), _actors(snapshot.actors), Text(),
                 _throughput(snapshot), Text(), _events(snapshot, events))


def plain_line(snapshot: Snapshot) -> str:
    """One line for logs and pipes, e.g. ``leptonrt ADDR up 0:01:02 | job 3 digits ... | queued 1``."""
    s = snapshot
    head = f"leptonrt {s.address} up {hms(s.uptime_s)}" + ("" if s.state == "serving" else f" {s.state}")
    parts = [head]
    if s.job is None:
        parts.append("idle")
    else:
        j = s.job
        parts.append(f"job {j.id} {j.dataset} epoch {j.epoch}/{j.epochs} step {j.step}/{j.total_steps} "
                     f"{_num(j.samples_per_s)} samples/s loss {_num(j.train_loss, '.4f')} "
                     f"acc {_num(j.test_accuracy, '.4f')}")
        if j.simulated:
            parts.append(f"SIMULATED slowdown: {j.simulated}")
    training = sum(a.state == "training" for a in s.actors)
    parts.append(f"actors {len(s.actors)} ({training} training)")
    parts.append(f"queued {len(s.queued)}")
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


async def _fetch(get_snapshot: SnapshotSource) -> Snapshot:
    snap = get_snapshot()
    if inspect.isawaitable(snap):
        snap = await snap
    return snap  # type: ignore[return-value]


async def _stopped(stop: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds; True as soon as ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout)
    except asyncio.TimeoutError:
        return stop.is_set()
    return True


async def watch(get_snapshot: SnapshotSource, *, stop: asyncio.Event, console: Console | None = None,
                plain: bool | None = None, refresh_hz: float = 4.0, plain_every_s: float = 5.0) -> None:
    """Show snapshots from ``get_snapshot`` (plain or async callable) until ``stop`` is set.

    On a terminal (and unless ``plain`` is True) the screen is redrawn at most ``refresh_hz``
    times a second, never more than four; otherwise ``plain_line`` is printed at the start,
    every ``plain_every_s`` seconds, and once more at the end. Errors from ``get_snapshot``
    (a ``LeptonError`` when the broker is gone, say) propagate to the caller.
    """
    if refresh_hz <= 0 or plain_every_s <= 0:
        raise ValueError("refresh_hz and plain_every_s must be positive")
    console = console or Console()
    if console.is_terminal and plain is not True:
        interval = 1.0 / min(refresh_hz, MAX_REFRESH_HZ)
        with Live(render(await _fetch(get_snapshot)), console=console, auto_refresh=False) as live:
            while not await _stopped(stop, interval):
                live.update(render(await _fetch(get_snapshot)), refresh=True)
        return

    def emit(snap: Snapshot) -> None:
        console.print(plain_line(snap), markup=False, highlight=False, soft_wrap=True)

    emit(await _fetch(get_snapshot))
    while not await _stopped(stop, plain_every_s):
        emit(await _fetch(get_snapshot))
    emit(await _fetch(get_snapshot))


__all__ = ["render", "plain_line", "job_lines", "watch", "sparkline", "hms", "ago"]
