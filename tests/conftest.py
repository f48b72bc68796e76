"""Shared fixtures: every process test checks that nothing outlives it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leptonrt.data.shm import list_segments


@pytest.fixture(scope="session", autouse=True)
def private_runtime_dir(tmp_path_factory):
    """Every test, and every process it starts, gets a runtime directory of its own: a
    `leptonrt up` the user has running must not take the suite's jobs (nor the suite its)."""
    path = tmp_path_factory.mktemp("runtime")
    path.chmod(0o700)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEPTONRT_RUNTIME_DIR", str(path))
        yield path


def actor_processes() -> list[int]:
    """Pids of live leptonrt actor processes on this machine, but for those of another PID
    namespace (another container sharing the machine: nothing this suite started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if b"leptonrt.actors" in cmd and state != "Z" and not _elsewhere(entry):
            pids.append(int(entry.name))
    return pids


def _elsewhere(entry: Path) -> bool:
    """Whether the process lives in another PID namespace than ours (unknown: it does not)."""
    try:
        return os.readlink(entry / "ns" / "pid") != os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


@pytest.fixture
def no_leftovers():
    """Fails the test if it leaves a segment or an actor process behind."""
    segments_before, actors_before = set(list_segments()), set(actor_processes())
    yield
    assert set(list_segments()) - segments_before == set()
    assert set(actor_processes()) - actors_before == set()


@pytest.fixture
def leptonrt_cli():
    """Run ``python -m leptonrt ARGS`` to completion; returns the CompletedProcess."""
    def run(*args, env=None, timeout=240):
        full_env = dict(os.environ, **(env or {}))
        return subprocess.run([sys.executable, "-m", "leptonrt", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=full_env)
    return run
