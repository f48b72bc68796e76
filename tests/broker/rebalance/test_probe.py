"""A move that cannot lose, for the change of speed the bound cannot act on."""

import numpy as np

from leptonrt.broker.rebalance import Move, Rebalancer
from leptonrt.broker.rebalance.probe import safe_fractions, worst_finish


def theta(levels, rows, fixed_share=0.3, sd=0.0):
    rows = np.asarray(rows, dtype=float)
    levels = np.asarray(levels, dtype=float)
    a = fixed_share * levels
    c = (1 - fixed_share) * levels / rows
    return np.vstack([a, c, np.full(len(rows), sd ** 2), np.zeros(len(rows)), np.zeros(len(rows))])


def test_the_worst_case_scales_a_receiver_by_its_rows_and_leaves_a_giver_as_it_is():
    t = theta([5e-3, 10e-3], [512, 512])
    worst = worst_finish(t, np.array([512, 512]), np.array([768, 256]), z=0.0)
    assert np.allclose(worst, [7.5e-3, 10e-3])


def test_only_moves_that_cannot_make_the_step_slower_are_safe():
    rows = np.array([512.0, 512.0])
    # rank 1 is 2x slower: every way to equal times keeps rank 0 under 10 ms even if all per row
    assert safe_fractions(theta([5e-3, 10e-3], rows), rows, np.array([683.0, 341.0]), 10e-3, z=2.0) == [1.0, 0.5, 0.25]
    # 1.2x slower: the whole way could overload rank 0 (if its time were all per row); a quarter cannot
    assert safe_fractions(theta([10e-3, 12e-3], rows), rows, np.array([640.0, 384.0]), 12e-3, z=0.0) == [0.5, 0.25]


def _answer(seed: int, cv: float = 0.4) -> int | None:
    """Steps from a 2x slowdown of rank 1 (after 300 even steps) to the first move, or None."""
    rng = np.random.default_rng(seed)
    reb, rows = Rebalancer(2, 1024, align=8), [512, 512]
    for t in range(400):
        speed = (1.0, 1.0 if t < 300 else 2.0)
        for rank in (0, 1):
            compute = speed[rank] * (1.6e-3 + 7.6e-6 * rows[rank]) * max(1 + cv * rng.standard_normal(), 0.3)
            reb.observe(rank, rows=rows[rank], compute_s=compute, collective_s=1e-4, step_s=compute + 1e-4,
                        group_size=2)
        decision = reb.decide(rows, [0, 1], steps_left=1000) if t >= 300 else None   # asked from then on
        if decision is not None:
            assert isinstance(decision, Move) and decision.split[0] > 512, decision
            return t - 300
    return None


def test_a_2x_slowdown_after_a_long_even_stretch_is_answered_though_rows_never_varied():
    """The deadlock this breaks: the same rows since the start, so each slope is the prior's
    guess; under noisy steps its doubt outgrows it, and then the bound shows no move of any
    size to pay, however clear the slowdown (without the probe, 3 of these 20 seeds never
    moved; with it, all do, within 6 to 22 steps under 40% noise: the probe waits until the
    slowdown's level is known beyond doubt)."""
    answers = [_answer(seed) for seed in range(20)]
    assert all(a is not None and a <= 30 for a in answers), answers
