"""The broker's running totals: histograms of committed steps, and counts across jobs."""

import pytest

from leptonrt.broker.tally import Histogram, Tally
from leptonrt.messages import StepStat

from tests.broker.test_job import started


def _stat(step, rows, compute_s, step_s, collective_s):
    return StepStat(step=step, rows=rows, compute_s=compute_s, step_s=step_s, simulated_s=0.0,
                    collective_s=collective_s)


def test_a_value_on_a_bound_counts_in_that_bounds_bucket_and_one_above_every_bound_in_the_last():
    histogram = Histogram(bounds=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    stats = histogram.statistics()
    assert stats.counts == (2, 2, 1) and stats.count == 5 and stats.total == pytest.approx(8.65)


def test_a_committed_step_counts_its_rows_its_slowest_wall_its_quickest_sum_and_each_ranks_compute():
    tally = Tally()
    tally.committed({0: _stat(3, 40, 0.010, 0.030, 0.015), 1: _stat(3, 24, 0.004, 0.031, 0.020)})
    tally.committed({})   # nothing reported: nothing counted
    totals = tally.statistics()
    assert (totals.steps, totals.samples) == (1, 64)
    assert totals.step_seconds.total == 0.031 and totals.allreduce_seconds.total == 0.015
    assert totals.compute_seconds == (0.010, 0.004)


def test_one_tally_shared_by_two_jobs_adds_up_both_and_counts_a_losss_regroup_and_replay():
    core, cluster, _ = started(2, epochs=4, snapshot_every=4)
    cluster.everyone(0, 1, 2, 3, 4)
    cluster.report(0, 5, 6)
    core.exited("a1", "killed by SIGKILL", now=2.0)   # rewinds to step 4: steps 4, 5 and 6 again
    second, other, _ = started(2, tally=core.tally)
    other.everyone(0, 1)
    totals = core.tally.statistics()
    assert totals.steps == 5 + 2 and second.tally is core.tally
    assert totals.samples == 7 * 4   # every step of these jobs trains a full batch of 4
    assert (totals.regroups, totals.replayed_steps) == (1, 3)
    assert totals.step_seconds.count == totals.allreduce_seconds.count == 7
