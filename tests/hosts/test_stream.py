"""`join --data stream`: a host that holds no training rows gets each step's by value."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.hosts, pytest.mark.process]


def test_a_streaming_host_trains_what_the_per_host_cache_trains_and_holds_no_training_rows(cluster):
    cluster.up()
    alone, one = cluster.train("--epochs", "2", json_out="one.json")
    assert alone.returncode == 0, alone.stderr
    fixed = ("--epochs", "2", "--rebalance", "off")   # one split throughout: the same sums, bit for bit
    cached_agent = cluster.join("alpha")
    cluster.wait_actors(2)
    out, cached = cluster.train(*fixed, json_out="cached.json")
    assert out.returncode == 0, out.stderr
    cached_agent.send_signal(signal.SIGTERM)
    assert cached_agent.wait(timeout=60) == 0
    cluster.wait_actors(1)
    agent = cluster.join("beta", "agent", None, "--data", "stream")
    cluster.wait_actors(2)
    out, streamed = cluster.train(*fixed, json_out="streamed.json")
    assert out.returncode == 0, out.stderr + cluster.log("up.log")[-3000:] + cluster.log("join-beta.log")[-3000:]
    assert {a["host"] for a in streamed["actors"]} == {one["actors"][0]["host"], "beta"}
    assert streamed["history_digest"] == cached["history_digest"] == one["history_digest"]
    # the same rows in the same pieces: the same weights, so the very same test loss
    assert (streamed["test_loss"], streamed["train_loss"]) == (cached["test_loss"], cached["train_loss"])
    planned, rebalanced = cluster.train("--epochs", "2", json_out="rebalanced.json")   # splits that move
    assert planned.returncode == 0 and rebalanced["history_digest"] == one["history_digest"], planned.stderr
    events = " ".join(e["text"] for e in cluster.status()["events"])
    assert "beta its test split (rows by value)" in events, events
    sent = re.findall(r"rows by value: (\d+) frames sent", events)
    assert len(sent) == 2 and all(int(n) > 0 for n in sent), events   # its rows came by value
    held = {p.name.rsplit(".", 1)[-1]: p.stat().st_size for p in Path("/dev/shm").glob(f"leptonrt-{agent.pid}x*")}
    assert sorted(held) == ["x_test", "x_train", "y_test", "y_train"], held   # the test split's offer...
    assert held["x_train"] <= 1 and held["y_train"] <= 1 and held["x_test"] > 1, held   # ...with no training rows
    # a batch wider than the agent's window (80 frames of 15 rows of 8,192 features) is refused up front
    wide = cluster.cli("head", "train", "--dataset", "synthetic:1500,8192,2", "--batch-size", "1200", "--epochs", "1")
    assert wide.returncode == 78 and "takes 80 frames to stream" in wide.stderr, wide.stderr


def test_a_streaming_agent_whose_head_is_killed_mid_job_stops_its_actors_and_exits_69(cluster, hosts):
    head = cluster.up()
    agent = cluster.join("alpha", "agent", None, "--data", "stream")
    cluster.wait_actors(2)
    cluster.start("head", "train", "--dataset", "digits", "--epochs", "5000", "--batch-size", "64", "--hidden", "32",
                  "--rebalance", "off", log="train.log")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (cluster.status().get("job") or {}).get("step", 0) < 8:
        time.sleep(0.1)
    os.killpg(head.pid, signal.SIGKILL)   # the head and its actors, at once: no goodbye
    assert agent.wait(timeout=60) == 69, cluster.log("join-alpha.log")[-2000:]
    assert "lost the head" in cluster.log("join-alpha.log").splitlines()[-1]
    left = subprocess.run(["ip", "netns", "pids", hosts.names["agent"]], capture_output=True, text=True).stdout
    assert left.split() == []   # its actors stopped with it
