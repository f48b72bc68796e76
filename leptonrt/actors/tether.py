"""An actor's tie to its broker, set up before anything slow.

An actor takes seconds to start (PyTorch's import; a spare's warm-up, at idle priority,
longer). A broker that dies meanwhile must not leave it running until then, so
``python -m leptonrt.actors`` reads its command line and asks for the parent-death signal
first, with nothing heavier than the standard library loaded.

The kernel's parent-death signal knows one process: the parent. An actor the broker
started itself is tied to the broker; one forked by the broker's fork server
(``leptonrt.actors.forkserver``) is tied to the server, which is tied to the broker: a
broker that dies takes the server along, and the server its actors.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass

from ..pids import pid_alive

RUN_PREFIX = "leptonrt-run-"   # a broker's run directory (socket, actor logs): leptonrt-run-<broker pid>-<random>
_RUN_NAME = re.compile(r"^leptonrt-run-(\d+)-[A-Za-z0-9_]+$")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m leptonrt.actors", description="a leptonrt actor (started by the broker)")
    p.add_argument("--connect", required=True)
    p.add_argument("--actor-id", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parent-pid", type=int, default=0)
    return p.parse_args(argv)


def clean_after(parent_pid: int, connect: str) -> None:
    """The broker died: remove what it could not — its shared memory and its run directory."""
    if not parent_pid:
        return
    from ..data.shm import remove_segments_of
    remove_segments_of(parent_pid)
    run_dir = os.path.dirname(connect.removeprefix("ipc://"))
    if connect.startswith("ipc://") and os.path.basename(run_dir).startswith(RUN_PREFIX):
        shutil.rmtree(run_dir, ignore_errors=True)


def make_run_dir() -> str:
    """A new run directory for this broker, private to its user, named after its pid."""
    path = tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{os.getpid()}-")
    os.chmod(path, 0o700)
    return path


def clean_stale_run_dirs() -> list[str]:
    """Remove this user's run directories whose broker is gone, and return their paths.

    A broker cleans up after itself, and its actors after a broker that died; when they die
    with it (SIGKILL to all of them, the OOM killer), the next broker does it.
    """
    removed = []
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        match = _RUN_NAME.match(name)
        path = os.path.join(root, name)
        if not match or pid_alive(int(match.group(1))):
            continue
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@dataclass(frozen=True)
class Tether:
    """Who a process lives and dies with."""

    broker_pid: int   # the broker: what it leaves behind (shared memory, run directory) is ours to remove
    parent_pid: int   # our parent: the broker itself, or the broker's fork server
    connect: str      # the broker's actor socket, ipc://RUN_DIR/broker.sock

    def hold(self) -> None:
        """Ask Linux for a signal of our own (SIGUSR1) when the parent dies, so nothing
        outlives the broker; its handler also removes what the dead broker could not remove
        itself. (A signal of its own: at that moment getppid() may still name the dead
        parent, so a SIGTERM from a living supervisor could not be told apart.)"""

        def on_parent_death(_signum, _frame) -> None:
            try:
                self.clean()
            finally:
                os._exit(143)

        signal.signal(signal.SIGUSR1, on_parent_death)
        if sys.platform.startswith("linux"):
            import ctypes
            try:
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGUSR1)  # PR_SET_PDEATHSIG
            except OSError:
                pass
        if self.parent_pid and self.cut():
            self.clean()
            os._exit(3)  # the parent died before we could ask

    def cut(self) -> bool:
        """Whether our parent is gone (the broker, or the fork server that went with it)."""
        return os.getppid() != self.parent_pid

    def clean(self) -> None:
        """Remove what the dead broker left. A fork server between us does it itself: it
        dies of the broker's death, while its actors die of its own, which may have had
        another cause (the broker then lives on, and its files with it)."""
        if self.parent_pid == self.broker_pid:
            clean_after(self.broker_pid, self.connect)
