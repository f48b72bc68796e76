"""The cases the rebalancer is judged on, with the figures each one comes from.

Generic cases run at any size N: pure noise, one lasting 2x slowdown, and a run with every
kind of trouble at once. Membership cases are two-actor jobs whose costs come from what was
measured on the 2-core box (the all-reduce of two CPU processes costs ~2 ms a step there).
Host cases put actors on other hosts (``leptonrt join``): the group's all-reduce then also
crosses the slowest link of the hosts it spans.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .simulate import Change, Scenario

ROWS_PER_ACTOR = 256     # generic cases: the batch is this many rows per actor
_A, _C = 0.5e-3, 10e-6   # generic fixed seconds and seconds per row (a compute-bound step: 3.1 ms)


def noise_case(n: int, steps: int = 10_000) -> Scenario:
    """Identical actors, Gaussian noise of 10% CV, nothing ever changes: every decision is false."""
    return Scenario(case=f"noise-{n}", a=(_A,) * n, c=(_C,) * n, batch=ROWS_PER_ACTOR * n, steps=steps,
                    cv=(0.10,) * n, pure_noise=True)


def slowdown_case(n: int, steps: int = 1000, at: int = 300) -> Scenario:
    """Identical actors, 10% CV, and rank 0 twice as slow from step ``at`` to the end."""
    return Scenario(case=f"slowdown-{n}", a=(_A,) * n, c=(_C,) * n, batch=ROWS_PER_ACTOR * n, steps=steps,
                    cv=(0.10,) * n, changes=(Change(at, 0, 2.0),), persistent_change=True)


def changes_case(n: int, seed: int = 0, steps: int = 2400) -> Scenario:
    """Everything at once, at ``n`` actors.

    Speeds spread 0.7-1.4x, fixed shares 5-50%, noise 5-20% CV per actor, spikes of 3-10x (about
    one step in twenty has one somewhere), a quarter of the actors two-speed (+-15% on
    alternate steps), an eighth capped near their even share. Then, in a run of 2400 steps
    (other lengths scale the times): rank 0 2x slower from step 400 (lasting), rank 1 3x
    slower for 40 steps from 900 (comes and goes), rank 2 drifting to 1.4x over steps
    1200-1800 (lasting), rank 3 0.6x from 1500 (faster, lasting).
    """
    rng = np.random.default_rng(1000 + seed)
    speed = np.exp(rng.uniform(np.log(0.7), np.log(1.4), n))
    fixed = rng.uniform(0.05, 0.5, n)
    step = (_A + _C * ROWS_PER_ACTOR) * speed
    a, c = fixed * step, (1 - fixed) * step / ROWS_PER_ACTOR
    two = np.where(rng.random(n) < 0.25, 0.15, 0.0)
    caps: list[int | None] = [None] * n
    for rank in rng.choice(np.arange(4, n), size=n // 8, replace=False) if n >= 8 else ():
        caps[int(rank)] = int(ROWS_PER_ACTOR * 1.2)
    if n == 2:
        caps[1] = int(2 * ROWS_PER_ACTOR * 0.62)   # the faster-to-be must stop short of its ideal share
    ranks = [0, 1, 2, 3] if n >= 4 else [0, 1, 0, 1][:4]
    at = (lambda step: int(step * steps / 2400))
    changes = (Change(at(400), ranks[0], 2.0), Change(at(900), ranks[1], 3.0, steps=40),
               Change(at(1200), ranks[2], 1.4, ramp=at(600)), Change(at(1500), ranks[3], 0.6))
    return Scenario(case=f"changes-{n}", a=tuple(a), c=tuple(c), batch=ROWS_PER_ACTOR * n, steps=steps,
                    cv=tuple(rng.uniform(0.05, 0.20, n)), spike_p=min(0.01, 0.05 / n), two_speed=tuple(two),
                    changes=changes, caps=tuple(caps), persistent_change=True)


def mlp784_b64(steps: int = 9380) -> Scenario:
    """784-128-10 at batch 64 (ten epochs of 60,000 rows): one actor 92K samples/s, two 25K.

    Compute ~0.35 ms per 32 rows and ~0.55 ms per 64 (a = 0.15 ms, c = 6.25 us), the
    optimizer 0.15 ms (one actor: 0.70 ms a step = 92K/s), the collective ~2 ms (two: 2.5 ms =
    25.6K/s). The right answer is one actor.
    """
    return _pair("mlp784-b64", 0.15e-3, 6.25e-6, 64, steps, optimizer_s=0.15e-3)


def mlp784_b64_lent(steps: int = 9380) -> Scenario:
    """``mlp784_b64`` with each actor on a core of its own and the cores of one on standby lent
    to the member: on both cores it computes 1.2x faster (measured with bare PyTorch on the
    2-core box, 1 thread 71-77K samples/s, 2 threads 87-94K), and so does the single actor
    it is judged against, which has both. The right answer is one actor, on both cores."""
    return replace(mlp784_b64(steps), case="mlp784-b64-lent", lent_speedup=1.2)


def mlp64_b32(steps: int = 9000) -> Scenario:
    """64-32-10 at batch 32: one actor 100K samples/s (0.32 ms a step), two 12.9K (2.48 ms).

    Compute 0.25 ms at 32 rows and 0.20 at 16 (a = 0.15 ms, c = 3.1 us), the optimizer
    0.07 ms, the collective ~2.2 ms. The right answer is one actor.
    """
    return _pair("mlp64-b32", 0.15e-3, 3.1e-6, 32, steps, optimizer_s=0.07e-3, collective_s=2.2e-3)


def straggler_b1024(steps: int = 600) -> Scenario:
    """Batch 1024 with rank 1 a SIMULATED 2x straggler: compute dominates (5.6 ms per 512 rows,
    11.2 for the straggler), the collective ~2 ms. Both should stay, near 2/3 : 1/3."""
    s = _pair("straggler-b1024", 0.5e-3, 10e-6, 1024, steps, optimizer_s=0.5e-3)
    return replace(s, changes=(Change(0, 1, 2.0),), persistent_change=True)


def digits_b64(steps: int = 690) -> Scenario:
    """The README's main job: digits (1,437 train rows), batch 64, 30 epochs, 2 CPU actors.

    A step's compute is mostly fixed cost (0.36 ms at 32 rows: a = 0.3 ms, c = 2 us), and one
    actor runs ~0.2 ms slower than the other, which one changing with the cores' load (here
    every 115 steps); noise 15% CV; the collective ~2 ms.
    """
    s = _pair("digits-b64", 0.3e-3, 2e-6, 64, steps, optimizer_s=0.1e-3, cv=0.15)
    flips = tuple(Change(start, (start // 115) % 2, 1.5, steps=115) for start in range(0, steps, 115))
    return replace(s, changes=flips)


def digits_b64_lent(steps: int = 690) -> Scenario:
    """``digits_b64`` with each actor on a core of its own and the cores of one on standby lent
    to the member, which computes 1.3x *slower* on both (bare PyTorch, 64-128-10 at batch 64
    on the 2-core box: 1 thread 119-132K samples/s, 2 threads 92-97K). The right answer is
    one actor on its own core, as fast as the best single actor (one on its own core too)."""
    return replace(digits_b64(steps), case="digits-b64-lent", lent_speedup=1 / 1.3)


def pair_slowed_b256(steps: int = 1500) -> Scenario:
    """Two actors at batch 256 (0.5 ms + 10 us a row, a 1.2 ms collective, regroups of 20 ms)
    until rank 1 becomes 2x slower at step 300: the pair's best split then runs 3.7 ms a step
    and rank 0 alone 3.3, so standby saves about a tenth of a step. A small saving against the
    steps a regroup replays when cut short: whether waiting for the boundary pays depends on
    the window and the snapshots."""
    s = _pair("pair-slowed-b256", 0.5e-3, 10e-6, 256, steps, optimizer_s=0.2e-3, collective_s=1.2e-3)
    return replace(s, regroup_s=0.02, changes=(Change(300, 1, 2.0),), persistent_change=True)


def _pair(case: str, a: float, c: float, batch: int, steps: int, *, optimizer_s: float,
          collective_s: float = 2.0e-3, cv: float = 0.10) -> Scenario:
    return Scenario(case=case, a=(a, a), c=(c, c), batch=batch, steps=steps, cv=(cv, cv), spike_p=0.01,
                    latency_s=collective_s - 2 * 50e-6, per_member_s=50e-6, optimizer_s=optimizer_s,
                    regroup_s=0.3)




def far_slow_link(steps: int = 1500) -> Scenario:
    """Two actors on the head and one behind a slow link (4 ms an all-reduce: a 20 KB gradient
    over 100 Mbit/s, latency included), batch 512 (0.5 ms + 10 us a row, the head's own
    all-reduce ~1 ms): the far one's rows save 0.85 ms a step, its link costs everyone 4. The
    right answer is the two on the head (4.3 ms a step, against 7.5 with all three and 5.8
    with one)."""
    return _hosts("far-slow-link", 512, steps, hosts=(0, 0, 1), link_s=(0.0, 4e-3))


def far_slower_link(steps: int = 1500) -> Scenario:
    """``far_slow_link`` behind a link four times slower (16 ms: a 100 KB gradient over
    100 Mbit/s). All three cost 19.5 ms a step, so the rebalancer first goes to one actor
    (bounded: 5.8 ms), having never seen the head's own all-reduce; only trying the pair
    again shows it (4.3 ms)."""
    return _hosts("far-slower-link", 512, steps, hosts=(0, 0, 1), link_s=(0.0, 16e-3))


def far_fast_link(steps: int = 1500) -> Scenario:
    """``far_slow_link`` with a fast link (0.3 ms) and a compute-bound batch of 1024: all three
    stay (5.5 ms a step, against 6.8 with the two on the head)."""
    return _hosts("far-fast-link", 1024, steps, hosts=(0, 0, 1), link_s=(0.0, 0.3e-3))


def far_pair(steps: int = 1500) -> Scenario:
    """One actor on the head and one on another host behind a 2 ms link, batch 1024: the far
    one's rows pay for its link, and both stay (8.8 ms a step, against 10.9 alone)."""
    return _hosts("far-pair", 1024, steps, hosts=(0, 1), link_s=(0.0, 2e-3))


def _hosts(case: str, batch: int, steps: int, *, hosts: tuple[int, ...], link_s: tuple[float, ...]) -> Scenario:
    n = len(hosts)
    return Scenario(case=case, a=(_A,) * n, c=(_C,) * n, batch=batch, steps=steps, cv=(0.10,) * n, spike_p=0.01,
                    latency_s=0.9e-3, per_member_s=50e-6, optimizer_s=0.2e-3, hosts=hosts, link_s=link_s,
                    regroup_s=0.3)
