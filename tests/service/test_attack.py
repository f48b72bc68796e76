"""A real `leptonrt up` under attack from a raw zmq socket on its own ipc socket, while a job
runs: the job finishes with the same weights as without the attack, no actor is lost,
`status` keeps answering, and the broker's memory stays bounded."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import zmq
from safetensors.torch import load_file

from leptonrt import messages
from leptonrt.messages import StatusRequest

pytestmark = pytest.mark.process

RSS_BOUND = 300 * 1024 * 1024   # what the attacks may add to the broker's resident memory, at most


def _env(runtime):
    env = dict(os.environ, LEPTONRT_RUNTIME_DIR=str(runtime))
    env.pop("LEPTONRT_TOKEN", None)
    return env


def _cli(runtime, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "leptonrt", *map(str, args)], capture_output=True, text=True,
                          env=_env(runtime), timeout=timeout)


def _rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _status_seconds(runtime):
    """How long the broker takes to answer a status request, and the snapshot it sends."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"ipc://{runtime}/broker.sock")
        started = time.monotonic()
        sock.send(messages.encode(StatusRequest()))
        assert sock.poll(30_000), "no status answer within 30 s"
        reply = messages.decode(sock.recv(), messages.SERVICE_LIMITS)
        return time.monotonic() - started, dict(reply.snapshot)
    finally:
        sock.close(linger=0)
        ctx.term()


# each attack is a program of its own, as a hostile client would be; its fate is not the test's
ATTACKS = {
    "garbage": "[[os.urandom(200)] for _ in range(2000)]",
    "a million-element message": "[[msgpack.packb([None] * 1_000_000)]]",
    "300 x 1 MB multipart": "[[b'x' * (1 << 20)] * 300]",
    "10,000-frame messages": "[[b'f'] * 10_000 for _ in range(3)]",
    "a 100,000-message flood": "[[flood] for _ in range(100_000)]",
    "2,000 x 1 MB multipart": "[[b'y' * (1 << 20)] * 2000]",
}
ATTACKER = """
import os, sys, msgpack, zmq
from leptonrt import messages
flood = messages.encode(messages.StatusRequest())
parts = {parts}
ctx = zmq.Context(); sock = ctx.socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0); sock.setsockopt(zmq.SNDTIMEO, 5000)
sock.connect(sys.argv[1])
for frames in parts:
    try:
        sock.send_multipart(frames)
    except zmq.Again:
        break   # the broker cut us off, as it should
"""


def _attack(address, parts):
    try:
        subprocess.run([sys.executable, "-c", ATTACKER.format(parts=parts), address], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        pass   # an attacker the broker keeps waiting is not the broker waiting on it


def test_a_running_job_survives_every_attack_with_the_weights_it_has_without_them(tmp_path, no_leftovers):
    runtime = tmp_path / "rt"
    up = subprocess.Popen([sys.executable, "-m", "leptonrt", "up", "--gpus", "none", "--cpu-actors", "2", "--no-tui"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(runtime))
    job = ["train", "--dataset", "synthetic:6000,32,4", "--hidden", "64", "--epochs", "12", "--batch-size", "64",
           "--split", "0.5,0.5", "--seed", "3", "--quiet"]
    try:
        deadline = time.monotonic() + 90
        while _cli(runtime, "status").returncode != 0:
            assert time.monotonic() < deadline, "up never answered"
            time.sleep(0.2)
        calm = _cli(runtime, *job, "--save", tmp_path / "calm.safetensors", "--json-out", tmp_path / "calm.json")
        assert calm.returncode == 0, calm.stderr
        rss_before = _rss(up.pid)
        attacked = subprocess.Popen([sys.executable, "-m", "leptonrt", *map(str, job), "--save",
                                     tmp_path / "attacked.safetensors", "--json-out", tmp_path / "attacked.json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(runtime))
        while _status_seconds(runtime)[1]["job"] is None:
            time.sleep(0.05)
        address = f"ipc://{runtime}/broker.sock"
        for name, parts in ATTACKS.items():
            _attack(address, parts)
            seconds, snap = _status_seconds(runtime)
            assert seconds < 1.0, f"status took {seconds:.1f} s after {name}"
            assert all(a["state"] != "lost" for a in snap["actors"]), name
        _out, err = attacked.communicate(timeout=240)
        assert attacked.returncode == 0, err
        assert _rss(up.pid) - rss_before < RSS_BOUND
        counters = _status_seconds(runtime)[1]["counters"]
        assert counters["decode_errors"] + counters["invalid_messages"] > 0 and counters["dropped"] > 0
        calm_result, attacked_result = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("calm", "attacked"))
        assert [a["restarts"] for a in attacked_result["actors"]] == [0, 0]
        assert attacked_result["replayed_steps"] == 0
        # exactly once: the same rows of the same epochs in the same order, step by step...
        assert attacked_result["history_digest"] == calm_result["history_digest"]
        calm_w, attacked_w = (load_file(tmp_path / f"{n}.safetensors") for n in ("calm", "attacked"))
        assert calm_w.keys() == attacked_w.keys()
        # ...and, with the same fixed split, the same sums in the same order: the same bits
        assert all(torch.equal(calm_w[k], attacked_w[k]) for k in calm_w)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
