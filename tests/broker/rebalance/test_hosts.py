"""Actors on other hosts: the collective's true cost crosses the slowest link the group spans."""

import numpy as np

from leptonrt.broker.rebalance import scenarios
from leptonrt.broker.rebalance.simulate import Scenario, _Oracle, _Truth


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
