"""An actor dies with its broker, also while it is still starting (process tier)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

from tests.conftest import actor_processes


def test_the_tie_to_the_broker_is_made_with_the_standard_library_alone():
    # __main__ makes it before importing the actor's code: PyTorch's import takes seconds
    code = ("import os, signal, sys; from leptonrt.actors.tether import Tether; "
            "Tether(os.getppid(), os.getppid(), 'ipc:///nonexistent/broker.sock').hold(); "
            "print('torch' in sys.modules, 'numpy' in sys.modules, callable(signal.getsignal(signal.SIGUSR1)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_the_fork_server_ties_itself_to_its_broker_before_it_imports_pytorch():
    # its module loads nothing heavy: main() holds the tether, then gets ready (seconds)
    code = "import sys, leptonrt.actors.forkserver; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_a_spare_that_is_still_getting_ready_dies_with_its_broker_and_removes_its_run_directory(tmp_path):
    run_dir = tmp_path / "leptonrt-run-test"
    run_dir.mkdir()
    (run_dir / "a0.log").write_text("")
    # a stand-in broker: starts a spare (it gets ready at idle priority: seconds), prints its pid, dies
    broker = textwrap.dedent(f"""
        import os, subprocess, sys
        env = dict(os.environ, LEPTONRT_SPARE="1", LEPTONRT_INCARNATION="1")
        child = subprocess.Popen([sys.executable, "-m", "leptonrt.actors", "--connect", "ipc://{run_dir}/broker.sock",
                                  "--actor-id", "spare", "--parent-pid", str(os.getpid())], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(child.pid, flush=True)
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", broker], capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (pid in actor_processes() or run_dir.exists()):
        time.sleep(0.05)
    assert pid not in actor_processes()
    assert not run_dir.exists()
