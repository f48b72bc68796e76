"""The live view: what render and plain_line show, at 80 and 160 columns, and how watch
paces itself, reads keys and stops."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import pty
import re
import termios
import time

import pytest
from rich.console import Console

from leptonrt.broker.stats import ActorStats, Event, FinishedJob, JobEntry, JobStats, QueuedJob, Snapshot
from leptonrt.errors import NoDeviceError
from leptonrt.view import BLOCKS, bars, hms, job_lines, plain_line, render, sparkline
from leptonrt.watch import watch

NOW = 1_700_000_000.0


def busy() -> Snapshot:
    job = JobStats(id=3, dataset="digits", model="784-128-10", epoch=2, epochs=10, step=40, total_steps=200,
                   samples_per_s=1234.5, train_loss=0.41234, test_accuracy=0.91, eta_s=160.0,
                   started_at=NOW - 50, simulated="rank 1 x2", current_epoch=3,
                   step_ms=tuple(3.0 + i % 4 for i in range(60)), step_ms_every=2, losses=(1.5, 0.9, 0.41234),
                   change="0.66/0.34 from step 32: rank 1 slowed 2.0x")
    actors = (ActorStats(rank=1, device="cpu", device_name=None, pid=4343, state="lost", share=0.34,
                         compute_ms=40.0, samples_per_s=410.0, memory_bytes=None, restarts=1,
                         cpu_percent=98.6, rss_bytes=412 << 20),
              ActorStats(rank=0, device="cuda:0", device_name="NVIDIA H100", pid=4242, state="training",
                         share=0.66, compute_ms=12.34, samples_per_s=800.0, memory_bytes=3 << 29,
                         cpu_percent=101.2, rss_bytes=3 << 30))
    throughput = tuple((NOW - 57 + 3 * i, 1000.0 + 50 * i) for i in range(20))
    events = tuple(Event(at=NOW - 70 + 10 * i, text=f"event {i}") for i in range(7))
    return Snapshot(address="ipc:///tmp/lepton.sock", started_at=NOW - 62, now=NOW, state="serving", job=job,
                    queued=(QueuedJob(id=4, dataset="mnist", submitted_at=NOW - 5),), actors=actors,
                    throughput=throughput, events=events, jobs_done=2, jobs_failed=1)


def idle() -> Snapshot:
    return Snapshot(address="ipc:///tmp/idle.sock", started_at=NOW - 3725, now=NOW, state="serving", job=None)


def text_of(snap: Snapshot, width: int = 120, **kw) -> str:
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(render(snap, **kw))
    return console.export_text()


def test_render_busy():
    out = text_of(busy())
    assert "ipc:///tmp/lepton.sock" in out and "up 0:01:02" in out and "1 queued" in out
    assert "job 3" in out and "digits" in out and "784-128-10" in out
    assert "epoch 3/10" in out and "step 40/200" in out and "ETA 0:02:40" in out
    assert "1,234 samples/s" in out and "0.4123" in out and "0.9100" in out
    assert "SIMULATED slowdown: rank 1 x2" in out
    rows = [line for line in out.splitlines() if "4242" in line or "4343" in line]
    assert len(rows) == 2
    assert rows[0].split()[0] == "0" and "cuda:0 NVIDIA H100" in rows[0] and "66%" in rows[0]
    assert "-/1.5G" in rows[0] and "12.3" in rows[0] and "training" in rows[0]
    assert rows[1].split()[:2] == ["1", "cpu"] and "34%" in rows[1] and "lost" in rows[1]
    assert " - " in rows[1]                           # no GPU figure on CPU
    assert any(ch in out for ch in BLOCKS) and "peak 1,950/s" in out
    for i in range(2, 7):
        assert f"event {i}" in out
    assert "event 0" not in out and "event 1" not in out
    assert "10s ago" in out


def test_render_event_limit_and_idle():
    out = text_of(busy(), events=2)
    assert "event 6" in out and "event 5" in out and "event 4" not in out
    out = text_of(idle())
    assert "idle" in out and "up 1:02:05" in out and "SIMULATED" not in out


def test_render_is_pure_and_survives_the_wire():
    snap = busy()
    again = Snapshot.from_dict(snap.to_dict())
    assert text_of(again) == text_of(snap) == text_of(snap)
    assert text_of(Snapshot.from_dict(idle().to_dict())) == text_of(idle())


def test_plain_line():
    line = plain_line(busy())
    assert "\n" not in line
    assert line.startswith("leptonrt ipc:///tmp/lepton.sock up 0:01:02 | job 3 digits epoch 3/10 step 40/200")
    assert "1,234 samples/s loss 0.4123 acc 0.9100" in line
    assert "SIMULATED slowdown: rank 1 x2" in line
    assert line.endswith("actors 2 (1 training) | queued 1")
    assert plain_line(idle()) == "leptonrt ipc:///tmp/idle.sock up 1:02:05 | idle | actors 0 (0 training) | queued 0"


def test_sparkline_edge_cases():
    assert sparkline((), NOW).strip() == ""
    one = sparkline(((NOW - 1, 5.0),), NOW, width=10)
    assert one == " " * 9 + "█"
    assert set(sparkline(tuple((NOW - i, 0.0) for i in range(60)), NOW)) == {"▁"}
    ramp = sparkline(tuple((NOW - 60 + i, float(i)) for i in range(60)), NOW, width=8)
    assert ramp == "".join(sorted(ramp)) and ramp[-1] == "█" and len(ramp) == 8
    assert sparkline(((NOW - 120, 9.0), (NOW - 10, 1.0)), NOW, width=6)[-1] == "█"   # old points drop out
    assert hms(None) == "-" and hms(59.9) == "0:00:59"


async def test_watch_plain_prints_and_stops():
    stop, calls = asyncio.Event(), []

    def source() -> Snapshot:
        calls.append(1)
        stop.set()
        return busy()

    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=300)
    await asyncio.wait_for(watch(source, stop=stop, console=console, plain_every_s=3600), 5)
    lines = out.getvalue().splitlines()
    assert lines and lines[0] == plain_line(busy())
    assert len(calls) == 2                           # once at the start, once at the end


async def test_watch_terminal_caps_refresh_rate():
    stop, calls = asyncio.Event(), []

    async def source() -> Snapshot:
        calls.append(1)
        if len(calls) >= 4:
            stop.set()
        return busy()

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    started = time.monotonic()
    await asyncio.wait_for(watch(source, stop=stop, console=console, refresh_hz=1000), 5)
    elapsed = time.monotonic() - started
    assert len(calls) <= 4.0 * elapsed + 2
    assert "784-128-10" in out.getvalue()


async def test_watch_lets_lepton_errors_through():
    def source() -> Snapshot:
        raise NoDeviceError("broker is gone")

    with pytest.raises(NoDeviceError):
        await asyncio.wait_for(watch(source, stop=asyncio.Event(), console=Console(file=io.StringIO())), 5)


def test_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    console = Console(force_terminal=True, file=out, width=120)
    console.print(render(busy()))
    text = out.getvalue()
    assert "SIMULATED" in text and "\x1b[" in text     # styled (bold), just not coloured
    assert "\x1b[3" not in text and "\x1b[9" not in text
    for params in re.findall(r"\x1b\[([0-9;]*)m", text):
        codes = [int(c) for c in params.split(";") if c]
        assert not any(30 <= c <= 49 or 90 <= c <= 107 for c in codes), params


def test_the_job_list_shows_each_jobs_state_dataset_progress_and_age():
    jobs = (JobEntry(id=1, state="done", dataset="digits", submitted_at=NOW - 125, step=140, total_steps=140),
            JobEntry(id=2, state="running", dataset="synthetic:4000,16,3", submitted_at=NOW - 12, step=30,
                     total_steps=120),
            JobEntry(id=3, state="queued", dataset="digits", submitted_at=NOW - 3))
    snap = Snapshot(address="ipc:///x", started_at=NOW - 200, now=NOW, state="serving", job=None, jobs=jobs)
    lines = job_lines(snap)
    assert lines[0].split() == ["id", "state", "dataset", "progress", "submitted"]
    assert [line.split() for line in lines[1:]] == [
        ["1", "done", "digits", "140/140", "(100%)", "2m05s", "ago"],
        ["2", "running", "synthetic:4000,16,3", "30/120", "(25%)", "12s", "ago"],
        ["3", "queued", "digits", "-", "3s", "ago"]]
    assert job_lines(Snapshot(address="x", started_at=NOW, now=NOW, state="serving", job=None)) == ["no jobs yet"]


# --- what a person sees at 80 and 160 columns ---------------------------------------------------

LONG_ADDRESS = "ipc:///run/user/1000/leptonrt/broker.sock tcp://0.0.0.0:7420"


def crowded() -> Snapshot:
    """Everything at once, with long texts: an address, events, a reason, GPU figures."""
    snap = busy()
    gpu = dataclasses.replace(snap.actors[1], device_name="NVIDIA H100 80GB HBM3", gpu_percent=87.0,
                              gpu_memory_bytes=12 << 30, memory_bytes=80 << 30, gpu_power_w=312.4)
    events = tuple(Event(at=NOW - 9 + i, text="job 3: rank 1 on standby from step 64 (" + "x" * 150 + ")")
                   for i in range(3))
    job = dataclasses.replace(snap.job, change="0.66/0.34 from step 32: " + "a long reason " * 12)
    return dataclasses.replace(snap, address=LONG_ADDRESS, actors=(snap.actors[0], gpu), events=events, job=job,
                               queued=snap.queued * 12)


def lines_of(snap: Snapshot, width: int, **kw) -> list[str]:
    return text_of(snap, width, **kw).splitlines()


@pytest.mark.parametrize("width", [80, 160])
@pytest.mark.parametrize("snap", [busy, crowded, idle], ids=["busy", "crowded", "idle"])
def test_no_line_is_longer_than_the_screen(width, snap):
    lines = lines_of(snap(), width, footer="q quit · e hide events")
    assert lines and max(len(line) for line in lines) <= width
    assert lines[0].startswith("leptonrt  serving  up ")   # the header is one line, never wrapped
    assert "jobs " in lines[0]
    if snap is crowded:
        assert [line[:8] for line in lines if "standby from step 64" in line] == ["9s ago  ", "8s ago  ", "7s ago  "]


def test_at_80_columns_the_actor_table_drops_columns_in_the_stated_order_and_at_160_shows_them_all():
    narrow, wide = lines_of(crowded(), 80), lines_of(crowded(), 160)
    head80 = next(line for line in narrow if line.startswith("rank"))
    head160 = next(line for line in wide if line.startswith("rank"))
    for name in ("device", "state", "share", "samples/s", "cpu%", "rss", "gpu%", "gpu mem"):
        assert name in head80.split() or name in head80
    for name in ("name", "pid", "power"):                      # the first to go
        assert name not in head80.split()
    for name in ("name", "pid", "power", "compute", "restarts", "cpu%", "rss", "gpu%"):
        assert name in head160
    gpu_row = next(line for line in wide if "4242" in line)
    assert "NVIDIA H100 80GB HBM3" in gpu_row and "87" in gpu_row and "12.0G/80.0G" in gpu_row and "312W" in gpu_row
    assert max(len(line) for line in wide) > 100               # it uses the room


def test_each_actor_shows_its_cpu_and_resident_memory_and_a_dash_for_missing_gpu_figures():
    out = text_of(busy(), 160)
    cpu_row = next(line for line in out.splitlines() if "4343" in line)
    gpu_row = next(line for line in out.splitlines() if "4242" in line)
    assert "99" in cpu_row.split() and "412M" in cpu_row.split()
    assert "101" in gpu_row.split() and "3.0G" in gpu_row.split()
    head = next(line for line in out.splitlines() if line.startswith("rank")).split()
    cells = cpu_row.split()
    assert cells[head.index("gpu%") - 1] == "-"               # ("compute ms" is two words in the header)
    assert "-" in gpu_row.split()                             # no NVML figures for the GPU actor either


def test_the_epoch_is_shown_1_based_during_the_first_epoch():
    job = dataclasses.replace(busy().job, epoch=0, epochs=5, step=3, current_epoch=1)
    snap = dataclasses.replace(busy(), job=job)
    assert "epoch 1/5" in text_of(snap) and "epoch 1/5" in plain_line(snap)
    older = dataclasses.replace(snap, job=dataclasses.replace(job, current_epoch=0))   # a broker without the field
    assert "epoch 1/5" in text_of(older) and "epoch 0/5" not in text_of(older)


def test_idle_shows_idle_rather_than_the_last_rate():
    was_busy = dataclasses.replace(idle(), throughput=((NOW - 20, 15752.0), (NOW - 10, 0.0), (NOW - 1, 0.0)))
    out = text_of(was_busy, 80)
    assert "now idle" in out and "now 15,752/s" not in out and "peak 15,752/s" in out
    long_idle = dataclasses.replace(idle(), throughput=tuple((NOW - i, 0.0) for i in range(50)))
    assert "throughput  idle" in text_of(long_idle, 80)
    assert "throughput  idle" in text_of(idle(), 80)


def test_the_reason_of_the_last_split_change_is_shown():
    out = text_of(busy(), 80)
    assert "split 0.66/0.34 from step 32: rank 1 slowed 2.0x" in out


def test_the_step_time_and_loss_histories_are_drawn():
    out = text_of(busy(), 80)
    step_line = next(line for line in out.splitlines() if line.startswith("step ms"))
    loss_line = next(line for line in out.splitlines() if line.startswith("loss"))
    assert "now 6.00" in step_line and "min 3.00" in step_line and "max 6.00" in step_line
    assert sum(ch in BLOCKS for ch in step_line) >= 20
    assert "█▅▃" in loss_line and "now 0.4123" in loss_line and "first 1.5000" in loss_line


def test_a_finished_jobs_summary_shows_until_the_next_job_starts():
    last = FinishedJob(id=3, dataset="digits", state="done", finished_at=NOW - 5, wall_s=12.5, test_accuracy=0.9611,
                       samples_per_s=5123.0, history_digest="3fa2c1d09e8b77aa55")
    out = text_of(dataclasses.replace(idle(), last_job=last), 80)
    assert "idle" in out and "last job 3 digits done after 0:00:12" in out
    assert "test accuracy 0.9611" in out and "5,123 samples/s" in out and "digest 3fa2c1d09e8b" in out
    assert "3fa2c1d09e8b77" not in out                                       # a prefix only
    assert "last job 3 done acc 0.9611 digest 3fa2c1d09e8b" in plain_line(dataclasses.replace(idle(), last_job=last))
    running = dataclasses.replace(busy(), last_job=last)
    assert "last job" not in text_of(running) and "last job" not in plain_line(running)
    failed = dataclasses.replace(last, state="failed", error="rank 1 failed: boom", history_digest="")
    out = text_of(dataclasses.replace(idle(), last_job=failed), 80)
    assert "last job 3 digits failed after 0:00:12" in out and "rank 1 failed: boom" in out


def test_a_job_that_is_starting_says_so_rather_than_idle():
    snap = dataclasses.replace(idle(), starting=QueuedJob(id=4, dataset="mnist", submitted_at=NOW - 2),
                               last_job=FinishedJob(3, "digits", "done", NOW - 5, 1.0))
    line = text_of(snap, 80).splitlines()[1]
    assert line.startswith("job 4  mnist  starting")
    assert not [row for row in text_of(snap, 80).splitlines()[1:] if "idle" in row]   # not idle, not even its rate
    assert "job 4 mnist starting" in plain_line(snap) and "last job" not in plain_line(snap)
    assert Snapshot.from_dict(snap.to_dict()) == snap


def test_the_event_log_can_be_hidden_and_the_footer_shows_the_keys():
    out = text_of(busy(), events=0, footer="q quit · e show events")
    assert "event 6" not in out and out.rstrip().endswith("q quit · e show events")


def test_bars_scale_to_the_highest_value_and_shrink_to_fit():
    assert bars((), 10) == "" and bars((1.0, 2.0), 0) == ""
    assert bars((0.0, 4.0, 8.0), 10) == "▁▅█"
    assert len(bars(tuple(range(100)), 20)) == 20 and bars(tuple(range(100)), 20)[-1] == "█"


def test_a_snapshot_from_a_newer_broker_with_unknown_keys_still_reads():
    data = busy().to_dict()
    data["job"]["something_new"] = 1
    data["actors"][0]["another"] = "x"
    data["last_job"] = {**dataclasses.asdict(FinishedJob(1, "digits", "done", NOW, 1.0)), "more": 2}
    snap = Snapshot.from_dict(data)
    assert snap.job.step_ms == busy().job.step_ms and snap.last_job.id == 1


# --- keys --------------------------------------------------------------------------------------

async def _watch_with_keys(can_quit: bool, keys: bytes):
    """watch() on a terminal whose keyboard is a pseudo-terminal we type ``keys`` into."""
    primary, secondary = pty.openpty()
    before = termios.tcgetattr(secondary)
    stop, out = asyncio.Event(), io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    task = asyncio.ensure_future(watch(lambda: busy(), stop=stop, console=console, can_quit=can_quit,
                                       keys_fd=secondary))
    try:
        await asyncio.sleep(0.3)
        during = termios.tcgetattr(secondary)
        for key in keys:
            os.write(primary, bytes([key]))
            await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 5)
        return out.getvalue(), before, during, termios.tcgetattr(secondary)
    finally:
        stop.set()
        os.close(primary)
        os.close(secondary)


async def test_in_top_e_toggles_the_event_log_q_quits_and_the_terminal_is_restored():
    out, before, during, after = await _watch_with_keys(True, b"e")
    assert during[3] & termios.ICANON == 0 and during[3] & termios.ECHO == 0   # cbreak while it runs...
    assert during[3] & termios.ISIG                                            # ...with Ctrl-C still a signal
    assert after == before                                                     # and restored after
    assert "q quit · e hide events" in out and "q quit · e show events" in out
    primary, secondary = pty.openpty()
    stop = asyncio.Event()
    try:
        task = asyncio.ensure_future(watch(lambda: busy(), stop=stop, keys_fd=secondary, can_quit=True,
                                           console=Console(file=io.StringIO(), force_terminal=True, width=80)))
        await asyncio.sleep(0.3)
        os.write(primary, b"q")
        await asyncio.wait_for(task, 5)                                       # q alone ends it
        assert stop.is_set()
    finally:
        os.close(primary)
        os.close(secondary)


async def test_in_up_q_does_not_stop_the_view_and_says_what_does():
    out, before, _during, after = await _watch_with_keys(False, b"q")
    assert "Ctrl-C stops the broker" in out and "q does not stop the broker" in out
    assert after == before


async def test_keys_are_not_read_off_a_terminal():
    read, write = os.pipe()
    try:
        stop = asyncio.Event()
        out = io.StringIO()
        console = Console(file=out, force_terminal=True, width=100, color_system=None)
        task = asyncio.ensure_future(watch(lambda: busy(), stop=stop, console=console, keys_fd=read))
        os.write(write, b"q")
        await asyncio.sleep(0.5)
        assert not task.done() and not stop.is_set()     # a 'q' in a pipe is no key press
        stop.set()
        await asyncio.wait_for(task, 5)
        assert "q quit" not in out.getvalue()            # and no keys are offered
    finally:
        os.close(read)
        os.close(write)


def test_actors_are_grouped_by_host_and_the_host_named_once_atop_its_group():
    base = busy().actors[0]
    actors = tuple(dataclasses.replace(base, rank=r, pid=5000 + r, host=h)
                   for r, h in ((0, "head"), (1, "alpha"), (2, "head"), (3, "alpha")))
    out = [line for line in text_of(dataclasses.replace(busy(), actors=actors), 160).splitlines()
           if any(f"500{r}" in line.split() for r in range(4))]
    assert [line.split()[1] if line.split()[0] in ("head", "alpha") else line.split()[0] for line in out] == \
        ["0", "2", "1", "3"]                                  # head's actors, then alpha's
    assert [line.split()[0] for line in out if line.split()[0] in ("head", "alpha")] == ["head", "alpha"]
    single = text_of(busy(), 160)
    assert not any(line.startswith("host") for line in single.splitlines())   # one host: no column
