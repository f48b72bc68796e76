"""A head and joined hosts in the namespaces of ``conftest.hosts``: keys, `up`, `join`, `train`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.hosts.conftest import PRIVATE_IFACE, PUBLIC, Hosts

PORT = 7420
ADDRESS = f"tcp://{PUBLIC['head']}:{PORT}"


class Cluster:
    """Keys for a head and for each host that may join, and the processes started."""

    def __init__(self, hosts: Hosts, root: Path) -> None:
        self.hosts, self.root = hosts, root
        self.runtime = root / "rt"
        self.runtime.mkdir(mode=0o700)
        self.head_keys = self.keys("head")
        self.procs: list[subprocess.Popen] = []
        self.prefix: dict[str, list[str]] = {}   # role -> what its long-lived processes run under (taskset)

    def env(self) -> dict[str, str]:
        env = dict(os.environ, LEPTONRT_RUNTIME_DIR=str(self.runtime), NO_COLOR="1")
        env.pop("LEPTONRT_TOKEN", None)
        return env

    def cli(self, role: str, *args, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run(self.hosts.cmd(role, sys.executable, "-m", "leptonrt", *map(str, args)),
                              capture_output=True, text=True, timeout=timeout, env=self.env())

    def keys(self, name: str, allow: bool = False, role: str = "host") -> Path:
        """A key pair for ``name`` (allowed on the head as ``name`` if ``allow``, as a host or a client)."""
        directory = self.root / f"keys-{name}"
        out = subprocess.run([sys.executable, "-m", "leptonrt", "keys", "init", "--keys", directory],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        if allow:
            host = ["--host"] if role == "host" else []
            out = subprocess.run([sys.executable, "-m", "leptonrt", "keys", "allow", name, directory / "public.key",
                                  "--keys", self.head_keys, *host], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
        return directory

    def start(self, role: str, *args, log: str) -> subprocess.Popen:
        out = open(self.root / log, "wb")
        proc = self.hosts.popen(role, *self.prefix.get(role, []), sys.executable, "-m", "leptonrt", *map(str, args),
                                stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=self.env())
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        return (self.root / name).read_text(errors="replace")

    def up(self, *extra) -> subprocess.Popen:
        proc = self.start("head", "up", "--gpus", "none", "--cpu-actors", "1", "--no-tui", "--listen", ADDRESS,
                          "--keys", self.head_keys, "--gradient-iface", PRIVATE_IFACE["head"], *extra, log="up.log")
        self.wait_actors(1)
        return proc

    def join(self, name: str, role: str = "agent", keys: Path | None = None, *extra) -> subprocess.Popen:
        keys = keys or self.keys(name, allow=True)
        return self.start(role, "join", ADDRESS, "--server-key", self.head_keys / "public.key", "--keys", keys,
                          "--gpus", "none", "--cpu-actors", "1", *_gradients(role), *extra,
                          log=f"join-{name}.log")

    def status(self) -> dict:
        out = self.cli("head", "status", "--json", timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def wait_actors(self, count: int, timeout: float = 120) -> dict:
        """The snapshot once ``count`` actors are idle."""
        deadline, snap = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            out = self.cli("head", "status", "--json", timeout=60)
            if out.returncode == 0:
                snap = json.loads(out.stdout)
                if len(snap["actors"]) == count and all(a["state"] == "idle" for a in snap["actors"]):
                    return snap
            time.sleep(0.3)
        raise AssertionError(f"never {count} idle actors: {snap and snap['actors']}\n{self.log('up.log')[-3000:]}")

    def train(self, *extra, json_out: str = "result.json") -> tuple[subprocess.CompletedProcess, dict | None]:
        path = self.root / json_out
        out = self.cli("head", "train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64",
                       "--hidden", "32", "--json-out", path, *extra)
        return out, (json.loads(path.read_text()) if path.exists() else None)

    def stop(self) -> None:
        """SIGTERM every process started (the agents first), then make sure of it."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _gradients(role: str) -> tuple[str, ...]:
    """The agent has the private link; another namespace only the public segment."""
    return ("--gradient-iface", PRIVATE_IFACE[role]) if role in PRIVATE_IFACE else ("--trust-network",)
