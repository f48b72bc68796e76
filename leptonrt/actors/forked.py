"""The broker's side of its fork server (``forkserver``): start it, ask it for actors, take
in what became of them.

Nothing here blocks on the server: requests wait in a buffer while its pipe is full (the
server reads nothing while it gets ready), reports are read when there are some, and a
process the server has not forked yet has no pid. If the server dies, the actors it
forked die with it (their parent-death signal); those it never got to are started the
plain way instead (``Supervisor`` does that), and so is everything after.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import forkwire

log = logging.getLogger("leptonrt.actors")

LOST = 143   # what a forked actor exits with when its server dies (its tether's code)


class ForkedProcess:
    """One actor the server forks, handled as a ``subprocess.Popen`` is (pid, poll,
    wait, terminate, kill)."""

    def __init__(self, server: ForkServer, n: int) -> None:
        self.server, self.n = server, n
        self.pid: int | None = None          # once the server has forked it
        self.returncode: int | None = None   # once the server has reaped it (Popen's convention)
        self.unstarted = False               # the server died before forking it
        self.signalled: int | None = None    # a signal asked for before its pid was known

    def poll(self) -> int | None:
        self.server.poll()
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None and not self.unstarted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"actor process {self.n}", timeout)
            self.server.wait_readable(left)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            if self.pid is None:
                self.signalled = signum
            self.server.send(forkwire.Signal(n=self.n, signum=int(signum)))

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def pin(self, cores: tuple[int, ...]) -> None:
        """Move every thread of it onto ``cores``."""
        if self.returncode is None:
            self.server.send(forkwire.Pin(n=self.n, cores=cores))


class ForkServer:
    """A fork server process, started at once; it forks nothing until it is ready."""

    def __init__(self, run_dir: Path, connect: str, env: dict[str, str]) -> None:
        self.env = env   # the server's environment: a child's is this, changed as its Fork says
        self.log = run_dir / "forkserver.log"
        cmd = [sys.executable, "-m", "leptonrt.actors.forkserver", "--connect", connect, "--parent-pid", str(os.getpid())]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out,
                                         env=env, start_new_session=True)
        for pipe in (self.proc.stdin, self.proc.stdout):
            os.set_blocking(pipe.fileno(), False)
        self.alive = True
        self.ready = False   # it has forked an actor: its imports are done
        self._reader = forkwire.Reader(forkwire.REPORTS)
        self._out = bytearray()
        self._children: dict[int, ForkedProcess] = {}
        self._numbers = itertools.count()

    def fork(self, actor_id: str, device: str, threads: int, env: dict[str, str], log: Path,
             cores: tuple[int, ...] | None) -> ForkedProcess:
        """Ask for one actor process, with the whole environment ``env``."""
        child = ForkedProcess(self, next(self._numbers))
        self._children[child.n] = child
        changed = tuple(f"{k}={v}" for k, v in env.items() if self.env.get(k) != v)
        self.send(forkwire.Fork(n=child.n, actor_id=actor_id, device=device, threads=threads, env=changed,
                                unset=tuple(k for k in self.env if k not in env), log=str(log), cores=cores))
        return child

    def send(self, record) -> None:
        if self.alive:
            self._out += forkwire.encode(record)
            self._flush()

    def poll(self) -> None:
        """Send what waits, and take in every report the server has written."""
        if not self.alive:
            return
        self._flush()
        while self.alive:
            try:
                data = os.read(self.proc.stdout.fileno(), forkwire.LIMITS.frame_bytes)
            except BlockingIOError:
                return
            if not data:
                self._lost("exited")
                return
            for report in self._reader.feed(data):
                self._take(report)

    def wait_readable(self, timeout: float) -> None:
        """Until the server has written something, at most ``timeout`` seconds."""
        if self.alive:
            select.select([self.proc.stdout], [], [], timeout)
        else:
            time.sleep(min(timeout, 0.05))

    def close(self, grace: float) -> None:
        """Let the server go and reap it. Once it is ready and has no child left it exits
        when its pipe closes; before that, it holds nothing but its imports."""
        self.poll()
        if self.ready and not self._children:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.alive = False
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def _flush(self) -> None:
        try:
            while self._out:
                del self._out[:os.write(self.proc.stdin.fileno(), self._out)]
        except BlockingIOError:
            pass
        except OSError:
            self._lost("stopped reading")

    def _take(self, report) -> None:
        child = self._children.get(report.n)
        if child is None:
            return
        if isinstance(report, forkwire.Forked):
            child.pid, self.ready = report.pid, True
        else:
            child.returncode = report.code
            del self._children[report.n]

    def _lost(self, how: str) -> None:
        """The server is gone: its actors are dying with it, and it forks nothing more."""
        self.alive = False
        log.warning("leptonrt: the actors' fork server %s (see %s); starting actors the plain way", how, self.log)
        for child in self._children.values():
            if child.pid is not None:
                child.returncode = LOST
            elif child.signalled is not None:
                child.returncode = -child.signalled   # it was stopped before it started
            else:
                child.unstarted = True
        self._children.clear()
