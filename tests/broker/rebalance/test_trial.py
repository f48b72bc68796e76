"""Trials of a smaller group: run as long as their verdict needs, kept when faster, undone
when slower, and not repeated until a change of speed."""

import numpy as np

from leptonrt.broker.rebalance.trial import MAX_JUDGED, MIN_JUDGED, Trials


def walls(mean: float, cv: float, n: int = 64, seed: int = 0) -> list[float]:
    return (mean * (1 + cv * np.random.default_rng(seed).standard_normal(n))).tolist()


def test_a_saving_lost_in_the_noise_is_not_tried_and_a_clear_one_is_judged_on_few_steps():
    noisy = walls(1e-3, 0.2)
    assert Trials.judged_steps(noisy, 1e-6) is None              # 0.1% of a step under 20% CV: chance
    assert Trials.judged_steps(noisy, -1e-4) is None             # nothing expected at all
    assert Trials.judged_steps(noisy, 5e-4) == MIN_JUDGED        # half a step: plain to see
    middling = Trials.judged_steps(noisy, 1.2e-4)
    assert middling is not None and MIN_JUDGED < middling <= MAX_JUDGED
    assert Trials.judged_steps(noisy[:10], 5e-4) is None         # too little measured to compare with


def test_a_faster_group_is_kept_a_slower_one_undone_and_not_retried_until_a_change():
    trials = Trials()
    before = walls(1e-3, 0.05)
    assert trials.may_try((0,), last_change=None)
    trials.start((0, 1), (32, 32), before, (0,), judged=MIN_JUDGED)
    assert not trials.may_try((0,), last_change=None)            # one at a time
    at_stake = trials.steps_at_stake(MIN_JUDGED)
    faster = before + walls(0.5e-3, 0.05)
    assert trials.judge(faster, (0,), at_stake - 1, 120) is None and trials.running is not None
    assert trials.judge(faster, (0,), at_stake, 121) is None and trials.running is None   # kept
    trials.start((0, 1), (32, 32), before, (1,), judged=MIN_JUDGED)
    undone = trials.judge(before + walls(2e-3, 0.05), (1,), at_stake, 200)
    assert undone is not None and undone.before == (0, 1) and undone.split == (32, 32)
    assert not trials.may_try((1,), last_change=None)
    assert not trials.may_try((1,), last_change=150)             # a change before the verdict
    assert trials.may_try((1,), last_change=250)                 # ...and one since


def test_a_trial_is_judged_on_its_own_group_only():
    trials = Trials()
    before = walls(1e-3, 0.05)
    trials.start((0, 1), (32, 32), before, (0,), judged=MIN_JUDGED)
    # the group re-forms a window of granted steps after the decision: the old group's walls
    # (however many) are no verdict
    assert trials.judge(before + before, (0, 1), 0, 500) is None and trials.running is not None
    # a loss re-formed another group meanwhile: the trial ends, unjudged and not held against it
    assert trials.judge(before, (1,), 100, 600) is None and trials.running is None
    assert trials.may_try((0,), last_change=None)
