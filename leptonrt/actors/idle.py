"""Running start-up work at the lowest CPU priority, then going back to normal priority.

A spare actor starts beside a job's actors and needs over two seconds of CPU to import
PyTorch and warm up. On a box with few cores that time came out of the running job: on 2
cores, the first epochs of a 2-actor job ran at about two thirds of their speed while the
spare got ready. At the lowest priority it takes only the time the actors leave idle.

Linux schedules each session as one group (autogroup, where enabled), so the group's
niceness is what counts against the actors (each in its own session); where autogroup is
off, the niceness of the thread that does the work is. Both are lowered, and both come
back: an unprivileged process may set its group's niceness back to 0, but not a thread's
or a process's, so the work runs in a thread of its own that ends with it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

_AUTOGROUP = "/proc/self/autogroup"
LOWEST = 19


def autogroup_nice(pid: int | str = "self") -> int | None:
    """The niceness of a process's scheduling group, this one's by default (None: no autogroup here)."""
    try:
        with open(f"/proc/{pid}/autogroup") as fh:
            return int(fh.read().split()[-1])   # "/autogroup-123 nice 0"
    except (OSError, ValueError, IndexError):
        return None


def _set_autogroup_nice(nice: int) -> bool:
    for _ in range(25):   # the kernel takes one change per 100 ms, machine-wide
        try:
            with open(_AUTOGROUP, "w") as fh:
                fh.write(str(nice))
            return True
        except BlockingIOError:
            time.sleep(0.02)
        except OSError:
            return False
    return False


def at_idle_priority(work: Callable[[], None]) -> None:
    """Run ``work`` at the lowest priority; this process is back at its own when it returns.

    Lowers the whole session's group: call it only in a process that leads a session of
    its own (the supervisor starts every actor so). Elsewhere than Linux it just runs it.
    """
    if not sys.platform.startswith("linux"):
        work()
        return
    before = autogroup_nice()
    lowered = before is not None and before < LOWEST and _set_autogroup_nice(LOWEST)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST)   # this thread only
        except OSError:
            pass
        try:
            work()
        except BaseException as exc:   # handed to the caller below
            failure.append(exc)

    try:
        thread = threading.Thread(target=run, name="leptonrt-idle")
        thread.start()
        thread.join()
    finally:
        if lowered:
            _set_autogroup_nice(before)
    if failure:
        raise failure[0]
