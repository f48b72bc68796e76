"""The simulator's verdicts: the issue's targets, across seeds and sizes (512 in the bench only).

Targets: regret at most 3% of the oracle's step time over a run with persistent changes; a
2x slowdown of one actor answered within 10 steps; at most 1 decision per 10,000 steps of
pure noise (here: none in the shorter runs); the membership cases of the 2-core box.
"""

from dataclasses import replace

import pytest

from leptonrt.broker.rebalance import RebalanceConfig, scenarios
from leptonrt.broker.rebalance.simulate import simulate


@pytest.mark.parametrize("n", [2, 8, 64])
def test_a_2x_slowdown_is_answered_within_10_steps_with_little_regret(n):
    for seed in range(2):
        verdict = simulate(scenarios.slowdown_case(n, steps=400, at=150), seed)
        assert verdict.detect_answered and verdict.detect_steps <= 10
        assert verdict.regret_frac <= 0.03


@pytest.mark.parametrize("n, seed", [(2, 0), (8, 0), (8, 1), (64, 0)])
def test_regret_stays_within_3_percent_through_every_kind_of_trouble(n, seed):
    verdict = simulate(scenarios.changes_case(n, seed), seed)
    assert verdict.persistent_change and verdict.regret_frac <= 0.03
    if verdict.detect_answered is not None:      # with caps, the slowdown may call for nothing
        assert verdict.detect_answered and verdict.detect_steps <= 10


@pytest.mark.parametrize("n", [2, 8, 64])
def test_pure_noise_makes_no_decision(n):
    verdict = simulate(scenarios.noise_case(n, steps=1500), seed=n)
    assert verdict.false_moves_per_10k == 0.0 and verdict.detect_steps is None


def test_a_job_whose_collective_costs_more_than_a_second_actor_saves_runs_on_one():
    for build in (scenarios.mlp784_b64, scenarios.mlp784_b64_lent, scenarios.mlp64_b32):
        verdict = simulate(build(steps=1200), seed=0)
        assert len(verdict.members_final) == 1 and verdict.regroups == 1
        assert verdict.speed_vs_single >= 0.95


def test_lent_cores_are_kept_where_they_are_faster_and_given_back_where_slower():
    faster = simulate(scenarios.mlp784_b64_lent(steps=1200), seed=0)
    assert not set(faster.declined_final) & set(faster.members_final) and faster.speed_vs_single >= 0.95
    # the README job runs 1.3x slower on two threads: the member gives the lent core back, and
    # does within 5% as well as when nothing is lent, over seeds (trying the lent core again,
    # as what was measured there fades, costs a few steps each time; stuck there through a
    # change of speed, more)
    ratios = []
    for seed in range(3):
        slower, unlent = simulate(scenarios.digits_b64_lent(), seed=seed), simulate(scenarios.digits_b64(), seed=seed)
        assert set(slower.members_final) <= set(slower.declined_final) and slower.cores_changes >= 2
        ratios.append(slower.speed_vs_oracle / unlent.speed_vs_oracle)
    assert sorted(ratios)[1] >= 0.95, ratios


@pytest.mark.parametrize("build, window, every", [(scenarios.far_slow_link, 256, 8),
                                                   (scenarios.pair_slowed_b256, 64, 8),
                                                   (scenarios.pair_slowed_b256, 4, 64)])
def test_a_regroup_is_cut_short_exactly_when_replaying_costs_less_than_waiting(build, window, every):
    # steps granted far ahead and frequent snapshots: cutting short pays, for a large saving or
    # a small one; few granted and rare snapshots, for a small saving: waiting for the boundary
    # pays. Each time the rule (``when.py``) does at least as well as the better of always and never.
    base = replace(build(steps=1500), window=window, snapshot_every=every)
    regret = {cut: sum(simulate(replace(base, cut_short=cut), seed=seed).regret_frac for seed in range(3)) / 3
              for cut in (None, True, False)}
    assert regret[None] <= min(regret[True], regret[False]) + 1e-3, regret


def test_a_compute_bound_job_with_a_straggler_keeps_both_near_two_thirds():
    verdict = simulate(scenarios.straggler_b1024(), seed=0)
    assert verdict.members_final == (0, 1)
    assert 0.6 <= verdict.split_final[0] / 1024 <= 0.75


def test_the_readme_job_is_at_least_as_fast_as_a_fixed_even_split():
    verdict = simulate(scenarios.digits_b64(), seed=0)
    assert verdict.speed_vs_even >= 1.0


def test_a_rebalancer_that_never_acts_is_judged_for_it():
    idle = RebalanceConfig(horizon=0)
    verdict = simulate(scenarios.slowdown_case(8, steps=400, at=100), seed=0, config=idle)
    assert verdict.moves == verdict.regroups == 0
    assert verdict.detect_answered is False and verdict.regret_frac > 0.2


def test_a_seed_gives_the_same_verdict_every_time():
    first = simulate(scenarios.slowdown_case(2, steps=300, at=100), seed=3)
    assert simulate(scenarios.slowdown_case(2, steps=300, at=100), seed=3) == first
