"""Hosts join a running broker (`leptonrt join`), each a network namespace of its own."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.hosts, pytest.mark.process]


def test_a_two_host_job_trains_shows_both_hosts_and_matches_the_one_host_digest(cluster):
    cluster.up()
    alone, one = cluster.train(json_out="one.json")
    assert alone.returncode == 0, alone.stderr
    agent = cluster.join("alpha")
    snap = cluster.wait_actors(2)
    assert sorted(a["host"] for a in snap["actors"])[0] == "alpha"
    out, two = cluster.train(json_out="two.json")
    assert out.returncode == 0, out.stderr + cluster.log("up.log")[-3000:] + cluster.log("join-alpha.log")[-3000:]
    assert len({a["host"] for a in two["actors"]}) == 2
    assert two["history_digest"] == one["history_digest"]
    filled = _segments_of(agent.pid)
    assert len(filled) == 4   # the host's own copy: x_train, y_train, x_test, y_test
    again, three = cluster.train(json_out="three.json")
    assert again.returncode == 0 and three["history_digest"] == one["history_digest"]
    assert _segments_of(agent.pid) == filled   # the later job reused the host's copy


def test_a_key_allowed_as_a_client_cannot_join_as_a_host(cluster):
    cluster.up()
    client = cluster.keys("carol", allow=True, role="client")   # may submit jobs, never receive their data
    proc = cluster.join("carol", "agent", client)
    assert proc.wait(timeout=60) == 78
    lines = cluster.log("join-carol.log").strip().splitlines()
    assert len(lines) == 1 and "allowed as a client, not as a host" in lines[0], lines
    assert len(cluster.status()["actors"]) == 1


def _segments_of(pid):
    return sorted(p.name for p in Path("/dev/shm").glob(f"leptonrt-{pid}x*"))


def test_a_host_whose_key_is_not_allowed_is_refused_and_join_exits_78(cluster):
    cluster.up()
    rogue = cluster.keys("rogue")   # a key pair the head never allowed
    proc = cluster.join("rogue", "third", rogue)
    assert proc.wait(timeout=60) == 78
    lines = cluster.log("join-rogue.log").strip().splitlines()
    assert len(lines) == 1 and "refused this host's key" in lines[0], lines
    assert len(cluster.status()["actors"]) == 1


def test_killing_the_agent_mid_job_regroups_and_the_job_finishes_with_the_same_digest(cluster):
    cluster.up()
    _alone, one = cluster.train("--epochs", "3", json_out="one.json")
    agent = cluster.join("alpha")
    cluster.wait_actors(2)
    # without rebalancing the agent's actor stays a member (the planner could bench it first)
    job = cluster.start("head", "train", "--dataset", "digits", "--epochs", "3", "--batch-size", "64", "--hidden",
                        "32", "--rebalance", "off", "--json-out", cluster.root / "two.json", log="train.log")
    _wait_step(cluster, 8)
    agent.kill()   # SIGKILL: its actors die with it
    assert job.wait(timeout=180) == 0, cluster.log("train.log") + cluster.log("up.log")[-3000:]
    two = json.loads((cluster.root / "two.json").read_text())
    assert two["history_digest"] == one["history_digest"]
    assert two["regroups"] == 1   # the host's loss, and nothing else
    assert [a["host"] for a in two["actors"] if a["in_group"]] == [one["actors"][0]["host"]]


def _wait_step(cluster, step, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = cluster.status().get("job")
        if job and job["step"] >= step:
            return
        time.sleep(0.1)
    raise AssertionError("the job never got going")


PROBE = """
import sys, zmq
from zmq.utils.monitor import recv_monitor_message
ctx = zmq.Context()
server = zmq.curve_keypair()[0]   # whatever key: a stranger knows no allowed secret
s = ctx.socket(zmq.DEALER)
public, secret = zmq.curve_keypair()
s.curve_serverkey, s.curve_publickey, s.curve_secretkey = open(sys.argv[2]).read().split('"')[1].encode(), public, secret
m = s.get_monitor_socket()
s.connect(sys.argv[1])
while m.poll(3000):
    event = recv_monitor_message(m)["event"]
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        print("admitted"); break
    if event & (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
        print("refused"); break
else:
    print("no answer")
"""


def test_nothing_of_the_job_is_reachable_from_a_namespace_that_did_not_join(cluster, hosts):
    from tests.hosts.conftest import PUBLIC
    cluster.up()
    agent = cluster.join("alpha")
    cluster.wait_actors(2)
    job = cluster.start("head", "train", "--dataset", "digits", "--epochs", "6", "--batch-size", "64", "--hidden",
                        "32", "--rebalance", "off", log="train.log")   # both members throughout: gloo is up
    _wait_step(cluster, 4)
    listening = {role: hosts.listening(role) for role in ("head", "agent")}
    snap = cluster.status()
    remote = next(a["pid"] for a in snap["actors"] if a["host"] == "alpha")
    maps = Path(f"/proc/{remote}/maps").read_text()
    assert job.poll() is None, "the job ended before its sockets were looked at"
    # the data came over the actors' channel into the host's own cache: its actor maps that copy
    assert f"/leptonrt-{agent.pid}x" in maps and f"/leptonrt-{snap['pid']}x" not in maps, maps
    reachable = []
    for role, sockets in listening.items():
        for address, port in sockets:
            target = PUBLIC[role] if address in ("0.0.0.0", "*", "::") else address
            if not target.startswith("127.") and hosts.connects("third", target, port, timeout=1.0):
                reachable.append((target, port))
    # gloo listens for the group (on the private link only): the test sees the job's sockets
    assert any(address.startswith("10.231.9.") for sockets in listening.values() for address, _ in sockets), listening
    # what the third namespace reaches at all is CURVE, and it refuses a stranger's key
    assert sorted(p for _a, p in reachable) == sorted({7420, _actor_port(cluster)}), (reachable, listening)
    for target, port in reachable:
        out = hosts.run("third", sys.executable, "-c", PROBE, f"tcp://{target}:{port}",
                        str(cluster.head_keys / "public.key"))
        assert out.stdout.strip() == "refused", (target, port, out.stdout, out.stderr)
    assert job.wait(timeout=180) == 0, cluster.log("train.log")


def _actor_port(cluster):
    """The actors' channel's TCP port: the head's other listener on its public address."""
    return next(p for a, p in cluster.hosts.listening("head") if p != 7420 and a == "10.231.0.1")


def test_a_link_slowed_to_100mbit_still_trains(cluster, hosts):
    # tbf shapes the rate; this kernel has no netem, so no delay can be added
    hosts.run("agent", "tc", "qdisc", "add", "dev", "priv0", "root", "tbf", "rate", "100mbit", "burst", "32kbit",
              "latency", "50ms")
    hosts.run("head", "tc", "qdisc", "add", "dev", "priv0", "root", "tbf", "rate", "100mbit", "burst", "32kbit",
              "latency", "50ms")
    cluster.up()
    cluster.join("alpha")
    cluster.wait_actors(2)
    out, result = cluster.train()
    assert out.returncode == 0, out.stderr
    assert len({a["host"] for a in result["actors"]}) == 2
    assert "tbf" in hosts.run("agent", "tc", "qdisc", "show", "dev", "priv0").stdout


def test_without_a_gradient_interface_no_group_spans_hosts(cluster):
    proc = cluster.start("head", "up", "--gpus", "none", "--cpu-actors", "1", "--no-tui", "--listen",
                         "tcp://10.231.0.1:7420", "--keys", cluster.head_keys, log="up.log")
    cluster.wait_actors(1)
    agent = cluster.join("alpha")
    assert agent.wait(timeout=60) == 78
    assert "without --gradient-iface or --trust-network" in cluster.log("join-alpha.log")
    keys = cluster.keys("beta", allow=True)
    bare = cluster.cli("agent", "join", "tcp://10.231.0.1:7420", "--server-key", cluster.head_keys / "public.key",
                       "--keys", keys, "--gpus", "none", "--cpu-actors", "1", timeout=60)
    assert bare.returncode == 78 and "neither authenticated nor encrypted" in bare.stderr
    assert proc.poll() is None and len(cluster.status()["actors"]) == 1


def test_a_host_that_comes_back_mid_job_gets_the_data_and_joins_like_a_replacement(cluster):
    cluster.up()
    _alone, one = cluster.train("--epochs", "12", json_out="one.json")
    keys = cluster.keys("alpha", allow=True)
    agent = cluster.join("alpha", keys=keys)
    cluster.wait_actors(2)
    job = cluster.start("head", "train", "--dataset", "digits", "--epochs", "12", "--batch-size", "64", "--hidden",
                        "32", "--rebalance", "off", "--json-out", cluster.root / "two.json", log="train.log")
    _wait_step(cluster, 8)
    agent.kill()
    agent.wait(timeout=30)
    back = cluster.join("alpha", keys=keys)   # the same key: the same host, back
    assert job.wait(timeout=240) == 0, cluster.log("train.log") + cluster.log("up.log")[-3000:]
    two = json.loads((cluster.root / "two.json").read_text())
    events = "; ".join(e["text"] for e in cluster.status()["events"])
    assert two["history_digest"] == one["history_digest"]
    assert all(a["in_group"] for a in two["actors"]) and two["regroups"] == 2, events   # lost, then rejoined
    assert _segments_of(back.pid)   # with its own copy of the data, filled mid-job


def test_an_agent_stopped_frees_everything_and_one_whose_head_stops_exits_69(cluster, hosts):
    cluster.up()
    agent = cluster.join("alpha")
    cluster.wait_actors(2)
    out, _result = cluster.train()   # the host's cache gets the data
    assert out.returncode == 0 and _segments_of(agent.pid)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=60) == 0
    assert _segments_of(agent.pid) == [] and "leaving" in cluster.log("join-alpha.log")
    left = subprocess.run(["ip", "netns", "pids", hosts.names["agent"]], capture_output=True, text=True).stdout
    assert left.split() == []   # its actors stopped with it
    cluster.wait_actors(1)   # the head saw it go
    again = cluster.join("beta")
    cluster.wait_actors(2)
    assert cluster.cli("head", "stop", timeout=60).returncode == 0
    assert again.wait(timeout=60) == 69
    assert "closed" in cluster.log("join-beta.log").splitlines()[-1]


def test_a_host_that_joins_during_a_job_waits_for_the_next_one(cluster):
    cluster.up()
    job = cluster.start("head", "train", "--dataset", "digits", "--epochs", "5000", "--batch-size", "64", "--hidden",
                        "32", log="train.log")
    _wait_step(cluster, 4)
    cluster.join("alpha")
    deadline, alpha = time.monotonic() + 120, None
    while time.monotonic() < deadline and job.poll() is None:
        alpha = next((a for a in cluster.status()["actors"] if a["host"] == "alpha"), None)
        if alpha is not None and alpha["state"] == "idle":
            break
        time.sleep(0.2)
    assert job.poll() is None and alpha["state"] == "idle", alpha   # said hello, kept for the next job
    assert cluster.cli("head", "jobs", "cancel", "1", timeout=60).returncode == 0
    assert job.wait(timeout=120) == 3
    cluster.wait_actors(2)
    out, second = cluster.train()
    assert out.returncode == 0, out.stderr
    assert len({a["host"] for a in second["actors"]}) == 2
