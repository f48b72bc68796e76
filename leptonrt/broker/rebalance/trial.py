"""Trying another group: the one decision the models cannot bound from what they saw.

Actors that share a machine slow each other down (memory bandwidth, caches, the broker's
own work), so measured side by side, an actor looks slower than it is alone, and models fed
only with those measurements can never show that a smaller group would be faster. A
smaller group is therefore *tried* when the models' expected saving over the horizon
exceeds what a failed trial can cost at most: going there and coming back, two regroups
and a move. A larger one (an actor back from standby) is tried when it would save that much
at the best case of a collective never measured (a group that only ever crossed a far
host's link never showed the head's own all-reduce). Its measured step time then decides:
kept if it beats the group's before it, undone otherwise. A group tried and undone is not tried again until a change of speed is
detected among the ranks (the conditions it lost under no longer hold). A trial runs as
many steps as its verdict needs to tell the expected saving from the noise of the walls
(``judged_steps``); one that would need more than MAX_JUDGED is not run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, median

FRESH_STEPS = 4       # steps after the regroup left out of the verdict (warming up)
MIN_JUDGED = 8        # the fewest steps a verdict is read from, on each side
MAX_JUDGED = 32       # the most (half the walls kept: the steps before it are the other side)
CONFIDENCE = 0.95     # probability that a real saving of the expected size is read as one


@dataclass(frozen=True)
class Trial:
    before: tuple[int, ...]        # the members before it
    split: tuple[int, ...]         # their split (rows per rank)
    before_s: float                # the median wall time of their last ``judged`` steps
    group: tuple[int, ...]         # the members tried
    judged: int                    # steps its verdict is read from


class Trials:
    """The trial under way, if any, and the groups tried and undone."""

    def __init__(self) -> None:
        self.running: Trial | None = None
        self._undone: dict[tuple[int, ...], int] = {}   # group -> complete steps seen when it was undone

    def may_try(self, group: tuple[int, ...], last_change: int | None) -> bool:
        """Not while one runs, nor a group undone since the last change of speed."""
        undone = self._undone.get(group)
        return self.running is None and (undone is None or (last_change is not None and last_change > undone))

    @staticmethod
    def judged_steps(walls: list[float], saving_s: float) -> int | None:
        """How many steps on each side a verdict needs to tell a saving of ``saving_s`` per step
        from noise at CONFIDENCE; None when more than MAX_JUDGED (the verdict would be chance).
        A median of n walls has a standard error of about 1.25 sigma / sqrt(n), the difference
        of two such medians sqrt(2) times that; sigma comes from the walls' median absolute
        deviation, so that a few spikes do not count."""
        if len(walls) < 2 * MIN_JUDGED or saving_s <= 0:
            return None
        mid = median(walls)
        sigma = 1.4826 * median(abs(w - mid) for w in walls)
        n = 2.0 * (NormalDist().inv_cdf(CONFIDENCE) * 1.2533 * sigma / saving_s) ** 2
        return None if n > MAX_JUDGED else max(MIN_JUDGED, math.ceil(n))

    def steps_at_stake(self, judged: int) -> int:
        """Steps a trial of ``judged`` steps runs on the group tried, at most."""
        return FRESH_STEPS + judged

    def start(self, before: tuple[int, ...], split: tuple[int, ...], walls: list[float], group: tuple[int, ...],
              judged: int) -> None:
        self.running = Trial(before, split, median(walls[-judged:]), group, judged)

    def judge(self, walls: list[float], members: tuple[int, ...], formed: int, steps: int) -> Trial | None:
        """The trial to undo, once its group has run long enough and was measured slower than
        the one before it; None otherwise (a faster group is kept). ``members``: the group now,
        and ``formed``: the complete steps it has run. The group re-forms at a step boundary, a
        window of granted steps after the decision: until then the walls are the old group's.
        A group that is neither (a loss re-formed it meanwhile) ends the trial unjudged."""
        trial = self.running
        if trial is None or members == trial.before:
            return None
        if members != trial.group:
            self.running = None
            return None
        if formed < self.steps_at_stake(trial.judged):
            return None
        self.running = None
        if median(walls[-trial.judged:]) < trial.before_s:
            return None
        self._undone[trial.group] = steps
        return trial
