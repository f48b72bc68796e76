"""Actors on other hosts: the collective crosses the slowest link the group spans, in truth and
as the model learns it; the membership rule leaves out a far host only when it is not worth it."""

import math
from dataclasses import replace

import numpy as np
import pytest

from leptonrt.broker.rebalance import CollectiveModel, scenarios
from leptonrt.broker.rebalance.simulate import Scenario, _Oracle, _Truth, simulate


def _truth(s: Scenario) -> _Truth:
    return _Truth(s, np.random.default_rng(0))


def test_a_group_pays_the_slowest_link_of_the_hosts_it_spans_and_none_on_one_host():
    s = Scenario(case="three-hosts", a=(1e-3,) * 4, c=(0.0,) * 4, batch=4, steps=1, cv=(0.0,) * 4,
                 latency_s=1e-3, per_member_s=0.0, hosts=(0, 0, 1, 2), link_s=(0.0, 5e-3, 2e-3))
    truth = _truth(s)
    assert truth.collective(np.array([0, 1])) == 1e-3
    assert truth.collective(np.array([0, 2])) == 1e-3 + 5e-3
    assert truth.collective(np.array([0, 1, 2, 3])) == 1e-3 + 5e-3    # the ring runs at its slowest link
    assert truth.collective(np.array([0, 3])) == 1e-3 + 2e-3
    assert truth.collective(np.array([2])) == 0.0


def test_the_oracle_leaves_out_a_far_host_only_when_its_rows_do_not_pay_for_its_link():
    for build, group in ((scenarios.far_slow_link, [0, 1]), (scenarios.far_fast_link, [0, 1, 2]),
                         (scenarios.far_pair, [0, 1])):
        s = build()
        oracle = _Oracle(_truth(s), np.full(len(s.a), s.batch))
        assert oracle.best(np.ones(len(s.a)))[0].tolist() == group, s.case


def _fed(model, groups, steps=100):
    for _ in range(steps):
        for members, seconds in groups:
            model.update(members, seconds)
    return model


HOSTS = ["head", "head", "far", "other"]


def test_a_hosts_link_is_learnt_from_the_groups_with_and_without_it():
    coll = _fed(CollectiveModel(hosts=HOSTS), [([0, 1, 2], 5e-3), ([0, 1], 1e-3)])
    # local(3) = 1 ms * log2(3), so the far link is 5 - 1.58 ms; a pair across costs local(2) + link
    mean, sd = coll.predict([0, 2])
    assert mean == pytest.approx(1e-3 + 5e-3 - 1e-3 * math.log2(3), rel=1e-6)
    assert sd < 0.5e-3
    assert coll.predict([0, 1]) == pytest.approx((1e-3, 0.0), abs=1e-9)     # seen: as it was


def test_without_a_group_on_one_host_an_unseen_composition_is_a_wide_guess():
    coll = _fed(CollectiveModel(hosts=HOSTS), [([0, 1, 2], 5e-3)])
    mean, sd = coll.predict([0, 1])             # how much of the 5 ms is the head's own is unknown
    assert mean == pytest.approx(0.5 * 5e-3 / math.log2(3), rel=1e-6) and sd >= mean
    assert coll.predict([0, 3]) is None          # a host never seen across hosts: nothing to go on


def test_a_span_never_seen_lies_between_what_its_parts_tell():
    coll = _fed(CollectiveModel(hosts=HOSTS), [([0, 1], 1e-3), ([0, 2], 3e-3), ([0, 3], 7e-3)])
    mean, sd = coll.predict([0, 2, 3])           # the ring runs at its slowest link: other's 6 ms
    assert mean == pytest.approx(1e-3 * math.log2(3) + 6e-3, rel=1e-6) and sd < 0.5e-3


def test_ranks_all_on_one_host_give_exactly_the_verdict_of_no_hosts():
    for plain in (scenarios.changes_case(2, 0, steps=600), scenarios.mlp784_b64(steps=600)):
        assert simulate(replace(plain, hosts=(0, 0)), 0) == simulate(plain, 0)


def test_a_far_actor_whose_rows_do_not_pay_for_its_link_goes_to_standby():
    verdict = simulate(scenarios.far_slow_link(steps=600), seed=0)
    assert verdict.members_final == (0, 1) and verdict.speed_vs_oracle >= 0.95


def test_behind_a_link_so_slow_that_one_actor_beats_all_three_the_pair_on_the_head_is_tried_and_kept():
    for seed in range(2):
        verdict = simulate(scenarios.far_slower_link(steps=600), seed=seed)
        assert verdict.members_final == (0, 1) and verdict.speed_vs_oracle >= 0.95


def test_a_compute_bound_job_keeps_a_far_actor_behind_a_fast_link():
    verdict = simulate(scenarios.far_fast_link(steps=600), seed=0)
    assert verdict.members_final == (0, 1, 2) and verdict.speed_vs_oracle >= 0.95


def test_a_pair_across_hosts_stays_together_when_the_far_rows_pay_for_the_link():
    verdict = simulate(scenarios.far_pair(steps=600), seed=0)
    assert verdict.members_final == (0, 1) and verdict.speed_vs_oracle >= 0.95
