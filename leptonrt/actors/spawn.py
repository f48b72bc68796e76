"""Starting, watching and stopping actor processes.

On Linux, CPU actors are forked from one warm process per pool (``forkserver``), started
with the pool: PyTorch's import is paid once, while the broker gets on with its own
start-up, instead of once per actor, all at the same time. ``fork_wanted`` says when
(``LEPTONRT_SPAWN=popen`` gives each actor its own interpreter).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .devices import ActorPlan
from .forked import ForkServer, ForkedProcess
from .tether import make_run_dir


@dataclass(frozen=True)
class Launch:
    """What starting one actor takes, however it is started."""
    actor_id: str
    device: str
    threads: int
    env: dict[str, str]              # its whole environment
    log: Path                        # its stdout and stderr
    cores: tuple[int, ...] | None    # its CPU affinity (None: any)


@dataclass
class _Proc:
    actor_id: str
    plan: ActorPlan
    launch: Launch
    popen: subprocess.Popen | ForkedProcess
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


def fork_wanted(env: dict[str, str], gpus: bool = False) -> bool:
    """Whether actors are forked from a fork server: on Linux, for a pool of CPU actors only,
    unless LEPTONRT_SPAWN says ``popen`` (or ``fork``: GPU actors too). A pool with GPU actors
    starts each with its own interpreter until the forked path has run on a GPU."""
    choice = env.get("LEPTONRT_SPAWN", "")
    if choice == "popen" or not (sys.platform.startswith("linux") and hasattr(os, "fork")):
        return False
    return choice == "fork" or not gpus


class Supervisor:
    """Owns the actor processes of one broker; nothing it starts outlives ``close()``."""

    def __init__(self, run_dir: Path, connect: str, actor_env: dict[str, str] | None = None,
                 fork: bool | None = None, gpus: bool = False) -> None:
        """``fork``: whether actors are forked (None: as ``fork_wanted`` says for a pool with
        GPU actors, ``gpus``, or without)."""
        self.run_dir = run_dir
        self.connect = connect
        self._procs: dict[str, _Proc] = {}
        fork = fork_wanted(os.environ, gpus) if fork is None else fork
        # started now, so that its imports run while the broker does its own start-up
        self._server = ForkServer(run_dir, connect, self._base_env(actor_env or {})) if fork else None

    @classmethod
    def in_new_run_dir(cls, actor_env: dict[str, str] | None = None, fork: bool | None = None,
                       gpus: bool = False) -> Supervisor:
        """A supervisor in a new run directory (the actors' socket, their logs), its fork
        server (if any) starting. Whoever asks removes the directory after ``close()``."""
        run_dir = Path(make_run_dir())
        return cls(run_dir, f"ipc://{run_dir}/broker.sock", actor_env, fork=fork, gpus=gpus)

    def spawn(self, actor_id: str, plan: ActorPlan, extra_env: dict[str, str] | None = None,
              cores: tuple[int, ...] | None = None) -> None:
        """Start one actor process, on ``cores`` if given. Its output goes to a log in the
        run dir."""
        env = self._base_env(extra_env or {})
        if plan.visible is not None:
            env["CUDA_VISIBLE_DEVICES"] = plan.visible
        env["OMP_NUM_THREADS"] = str(plan.threads)
        launch = Launch(actor_id, plan.device, plan.threads, env, self.run_dir / f"actor-{actor_id}.log", cores)
        self._procs[actor_id] = _Proc(actor_id, plan, launch, self._start(launch))

    def _base_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {**os.environ, **extra}
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # everything is local; avoid resolving the hostname
        env["OMP_NUM_THREADS"] = "1"
        return env

    def _start(self, launch: Launch) -> subprocess.Popen | ForkedProcess:
        if self._server is not None and self._server.alive:
            return self._server.fork(launch.actor_id, launch.device, launch.threads, launch.env, launch.log,
                                     launch.cores)
        cmd = [sys.executable, "-m", "leptonrt.actors", "--connect", self.connect, "--actor-id", launch.actor_id,
               "--device", launch.device, "--threads", str(launch.threads), "--parent-pid", str(os.getpid())]
        with open(launch.log, "wb") as out:
            popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=launch.env, start_new_session=True)
        pin(popen.pid, launch.cores)
        return popen

    def _refresh(self) -> None:
        """Take in the fork server's news; start the plain way what it died before forking."""
        if self._server is None:
            return
        self._server.poll()
        for proc in self._procs.values():
            if isinstance(proc.popen, ForkedProcess) and proc.popen.unstarted:
                proc.popen = self._start(proc.launch)

    def exited(self) -> list[tuple[str, str]]:
        """(actor_id, how) for processes that ended since the last call."""
        self._refresh()
        out = []
        for proc in self._procs.values():
            code = proc.popen.poll()
            if code is not None and not proc.reported:
                proc.reported = True
                out.append((proc.actor_id, describe_exit(code)))
        return out

    def pin(self, actor_id: str, cores: tuple[int, ...] | None) -> None:
        """Move a running actor (every thread of it) onto ``cores``."""
        self._refresh()
        proc = self._procs.get(actor_id)
        if proc is None or proc.popen.poll() is not None or not cores:
            return
        if isinstance(proc.popen, ForkedProcess):
            proc.popen.pin(cores)
        else:
            pin(proc.popen.pid, cores)

    def rename(self, old: str, new: str) -> None:
        """The process started as ``old`` stands for ``new`` from now on (an adopted spare)."""
        proc = self._procs.pop(old)
        proc.actor_id = new
        self._procs[new] = proc

    def kill(self, actor_id: str) -> None:
        """SIGKILL one actor (taken for hung); its exit shows up in ``exited`` as usual."""
        self._refresh()
        proc = self._procs.get(actor_id)
        if proc is not None and proc.popen.poll() is None:
            proc.popen.kill()

    def pids(self) -> dict[str, int | None]:
        """Each actor's pid (None for one the fork server has not forked yet)."""
        self._refresh()
        return {a: p.popen.pid for a, p in self._procs.items()}

    def log_tail(self, actor_id: str, lines: int = 10) -> list[str]:
        """The last lines an actor printed (for failure reports)."""
        try:
            with open(self._procs[actor_id].launch.log, errors="replace") as fh:
                return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
        except (KeyError, OSError):
            return []

    def stop_all(self, grace: float = 3.0) -> None:
        """Terminate every actor, kill what does not exit within ``grace`` seconds, reap all."""
        self._refresh()
        live = [p.popen for p in self._procs.values() if p.popen.poll() is None]
        for popen in live:
            popen.terminate()
        for popen in live:
            if popen.pid is None:   # not forked yet: the server ends it once forked, or goes first
                continue
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                try:
                    popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:   # stuck in the kernel: nothing more to do from here
                    pass

    def close(self, grace: float = 3.0) -> None:
        """Stop every actor, then the fork server."""
        self.stop_all(grace)
        if self._server is not None:
            self._server.close(grace)
