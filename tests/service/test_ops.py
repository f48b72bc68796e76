"""Operating a running `leptonrt up`: its metrics, `stop`, `up --detach`, `jobs` and `status --watch`."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from leptonrt.pids import pid_running
from tests.service.test_up import _env, _status

pytestmark = pytest.mark.process

SMALL = ["--dataset", "synthetic:500,8,3", "--hidden", "16", "--epochs", "2", "--quiet"]   # 400 training rows


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_up(runtime, *options):
    """A real `leptonrt up` with one CPU actor, answering; on the way out it is stopped
    (Ctrl-C), or killed if it does not stop."""
    proc = subprocess.Popen([sys.executable, "-m", "leptonrt", "up", "--gpus", "none", "--cpu-actors", "1", "--no-tui",
                             *map(str, options)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(runtime))
    try:
        _status(runtime)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_metrics_of_a_running_up_add_up_to_the_job_it_finished(tmp_path, leptonrt_cli, no_leftovers):
    runtime, port = tmp_path / "rt", _free_port()
    with running_up(runtime, "--metrics-port", port):
        done = leptonrt_cli("train", *SMALL, "--json-out", tmp_path / "result.json", env=_env(runtime))
        assert done.returncode == 0, done.stderr
        result = json.loads((tmp_path / "result.json").read_text())
        got = _scrape(port)
    steps = result["steps"]
    assert got[("leptonrt_steps_total", ())] == steps
    assert got[("leptonrt_samples_total", ())] == result["epochs"] * 400
    assert got[("leptonrt_step_seconds_count", ())] == got[("leptonrt_step_seconds_bucket", (("le", "+Inf"),))] == steps
    assert got[("leptonrt_allreduce_seconds_count", ())] == steps
    assert got[("leptonrt_step_seconds_sum", ())] > 0
    assert got[("leptonrt_regroups_total", ())] == result["regroups"]
    assert got[("leptonrt_jobs", (("state", "done"),))] == 1 and got[("leptonrt_jobs", (("state", "running"),))] == 0
    actor = (("actor", "0"), ("device", "cpu"))
    assert got[("leptonrt_actor_compute_seconds_total", actor)] > 0
    assert got[("leptonrt_actor_share", actor)] == 0   # idle again
    assert got[("leptonrt_service_accepted_total", ())] >= 1


def test_a_metrics_port_in_use_is_one_line_and_exit_78_before_any_actor_starts(tmp_path, leptonrt_cli, no_leftovers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = leptonrt_cli("up", "--gpus", "none", "--cpu-actors", "1", "--no-tui", "--metrics-port", port,
                           env=_env(tmp_path / "rt"))
    assert out.returncode == 78, out.stderr
    assert out.stderr.strip().splitlines() == [f"leptonrt: --metrics-port {port}: 127.0.0.1:{port} is in use; "
                                               "pick another port"]


LONG = ["train", "--dataset", "synthetic:20000,32,4", "--epochs", "200", "--quiet"]


def _client(runtime, *args):
    return subprocess.Popen([sys.executable, "-m", "leptonrt", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(runtime))


def _wait_for(runtime, check, timeout=120):
    """The first snapshot for which ``check`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "leptonrt", "status", "--json"], capture_output=True, text=True,
                             env=_env(runtime), timeout=60)
        if out.returncode == 0 and check(snap := json.loads(out.stdout)):
            return snap
        time.sleep(0.2)   # each try is a process start: leave the CPU to the actors meanwhile
    raise AssertionError("the broker never got there")


def _finish(*procs, timeout=60):
    """Every process's exit code (one still running after ``timeout`` is killed: None)."""
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    return codes


def test_stop_ends_a_running_up_cleanly_and_every_client_hears_the_broker_closed(tmp_path, leptonrt_cli, no_leftovers):
    runtime = tmp_path / "rt"
    clients = []
    with running_up(runtime) as up:
        try:
            clients.append(_client(runtime, *LONG))
            _wait_for(runtime, lambda s: s["job"] is not None)
            clients.append(_client(runtime, *LONG))   # queued behind the running one
            _wait_for(runtime, lambda s: len(s["queued"]) == 1)
            stopped = leptonrt_cli("stop", env=_env(runtime))
            assert stopped.returncode == 0, stopped.stderr
            assert "has stopped" in stopped.stderr and "Traceback" not in stopped.stderr
            assert up.poll() == 0   # gone before `stop` returned, and a clean exit
        finally:
            codes = _finish(*clients)
    errors = [c.stderr.read() for c in clients]
    assert codes == [75, 75], errors   # the running job at a step boundary, the queued one at once
    assert all("the broker closed" in e and "Traceback" not in e for e in errors), errors
    assert "stopped after step" in errors[0]
    assert not (runtime / "broker.sock").exists()
    assert "Traceback" not in up.stderr.read()
    again = leptonrt_cli("stop", env=_env(runtime))
    assert again.returncode == 69
    assert again.stderr.strip().splitlines() == [f"leptonrt: no broker is answering at ipc://{runtime}/broker.sock: "
                                                 "nothing to stop"]


def _gone(pid, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_running(pid):
        time.sleep(0.1)
    return not pid_running(pid)


def test_up_detach_returns_once_the_broker_answers_and_refuses_a_second_up(tmp_path, leptonrt_cli, no_leftovers):
    runtime = tmp_path / "rt"
    env = _env(runtime)
    config = tmp_path / "up.toml"   # detach from a file: the broker it starts must not detach again
    config.write_text("[up]\ndetach = true\n")
    started = leptonrt_cli("up", "--config", config, "--gpus", "none", "--cpu-actors", "1", env=env)
    found = re.search(r"\(pid (\d+)\)", started.stderr)
    pid = int(found.group(1)) if found else None
    try:
        assert started.returncode == 0 and pid is not None, started.stderr
        assert "`leptonrt top`" in started.stderr and "`leptonrt stop`" in started.stderr
        status = leptonrt_cli("status", "--json", env=env)   # it answers at once: that is when `up` returned
        assert status.returncode == 0 and json.loads(status.stdout)["pid"] == pid
        log = runtime / "broker.log"
        assert log.stat().st_mode & 0o777 == 0o600 and "serving at" in log.read_text()
        for again in (["up"], ["up", "--detach"]):
            second = leptonrt_cli(*again, "--gpus", "none", "--cpu-actors", "1", "--no-tui", env=env)
            assert second.returncode == 78
            assert second.stderr.strip().splitlines() == [f"leptonrt: a leptonrt broker is already serving at "
                                                          f"ipc://{runtime}/broker.sock (`leptonrt stop` stops it)"]
        _watch_until_ctrl_c(env, pid)
        stopped = leptonrt_cli("stop", env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert not pid_running(pid)
    finally:
        if pid is not None and pid_running(pid):   # not our child: ended by pid, as a Ctrl-C would
            os.kill(pid, signal.SIGTERM)
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def _watch_until_ctrl_c(env, pid):
    """`status --watch` prints a snapshot a line (with --json) until Ctrl-C, which ends it with 0."""
    watch = subprocess.Popen([sys.executable, "-m", "leptonrt", "status", "--watch", "0.2", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [watch.stdout.readline() for _ in range(3)]
        watch.send_signal(signal.SIGINT)
        _out, err = watch.communicate(timeout=30)
    finally:
        _finish(watch)
    assert watch.returncode == 0 and "Traceback" not in err, err
    snapshots = [json.loads(line) for line in lines]
    assert all(s["pid"] == pid for s in snapshots) and snapshots[0]["now"] < snapshots[2]["now"]


def test_a_detached_broker_that_dies_while_starting_shows_its_log_and_exit_code(tmp_path, leptonrt_cli):
    out = leptonrt_cli("up", "--detach", "--gpus", "device=7", env=_env(tmp_path / "rt"))
    assert out.returncode == 69, out.stderr
    assert "exited while starting (exit code 69)" in out.stderr and "| leptonrt: --gpus device=7" in out.stderr


def _jobs(runtime, leptonrt_cli):
    out = leptonrt_cli("jobs", "--json", env=_env(runtime))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cancelled_jobs_end_alone_with_exit_3_and_the_same_actors_run_the_next(tmp_path, leptonrt_cli, no_leftovers):
    runtime, env = tmp_path / "rt", _env(tmp_path / "rt")
    clients = []
    with running_up(runtime):
        try:
            clients.append(_client(runtime, *LONG))
            running = _wait_for(runtime, lambda s: s["job"] is not None and s["job"]["step"] > 0)
            pids = [a["pid"] for a in running["actors"]]
            clients.append(_client(runtime, *LONG))
            _wait_for(runtime, lambda s: len(s["queued"]) == 1)
            listed = leptonrt_cli("jobs", env=env)
            assert listed.returncode == 0 and listed.stdout.splitlines()[0].split() == [
                "id", "state", "dataset", "progress", "submitted"]
            assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [["1", "running"], ["2", "queued"]]
            for job in ("2", "1"):   # the queued one, then the running one
                cancel = leptonrt_cli("jobs", "cancel", job, env=env)
                assert cancel.returncode == 0, cancel.stderr
        finally:
            codes = _finish(*clients)
        errors = [c.stderr.read() for c in clients]
        assert codes == [3, 3], errors
        assert "stopped after step" in errors[0] and "before it started" in errors[1]
        assert all("cancelled (`leptonrt jobs cancel`)" in e and "Traceback" not in e for e in errors), errors
        unknown = leptonrt_cli("jobs", "cancel", "99", env=env)
        assert unknown.returncode == 78
        assert unknown.stderr.strip().splitlines() == ["leptonrt: there is no job 99 on this broker "
                                                       "(`leptonrt jobs` lists them)"]
        done = leptonrt_cli("train", *SMALL, "--json-out", tmp_path / "result.json", env=env)
        assert done.returncode == 0, done.stderr
        # the cancelled job's actor left it at a step boundary and waited: nothing was replaced
        assert [a["pid"] for a in json.loads((tmp_path / "result.json").read_text())["actors"]] == pids
        jobs = _jobs(runtime, leptonrt_cli)
    assert [(j["id"], j["state"]) for j in jobs] == [(1, "cancelled"), (2, "cancelled"), (3, "done")]
    assert 0 < jobs[0]["step"] < jobs[0]["total_steps"] and jobs[1]["total_steps"] is None
    assert jobs[2]["step"] == jobs[2]["total_steps"] == json.loads((tmp_path / "result.json").read_text())["steps"]
