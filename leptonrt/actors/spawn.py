"""Starting, watching and stopping actor processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .devices import ActorPlan


@dataclass
class _Proc:
    actor_id: str
    plan: ActorPlan
    popen: subprocess.Popen
    log: Path
    reported: bool = False


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def pin(pid: int, cores: tuple[int, ...] | None) -> None:
    """Restrict every thread of process ``pid`` to ``cores`` (None: leave it be). Threads it
    starts later inherit the set. Best effort: a process that just exited, or a platform
    without affinity, is left as it is."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, set(cores))
        except OSError:
            pass


class Supervisor:
    """Owns the actor processes of one broker; nothing it starts outlives ``close()``."""

    def __init__(self, run_dir: Path, connect: str) -> None:
        self.run_dir = run_dir
        self.connect = connect
        self._procs: dict[str, _Proc] = {}

    def spawn(self, actor_id: str, plan: ActorPlan, extra_env: dict[str, str] | None = None,
              cores: tuple[int, ...] | None = None) -> int:
        """Start one actor process, on ``cores`` if given; returns its pid. Its output goes
        to a log in the run dir."""
        env = dict(os.environ)
        env.update(extra_env or {})
        if plan.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = plan.visible
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # everything is local; avoid resolving the hostname
        env["OMP_NUM_THREADS"] = str(plan.threads)
        log = self.run_dir / f"actor-{actor_id}.log"
        cmd = [sys.executable, "-m", "leptonrt.actors", "--connect", self.connect,
               "--actor-id", actor_id, "--device", plan.device, "--threads", str(plan.threads),
               "--parent-pid", str(os.getpid())]
        with open(log, "wb") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self._procs[actor_id] = _Proc(actor_id, plan, popen, log)
        pin(popen.pid, cores)
        return popen.pid

    def exited(self) -> list[tuple[str, str]]:
        """(actor_id, how) for processes that ended since the last call."""
        out = []
        for proc in self._procs.values():
            code = proc.popen.poll()
            if code is not None and not proc.reported:
                proc.reported = True
                out.append((proc.actor_id, describe_exit(code)))
        return out

    def pin(self, actor_id: str, cores: tuple[int, ...] | None) -> None:
        """Move a running actor (every thread of it) onto ``cores``."""
        proc = self._procs.get(actor_id)
        if proc is not None and proc.popen.poll() is None:
            pin(proc.popen.pid, cores)

    def rename(self, old: str, new: str) -> None:
        """The process started as ``old`` stands for ``new`` from now on (an adopted spare)."""
        proc = self._procs.pop(old)
        proc.actor_id = new
        self._procs[new] = proc

    def kill(self, actor_id: str) -> None:
        """SIGKILL one actor (taken for hung); its exit shows up in ``exited`` as usual."""
        proc = self._procs.get(actor_id)
        if proc is not None and proc.popen.poll() is None:
            proc.popen.kill()

    def pids(self) -> dict[str, int]:
        return {a: p.popen.pid for a, p in self._procs.items()}

    def log_tail(self, actor_id: str, lines: int = 10) -> list[str]:
        """The last lines an actor printed (for failure reports)."""
        try:
            with open(self._procs[actor_id].log, errors="replace") as fh:
                return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
        except (KeyError, OSError):
            return []

    def close(self, grace: float = 3.0) -> None:
        """Terminate every actor, kill what does not exit within ``grace`` seconds, reap all."""
        live = [p for p in self._procs.values() if p.popen.poll() is None]
        for proc in live:
            proc.popen.terminate()
        for proc in live:
            try:
                proc.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
