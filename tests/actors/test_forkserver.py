"""Actors forked from the fork server keep what an actor started with its own interpreter
has: a session, cores, environment and log of its own, an exit status the supervisor
sees, a kill that works, and no life beyond its broker's (process tier)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from leptonrt import messages as protocol
from leptonrt.actors.devices import ActorPlan
from leptonrt.actors.spawn import Supervisor
from tests.conftest import actor_processes

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="actors are forked on Linux")]

CPU = ActorPlan("cpu", "", 1)


def processes_of(connect: str) -> list[int]:
    """Live processes of the broker whose actors' socket is ``connect``: its fork server and
    the actors forked from it (they carry its command line)."""
    out = []
    for pid in actor_processes():
        try:
            if connect.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def wait_hello(router: zmq.Socket, actor_id: str, timeout: float = 60) -> protocol.Hello:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if router.poll(100):
            message = protocol.decode(router.recv_multipart()[1])
            if isinstance(message, protocol.Hello) and message.actor_id == actor_id:
                return message
    raise AssertionError(f"{actor_id} never said hello")


def wait_exit(supervisor: Supervisor, actor_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for who, how in supervisor.exited():
            if who == actor_id:
                return how
        time.sleep(0.02)
    raise AssertionError(f"{actor_id} was never reported as exited")


@pytest.fixture(autouse=True)
def forked(monkeypatch):
    """These tests are about the fork server, whatever a pool would choose."""
    monkeypatch.setenv("LEPTONRT_SPAWN", "fork")


def stand_in_broker() -> SimpleNamespace:
    """A supervisor, its fork server starting, and the socket its actors say hello to."""
    supervisor = Supervisor.in_new_run_dir(fork=True)
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    router.bind(supervisor.connect)
    return SimpleNamespace(supervisor=supervisor, router=router)


def close(broker: SimpleNamespace) -> None:
    broker.supervisor.close()
    broker.router.close(linger=0)
    shutil.rmtree(broker.supervisor.run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def broker():
    broker = stand_in_broker()
    try:
        yield broker
    finally:
        close(broker)
    assert processes_of(broker.supervisor.connect) == []   # the server and every actor it forked


def test_a_forked_actor_has_a_session_cores_environment_and_log_of_its_own(broker):
    core = max(os.sched_getaffinity(0))
    broker.supervisor.spawn("a0", CPU, {"LEPTONRT_INCARNATION": "4"}, cores=(core,))
    hello = wait_hello(broker.router, "a0")
    pid = hello.pid
    assert broker.supervisor.pids()["a0"] == pid
    assert os.getsid(pid) == pid                       # its own session: a Ctrl-C to ours never reaches it
    assert os.sched_getaffinity(pid) == {core}
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid != os.getpid() and ppid in processes_of(broker.supervisor.connect)   # forked by the server
    said = "\n".join(broker.supervisor.log_tail("a0"))
    assert "a0 (pid %d): cpu, 1 thread(s), CUDA_VISIBLE_DEVICES='', incarnation 4" % pid in said
    other = min(os.sched_getaffinity(0))
    broker.supervisor.pin("a0", (other,))   # as an adopted spare is moved: every thread of it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(os.sched_getaffinity(int(t)) == {other}
                                                  for t in os.listdir(f"/proc/{pid}/task")):
        time.sleep(0.02)
    assert all(os.sched_getaffinity(int(t)) == {other} for t in os.listdir(f"/proc/{pid}/task"))
    broker.supervisor.kill("a0")
    assert wait_exit(broker.supervisor, "a0") == "killed by SIGKILL"
    assert not Path(f"/proc/{pid}").exists()          # reaped, not a zombie


def test_a_forked_actor_that_fails_is_reported_with_its_exit_code_and_its_log(broker):
    broker.supervisor.spawn("bad", ActorPlan("no-such-device", None, 1), {"LEPTONRT_INCARNATION": "0"})
    assert wait_exit(broker.supervisor, "bad") == "exit code 1"
    assert any("no-such-device" in line for line in broker.supervisor.log_tail("bad"))


def test_an_actor_killed_before_its_pid_is_known_is_killed_all_the_same(broker):
    broker.supervisor.spawn("early", CPU, {"LEPTONRT_INCARNATION": "0"})
    broker.supervisor.kill("early")   # goes to the server after the fork request: it kills what it forks
    assert wait_exit(broker.supervisor, "early") == "killed by SIGKILL"


def test_closing_while_the_fork_server_still_gets_ready_leaves_nothing(no_leftovers):
    broker = stand_in_broker()   # PyTorch's import takes seconds: this closes long before it is done
    broker.supervisor.spawn("a0", CPU, {"LEPTONRT_INCARNATION": "0"})
    assert broker.supervisor.pids() == {"a0": None}
    close(broker)
    assert processes_of(broker.supervisor.connect) == []


def test_a_broker_killed_with_sigkill_takes_its_fork_server_actors_and_run_directory_along(no_leftovers):
    code = textwrap.dedent("""
        import time
        from leptonrt.actors.devices import ActorPlan
        from leptonrt.actors.spawn import Supervisor
        supervisor = Supervisor.in_new_run_dir()
        supervisor.spawn("a0", ActorPlan("cpu", "", 1), {"LEPTONRT_INCARNATION": "0"})
        while supervisor.pids()["a0"] is None:
            time.sleep(0.05)
        print(supervisor.connect, flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        connect = proc.stdout.readline().strip()
        assert len(processes_of(connect)) == 2   # the server and its actor
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    run_dir = Path(connect.removeprefix("ipc://")).parent
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (processes_of(connect) or run_dir.exists()):
        time.sleep(0.05)
    assert processes_of(connect) == []
    assert not run_dir.exists(), "the dead broker's run directory was left behind"


def test_a_fork_server_that_dies_takes_its_actors_and_later_ones_start_the_plain_way(no_leftovers):
    broker = stand_in_broker()
    try:
        broker.supervisor.spawn("a0", CPU, {"LEPTONRT_INCARNATION": "0"})
        pid = wait_hello(broker.router, "a0").pid
        server = [p for p in processes_of(broker.supervisor.connect) if p != pid]
        os.kill(server[0], signal.SIGKILL)
        assert wait_exit(broker.supervisor, "a0") == "exit code 143"   # what its tether exits with
        broker.supervisor.spawn("a1", CPU, {"LEPTONRT_INCARNATION": "0"})
        plain = wait_hello(broker.router, "a1").pid
        assert b"--actor-id\0a1" in Path(f"/proc/{plain}/cmdline").read_bytes()   # an interpreter of its own
    finally:
        close(broker)
    assert processes_of(broker.supervisor.connect) == []


def test_cpu_pools_fork_by_default_gpu_ones_only_when_asked_and_popen_is_always_honoured():
    from leptonrt.actors.spawn import fork_wanted
    assert fork_wanted({}) and not fork_wanted({}, gpus=True)
    assert fork_wanted({"LEPTONRT_SPAWN": "fork"}, gpus=True)
    assert not fork_wanted({"LEPTONRT_SPAWN": "popen"}) and not fork_wanted({"LEPTONRT_SPAWN": "popen"}, gpus=True)
