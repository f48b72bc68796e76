"""What a broker has trained over its life: counts and histograms of committed steps.

The job core tells its ``Tally`` of every step it commits and every regroup; the broker
keeps one tally across all its jobs, so the numbers only grow, as Prometheus counters
must. A histogram keeps bucket counts and a sum, never the observations themselves, so
its size is fixed however long the broker runs.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left

from ..messages import StepStat
from .stats import HistogramStats, Totals

# upper bounds in seconds, about three per decade: from a tiny model's step on a CPU core
# (a tenth of a millisecond) to a large one's on a slow device (ten seconds)
STEP_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations by bucket, and their sum."""

    def __init__(self, bounds: tuple[float, ...] = STEP_BOUNDS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket ("le")
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def statistics(self) -> HistogramStats:
        return HistogramStats(bounds=self.bounds, counts=tuple(self.counts), total=self.total)


class Tally:
    """The broker's running totals (see ``stats.Totals``)."""

    def __init__(self) -> None:
        self.steps = self.samples = self.regroups = self.replayed_steps = 0
        self.step_seconds, self.allreduce_seconds = Histogram(), Histogram()
        self.compute_seconds: list[float] = []   # by rank

    def committed(self, stats: dict[int, StepStat]) -> None:
        """One step every member reported (``stats``: rank -> its report of the step)."""
        if not stats:
            return
        self.steps += 1
        self.samples += sum(s.rows for s in stats.values())
        # the step took as long as its slowest member; the sum itself cost what the member
        # that arrived last waited in it (the others' extra time there is waiting for it)
        self.step_seconds.observe(max(s.step_s for s in stats.values()))
        self.allreduce_seconds.observe(min(s.collective_s for s in stats.values()))
        for rank, stat in stats.items():
            while len(self.compute_seconds) <= rank:
                self.compute_seconds.append(0.0)
            self.compute_seconds[rank] += stat.compute_s

    def regrouped(self, replayed: int) -> None:
        """A group re-formed, and ``replayed`` steps will be trained again."""
        self.regroups += 1
        self.replayed_steps += replayed

    def statistics(self) -> Totals:
        return Totals(steps=self.steps, samples=self.samples, regroups=self.regroups,
                      replayed_steps=self.replayed_steps, step_seconds=self.step_seconds.statistics(),
                      allreduce_seconds=self.allreduce_seconds.statistics(),
                      compute_seconds=tuple(self.compute_seconds))
