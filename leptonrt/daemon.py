"""``leptonrt up --detach``: the broker in the background, started the way ``up`` starts it.

The same command runs again without ``--detach``, in a session of its own (no terminal
can signal it), with its output going to a log in the user's private runtime directory.
This process waits until that broker answers ``status`` (at most ``START_WAIT_S``), then
says how to follow and stop it. A broker that dies while starting is reported with the
log's last lines and its exit code; one that never answers is stopped and reported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .broker.address import runtime_dir

START_WAIT_S = 60.0   # the service answers before the actors are up: it takes seconds, not minutes
POLL_S = 0.2
TAIL_LINES = 10


def log_path() -> Path:
    """Where a detached broker writes its output (the private runtime directory, 0700)."""
    return runtime_dir() / "broker.log"


def detach(argv: list[str], address: str, probe) -> int:
    """Start ``leptonrt`` with ``argv`` (an ``up`` command line, without ``--detach``) in the
    background and wait until ``probe(address)`` finds it answering; the exit code."""
    log = log_path()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # LEPTONRT_DETACH=0 outranks a config file's `detach = true`: the child serves, it does not detach again
        child = subprocess.Popen([sys.executable, "-m", "leptonrt", *argv], stdin=subprocess.DEVNULL, stdout=fd,
                                 stderr=fd, start_new_session=True, env={**os.environ, "LEPTONRT_DETACH": "0"})
    finally:
        os.close(fd)
    try:
        code = _wait_answering(child, address, probe)
    except KeyboardInterrupt:
        _end(child)
        raise
    if code is not None:
        print(f"leptonrt: the broker exited while starting (exit code {code}); the end of {log}:", file=sys.stderr)
        for line in _tail(log):
            print(f"  | {line}", file=sys.stderr)
        return code
    print(f"leptonrt: the broker runs in the background (pid {child.pid}), serving at {address}; log: {log}\n"
          "leptonrt: follow it with `leptonrt top`, stop it with `leptonrt stop`", file=sys.stderr)
    return 0


def _wait_answering(child: subprocess.Popen, address: str, probe) -> int | None:
    """None once the child answers at ``address``; its exit code if it ends first (70 if it
    does not answer in time: it is stopped)."""
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        if (code := child.poll()) is not None:
            return code if code >= 0 else 128 - code
        snapshot = probe(address)
        if snapshot is not None and snapshot.get("pid") == child.pid:
            return None
        time.sleep(POLL_S)
    print(f"leptonrt: the broker did not answer within {START_WAIT_S:.0f} s; stopping it", file=sys.stderr)
    _end(child)
    return 70


def _end(child: subprocess.Popen) -> None:
    """Stop a child that is still starting: as a Ctrl-C would (it cleans up), else at once."""
    child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        return []
