"""The shared-memory gradient sum: exact sums in rank order, two slots in turn, no leftovers."""

import platform
import random
import threading
import time

import pytest
import torch

from leptonrt.actors import gradshm
from leptonrt.actors.gradshm import SharedSum
from leptonrt.data.shm import list_segments

pytestmark = pytest.mark.skipif(platform.machine().lower() not in {"x86_64", "amd64"},
                                reason="the shared-memory sum is used on x86 only")


def group(size, n):
    members = [SharedSum(n, me, size) for me in range(size)]
    names = [m.name for m in members]
    for m in members:
        m.attach(names)
    for m in members:
        m.unlink()
    return members


def test_every_member_gets_the_sum_in_rank_order_round_after_round_even_one_round_apart():
    before = set(list_segments())
    size, n, rounds = 3, 1000, 200
    members = group(size, n)
    assert set(list_segments()) == before          # the names went once all had mapped them
    results = [[None] * rounds for _ in range(size)]
    inputs = [[torch.randn(n, generator=torch.Generator().manual_seed(1000 * k + me)) for k in range(rounds)]
              for me in range(size)]

    def run(me):
        rng = random.Random(me)
        for k in range(rounds):
            if rng.random() < 0.3:
                time.sleep(rng.random() * 1e-3)   # members drift apart: one may be a round ahead
            flat = inputs[me][k].clone()
            members[me].start(flat, 10.0, lambda: None).wait()
            results[me][k] = flat

    threads = [threading.Thread(target=run, args=(me,)) for me in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for k in range(rounds):
        expected = (inputs[0][k] + inputs[1][k]) + inputs[2][k]   # rank order
        for me in range(size):
            assert torch.equal(results[me][k], expected), (k, me)
    for m in members:
        m.close()
    assert set(list_segments()) == before


def test_two_members_get_the_same_bits():
    a, b = group(2, 4096)
    x, y = torch.randn(4096), torch.randn(4096)
    fx, fy = x.clone(), y.clone()
    t = threading.Thread(target=lambda: b.start(fy, 10.0, lambda: None).wait())
    t.start()
    a.start(fx, 10.0, lambda: None).wait()
    t.join(timeout=10)
    assert torch.equal(fx, fy) and torch.equal(fx, x + y)
    a.close()
    b.close()


def test_a_peer_that_never_publishes_ends_the_wait_with_an_error_and_the_actor_is_asked_meanwhile():
    a, b = group(2, 16)
    calls = []
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        a.start(torch.ones(16), 0.2, lambda: calls.append(1)).wait()
    assert 0.2 <= time.monotonic() - started < 5 and len(calls) >= 5

    class Regroup(Exception):
        pass

    def regroup():
        raise Regroup
    with pytest.raises(Regroup):           # what the actor raises when its broker calls a regroup
        a.start(torch.ones(16), 30.0, regroup).wait()
    a.close()
    b.close()


def test_only_cpu_actors_sum_through_shared_memory():
    assert gradshm.available(torch.device("cpu"))
    assert not gradshm.available(torch.device("cuda", 0))


def test_a_peer_whose_process_ended_ends_the_wait_at_once_even_before_it_is_reaped():
    import os
    import subprocess
    import sys
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    while not gradshm.exited(zombie.pid):   # ended, not yet reaped
        time.sleep(0.01)
    assert os.path.exists(f"/proc/{zombie.pid}") and not gradshm.exited(os.getpid())
    a, b = group(2, 16)
    a.pids = [os.getpid(), zombie.pid]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        a.start(torch.ones(16), 30.0, lambda: None).wait()
    assert time.monotonic() - started < 5
    zombie.wait()
    assert gradshm.exited(zombie.pid)        # reaped: gone altogether
    a.close()
    b.close()
