"""Hosts join a running broker (`leptonrt join`), each a network namespace of its own."""

import json
import time

import pytest

from tests.hosts.cluster import Cluster

pytestmark = [pytest.mark.hosts, pytest.mark.process]


@pytest.fixture
def cluster(hosts, tmp_path):
    c = Cluster(hosts, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def test_a_two_host_job_trains_shows_both_hosts_and_matches_the_one_host_digest(cluster):
    cluster.up()
    alone, one = cluster.train(json_out="one.json")
    assert alone.returncode == 0, alone.stderr
    cluster.join("alpha")
    snap = cluster.wait_actors(2)
    assert sorted(a["host"] for a in snap["actors"])[0] == "alpha"
    out, two = cluster.train(json_out="two.json")
    assert out.returncode == 0, out.stderr + cluster.log("up.log")[-3000:] + cluster.log("join-alpha.log")[-3000:]
    assert len({a["host"] for a in two["actors"]}) == 2
    assert two["history_digest"] == one["history_digest"]


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
    job = cluster.start("head", "train", "--dataset", "digits", "--epochs", "3", "--batch-size", "64", "--hidden",
                        "32", "--json-out", cluster.root / "two.json", log="train.log")
    _wait_step(cluster, 8)
    agent.kill()   # SIGKILL: its actors die with it
    assert job.wait(timeout=180) == 0, cluster.log("train.log") + cluster.log("up.log")[-3000:]
    two = json.loads((cluster.root / "two.json").read_text())
    assert two["history_digest"] == one["history_digest"]
    assert two["regroups"] >= 1 and two["replayed_steps"] >= 0
    assert [a["host"] for a in two["actors"] if a["in_group"]] == [one["actors"][0]["host"]]


def _wait_step(cluster, step, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = cluster.status().get("job")
        if job and job["step"] >= step:
            return
        time.sleep(0.1)
    raise AssertionError("the job never got going")
