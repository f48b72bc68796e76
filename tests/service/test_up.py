"""`leptonrt up` as a service: the live view under a terminal, signals, job submission."""

import json
import os
from pathlib import Path
import pty
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import actor_processes

pytestmark = pytest.mark.process


def _env(runtime, **extra):
    env = dict(os.environ, LEPTONRT_RUNTIME_DIR=str(runtime), **extra)
    env.pop("LEPTONRT_TOKEN", None)
    env.pop("NO_COLOR", None)
    return env


def _status(runtime, timeout=60):
    """The running broker's snapshot, once it answers and every actor is idle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "leptonrt", "status", "--json"], capture_output=True,
                             text=True, env=_env(runtime), timeout=60)
        if out.returncode == 0:
            snap = json.loads(out.stdout)
            if snap["actors"] and all(a["state"] == "idle" for a in snap["actors"]):
                return snap
    raise AssertionError(f"the broker never answered with idle actors: {out.stderr}")


class Terminal:
    """Reads a pseudo-terminal continuously, as a real one would (a full pty blocks the writer)."""

    def __init__(self, fd):
        self.fd, self.seen, self.done = fd, bytearray(), threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while not self.done.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    return

    def wait_for(self, needles, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(n.encode() in self.seen for n in needles):
            time.sleep(0.05)
        return bytes(self.seen).decode(errors="replace")

    def close(self):
        self.done.set()
        self.thread.join()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_up_in_a_terminal_shows_the_actors_and_leaves_nothing_on_a_signal(tmp_path, no_leftovers, signum, code):
    runtime = tmp_path / "rt"
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "leptonrt", "up", "--gpus", "none", "--cpu-actors", "2"],
                            stdin=secondary, stdout=secondary, stderr=secondary, env=_env(runtime, COLUMNS="120"),
                            start_new_session=True)
    os.close(secondary)
    terminal = Terminal(primary)
    try:
        snap = _status(runtime)
        pids = [str(a["pid"]) for a in snap["actors"]]
        screen = terminal.wait_for(["rank", "idle", *pids])
        assert all(pid in screen for pid in pids) and "cpu" in screen, screen[-2000:]
        assert (runtime / "broker.sock").exists()
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        terminal.close()
        os.close(primary)
    assert not (runtime / "broker.sock").exists()
    assert not [p for p in actor_processes() if str(p) in pids]


@pytest.fixture
def running_up(tmp_path):
    runtime = tmp_path / "rt"
    proc = subprocess.Popen([sys.executable, "-m", "leptonrt", "up", "--gpus", "none", "--cpu-actors", "2", "--no-tui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(runtime))
    try:
        _status(runtime)
        yield runtime
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130, proc.stderr.read().decode()


def test_two_jobs_submitted_at_once_to_a_running_up_both_finish_in_order(no_leftovers, running_up, tmp_path):
    env = _env(running_up)
    args = ["--hidden", "16", "--batch-size", "64", "--quiet"]
    outs = [tmp_path / "one.json", tmp_path / "two.json"]
    # the first job is made long (a SIMULATED slowdown of rank 0) so the second arrives while it runs
    first = subprocess.Popen([sys.executable, "-m", "leptonrt", "train", "--dataset", "synthetic:4000,16,3", *args,
                              "--epochs", "3", "--simulate-slowdown", "0=50", "--rebalance", "off", "--json-out", outs[0]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:   # submit the second once the broker runs the first
        snap = json.loads(subprocess.run([sys.executable, "-m", "leptonrt", "status", "--json"], capture_output=True,
                                         text=True, env=env, timeout=60).stdout)
        if snap["job"] is not None:
            break
    second = subprocess.Popen([sys.executable, "-m", "leptonrt", "train", "--dataset", "synthetic:2000,16,3", *args,
                               "--epochs", "2", "--json-out", outs[1]],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    errors = []
    for proc in (first, second):
        _out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert "submitting to the broker at ipc://" in err and " submitted" in err   # the broker, not an embedded one
        errors.append(err)
    one, two = (json.loads(p.read_text()) for p in outs)
    assert "(1 ahead of it)" in errors[1]   # queued behind the running one...
    assert one["job_id"] < two["job_id"] and one["finished_at"] <= two["started_at"]   # ...and run after it
    assert one["epochs"] == 3 and two["epochs"] == 2
    # the same actor processes ran both
    assert [a["pid"] for a in one["actors"]] == [a["pid"] for a in two["actors"]]


def test_status_json_shows_each_actors_cpu_and_memory_and_the_last_jobs_summary(no_leftovers, running_up, tmp_path,
                                                                                  leptonrt_cli):
    env, out = _env(running_up), tmp_path / "result.json"
    done = leptonrt_cli("train", "--dataset", "digits", "--epochs", "1", "--quiet", "--json-out", out, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    deadline = time.monotonic() + 30
    while True:   # CPU% needs two samples of a process, a second apart
        snap = _status(running_up)
        if all(a["cpu_percent"] is not None for a in snap["actors"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for actor in snap["actors"]:
        assert actor["cpu_percent"] >= 0 and actor["rss_bytes"] > 10 << 20, actor
        assert actor["gpu_percent"] is None and actor["gpu_memory_bytes"] is None and actor["gpu_power_w"] is None
    last = snap["last_job"]
    assert snap["job"] is None and last["id"] == result["job_id"] and last["state"] == "done"
    assert last["history_digest"] == result["history_digest"] and last["test_accuracy"] == result["test_accuracy"]


def test_a_bad_job_is_refused_with_its_exit_code_and_the_broker_goes_on(no_leftovers, running_up, leptonrt_cli):
    bad = leptonrt_cli("train", "--dataset", "npz:/nonexistent.npz", "--epochs", "1", env=_env(running_up))
    assert bad.returncode == 66 and "nonexistent" in bad.stderr and "Traceback" not in bad.stderr
    good = leptonrt_cli("train", "--dataset", "synthetic:500,8,3", "--epochs", "1", "--quiet", env=_env(running_up))
    assert good.returncode == 0, good.stderr
    # devices are the broker's to choose: asking for others here is refused, not ignored
    for devices in (["--gpus", "1"], ["--gpus", "none", "--cpu-actors", "4"]):
        refused = leptonrt_cli("train", "--dataset", "synthetic:500,8,3", "--epochs", "1", *devices,
                               env=_env(running_up))
        assert refused.returncode == 78 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "trains on the actors it started" in refused.stderr
        assert all(f"{d}" in refused.stderr for d in devices if d.startswith("--"))


def test_nothing_listening_is_a_clear_error(tmp_path, leptonrt_cli):
    env = _env(tmp_path / "rt")
    for command in (["status"], ["status", "--json"], ["train", "--connect", f"ipc://{tmp_path}/none.sock"]):
        out = leptonrt_cli(*command, env=env)
        assert out.returncode == 69, out.stderr
        assert "no leptonrt broker is answering" in out.stderr and "Traceback" not in out.stderr


def test_listening_on_tcp_without_keys_is_refused_before_anything_starts(tmp_path, leptonrt_cli):
    # loopback included: every local user can reach it, so only CURVE keys get in
    out = leptonrt_cli("up", "--gpus", "none", "--cpu-actors", "1", "--listen", "tcp://127.0.0.1:5999",
                       "--keys", tmp_path / "nokeys", env=_env(tmp_path / "rt"))
    assert out.returncode == 78 and "keys init" in out.stderr and "Traceback" not in out.stderr


def test_killing_the_broker_takes_its_actors_and_shared_memory_with_it(tmp_path, leptonrt_cli, no_leftovers):
    from leptonrt.data.shm import list_segments
    proc, pids, run_dir = _up_after_one_job(tmp_path / "rt", leptonrt_cli, cpu_actors=2)
    try:
        assert run_dir.name.startswith("leptonrt-run-") and run_dir.exists()
        assert [s for s in list_segments() if s.startswith(f"leptonrt-{proc.pid}x")]   # the dataset is cached
    finally:
        proc.kill()
        proc.wait()
    # every actor notices through the kernel (parent-death signal): the two the status listed,
    # and the spare (it may still be getting ready, at idle priority)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (set(pids) & set(actor_processes()) or _actors_of(proc.pid)):
        time.sleep(0.05)
    assert not set(pids) & set(actor_processes())
    assert not _actors_of(proc.pid)
    assert not [s for s in list_segments() if s.startswith(f"leptonrt-{proc.pid}x")]
    assert not run_dir.exists(), "the dead broker's run directory (actor socket, logs) was left behind"



def test_what_a_broker_killed_with_its_actors_left_is_removed_by_the_next_broker(tmp_path, leptonrt_cli, no_leftovers):
    """Actors clean up after a broker that died; when they die with it (SIGKILL to all of
    them, the OOM killer), nobody is left to: the next broker does."""
    from leptonrt.data.shm import list_segments
    proc, _pids, run_dir = _up_after_one_job(tmp_path / "rt", leptonrt_cli, cpu_actors=1)
    # all at once: stopped first, so that no actor sees its broker die and cleans up
    os.kill(proc.pid, signal.SIGSTOP)
    actors = _actors_of(proc.pid)
    for pid in actors:
        os.kill(pid, signal.SIGSTOP)
    for pid in actors + [proc.pid]:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(actors) & set(actor_processes()):
        time.sleep(0.05)
    left = [s for s in list_segments() if s.startswith(f"leptonrt-{proc.pid}x")]
    assert left and run_dir.exists()   # nobody was left to remove them
    done = leptonrt_cli("train", "--gpus", "none", "--cpu-actors", "1", "--dataset", "synthetic:500,8,3",
                        "--epochs", "1", "--quiet", env=_env(tmp_path / "rt2"))
    assert done.returncode == 0, done.stderr
    assert not run_dir.exists()
    assert not set(left) & set(list_segments())


def _up_after_one_job(runtime, leptonrt_cli, cpu_actors):
    """A running `leptonrt up` that has trained one small job: (process, actor pids, run dir).
    The caller ends the process; if getting there fails, it is killed here."""
    proc = subprocess.Popen([sys.executable, "-m", "leptonrt", "up", "--gpus", "none", "--cpu-actors", str(cpu_actors),
                             "--no-tui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(runtime))
    try:
        pids = [a["pid"] for a in _status(runtime)["actors"]]
        run_dir = _run_dir_of(pids[0])
        done = leptonrt_cli("train", "--dataset", "synthetic:500,8,3", "--epochs", "1", "--quiet", env=_env(runtime))
        assert done.returncode == 0, done.stderr
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, pids, run_dir

def _actor_option(pid, name):
    """The value of option ``name`` on an actor's command line (None: no such option, or the
    process is gone)."""
    try:
        args = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")
    except OSError:
        return None
    return args[args.index(name) + 1] if name in args else None


def _actors_of(broker_pid):
    """Live actor processes started by the broker ``broker_pid`` (from their --parent-pid)."""
    return [pid for pid in actor_processes() if _actor_option(pid, "--parent-pid") == str(broker_pid)]


def _run_dir_of(pid):
    """The broker's private run directory, from an actor's command line (--connect ipc://DIR/broker.sock)."""
    return Path(_actor_option(pid, "--connect").removeprefix("ipc://")).parent


def test_stopping_up_with_jobs_queued_tells_every_client_at_once_and_prints_no_traceback(tmp_path, no_leftovers):
    runtime = tmp_path / "rt"
    up = subprocess.Popen([sys.executable, "-m", "leptonrt", "up", "--gpus", "none", "--cpu-actors", "1", "--no-tui"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(runtime))
    clients = []
    try:
        _status(runtime)
        job = ["train", "--dataset", "synthetic:20000,32,4", "--epochs", "200", "--quiet"]
        for _ in range(4):   # one runs, three wait in the queue
            clients.append(subprocess.Popen([sys.executable, "-m", "leptonrt", *job], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True, env=_env(runtime)))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            snap = json.loads(subprocess.run([sys.executable, "-m", "leptonrt", "status", "--json"], capture_output=True,
                                             text=True, env=_env(runtime), timeout=60).stdout)
            if snap["job"] is not None and len(snap["queued"]) == 3:
                break
        up.send_signal(signal.SIGINT)
        codes = [c.wait(timeout=60) for c in clients]
        assert up.wait(timeout=60) == 130
    finally:
        for proc in [up, *clients]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    errors = [c.stderr.read() for c in clients]
    # the running one stops at a step boundary (130); the queued ones are told at once (75)
    assert sorted(codes) == [75, 75, 75, 130], errors
    assert all("the broker closed" in e for c, e in zip(codes, errors) if c == 75), errors
    broker_err = up.stderr.read()
    assert "Traceback" not in broker_err and "never retrieved" not in broker_err, broker_err
