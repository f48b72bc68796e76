"""The live view: what render and plain_line show, and how watch paces itself and stops."""

from __future__ import annotations

import asyncio
import io
import re
import time

import pytest
from rich.console import Console

from leptonrt.broker.stats import ActorStats, Event, JobEntry, JobStats, QueuedJob, Snapshot
from leptonrt.errors import NoDeviceError
from leptonrt.view import BLOCKS, hms, job_lines, plain_line, render, sparkline, watch

NOW = 1_700_000_000.0


def busy() -> Snapshot:
    job = JobStats(id=3, dataset="digits", model="784-128-10", epoch=2, epochs=10, step=40, total_steps=200,
                   samples_per_s=1234.5, train_loss=0.41234, test_accuracy=0.91, eta_s=160.0,
                   started_at=NOW - 50, simulated="rank 1 x2")
    actors = (ActorStats(rank=1, device="cpu", device_name=None, pid=4343, state="lost", share=0.34,
                         compute_ms=40.0, samples_per_s=410.0, memory_bytes=None, restarts=1),
              ActorStats(rank=0, device="cuda:0", device_name="NVIDIA H100", pid=4242, state="training",
                         share=0.66, compute_ms=12.34, samples_per_s=800.0, memory_bytes=3 << 29))
    throughput = tuple((NOW - 57 + 3 * i, 1000.0 + 50 * i) for i in range(20))
    events = tuple(Event(at=NOW - 70 + 10 * i, text=f"event {i}") for i in range(7))
    return Snapshot(address="ipc:///tmp/lepton.sock", started_at=NOW - 62, now=NOW, state="serving", job=job,
                    queued=(QueuedJob(id=4, dataset="mnist", submitted_at=NOW - 5),), actors=actors,
                    throughput=throughput, events=events, jobs_done=2, jobs_failed=1)


def idle() -> Snapshot:
    return Snapshot(address="ipc:///tmp/idle.sock", started_at=NOW - 3725, now=NOW, state="serving", job=None)


def text_of(snap: Snapshot, **kw) -> str:
    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=False, color_system=None)
    console.print(render(snap, **kw))
    return console.export_text()


def test_render_busy():
    out = text_of(busy())
    assert "ipc:///tmp/lepton.sock" in out and "up 0:01:02" in out and "1 queued" in out
    assert "job 3" in out and "digits" in out and "784-128-10" in out
    assert "epoch 2/10" in out and "step 40/200" in out and "ETA 0:02:40" in out
    assert "1,234 samples/s" in out and "0.4123" in out and "0.9100" in out
    assert "SIMULATED slowdown: rank 1 x2" in out
    rows = [line for line in out.splitlines() if "4242" in line or "4343" in line]
    assert len(rows) == 2
    assert rows[0].split()[0] == "0" and "cuda:0 NVIDIA H100" in rows[0] and "66%" in rows[0]
    assert "1.50 GiB" in rows[0] and "12.3" in rows[0] and "training" in rows[0]
    assert rows[1].split()[:2] == ["1", "cpu"] and "34%" in rows[1] and "lost" in rows[1]
    assert " - " in rows[1]                           # no memory figure on CPU
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
    assert line.startswith("leptonrt ipc:///tmp/lepton.sock up 0:01:02 | job 3 digits epoch 2/10 step 40/200")
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
