"""Blocking loads awaited from asyncio: cancellable at once, never holding up exit."""

import asyncio
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from leptonrt.data.background import run_in_daemon_thread


class Gate:
    """Work that blocks until the test opens the gate, then returns ``value``."""

    def __init__(self, value="result"):
        self.value, self.started, self.opened = value, threading.Event(), threading.Event()

    def __call__(self):
        self.started.set()
        self.opened.wait()
        return self.value


def the_thread(name):
    (thread,) = [t for t in threading.enumerate() if t.name == name]
    return thread


async def test_the_result_and_the_error_of_the_work_come_back():
    assert await run_in_daemon_thread(lambda: 42, name="t-ok") == 42
    with pytest.raises(ZeroDivisionError):
        await run_in_daemon_thread(lambda: 1 / 0, name="t-error")


async def test_cancelling_returns_at_once_and_the_late_result_is_handed_to_on_abandoned():
    work, abandoned = Gate(), []
    task = asyncio.create_task(run_in_daemon_thread(work, name="t-cancel", on_abandoned=abandoned.append))
    await asyncio.to_thread(work.started.wait)
    thread = the_thread("t-cancel")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert thread.is_alive() and thread.daemon and abandoned == []
    work.opened.set()
    await asyncio.to_thread(thread.join)
    await asyncio.sleep(0)  # the delivery was queued before the join's result
    assert abandoned == ["result"]


async def test_a_cancel_landing_after_the_result_still_hands_it_to_on_abandoned():
    work, abandoned = Gate(), []
    task = asyncio.create_task(run_in_daemon_thread(work, name="t-late", on_abandoned=abandoned.append))
    await asyncio.to_thread(work.started.wait)
    work.opened.set()
    the_thread("t-late").join()  # on purpose without awaiting: the delivery is queued now
    asyncio.get_running_loop().call_soon(task.cancel)  # runs after it, before the task resumes
    with pytest.raises(asyncio.CancelledError):
        await task
    assert abandoned == ["result"]


async def test_an_error_nobody_waits_for_is_dropped_quietly():
    abandoned, hooked = [], []
    started, opened = threading.Event(), threading.Event()

    def fails():
        started.set()
        opened.wait()
        raise RuntimeError("late failure")

    previous, threading.excepthook = threading.excepthook, hooked.append
    try:
        task = asyncio.create_task(run_in_daemon_thread(fails, name="t-fail", on_abandoned=abandoned.append))
        await asyncio.to_thread(started.wait)
        task.cancel()
        opened.set()
        await asyncio.to_thread(the_thread("t-fail").join)
        await asyncio.sleep(0)
    finally:
        threading.excepthook = previous
    assert abandoned == [] and hooked == [] and task.cancelled()


# A broker-like process: the event loop is uvloop's (as under `up`), the load reads a FIFO
# that no one writes, and the job awaiting it is cancelled (as on Ctrl-C).
WEDGED = textwrap.dedent("""
    import asyncio, os, sys, threading
    from leptonrt.data.cache import DatasetCache
    from leptonrt.data.loaders import load_dataset
    from leptonrt.data.shm import list_segments, new_run_id

    fifo, mode = sys.argv[1], sys.argv[2]
    reading = threading.Event()

    def wedged(spec, *, seed, test_fraction, **_settings):
        reading.set()
        with open(fifo, "rb") as f:   # a plain open: blocks until a writer appears
            f.read()
        return load_dataset("synthetic:50,4,3")

    run_id = new_run_id()

    async def main():
        cache = DatasetCache(run_id, budget_bytes=1 << 20, loader=wedged)
        job = asyncio.create_task(cache.acquire("npz:wedged"))
        await asyncio.get_running_loop().run_in_executor(None, reading.wait)
        job.cancel()
        try:
            await job
        except asyncio.CancelledError:
            print("cancelled", flush=True)
        cache.close()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    print("loop closed", flush=True)
    if mode == "unblock":   # the read ends only now, after the loop has closed
        os.close(os.open(fifo, os.O_WRONLY))
        [t.join() for t in threading.enumerate() if t.name.startswith("leptonrt-load")]
        print("segments left:", len(list_segments(run_id)), flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
@pytest.mark.parametrize("mode", ["exit", "unblock"])
def test_a_process_whose_load_is_wedged_exits_cleanly_once_the_job_is_cancelled(tmp_path, mode):
    fifo = tmp_path / "wedge"
    os.mkfifo(fifo)
    # joined with a timeout, so a wedge fails the test instead of hanging it
    out = subprocess.run([sys.executable, "-c", WEDGED, str(fifo), mode],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["cancelled", "loop closed"]
    assert out.stderr == ""  # no "Event loop is closed", no traceback
    if mode == "unblock":
        assert out.stdout.splitlines()[2] == "segments left: 0"
