"""Decisions the rebalancer takes to learn what its models cannot bound yet: a probe (part of
a move toward a split that extrapolates, as far as it cannot make a step slower) and a trial
(a smaller or a larger group, measured before it is kept and undone if its walls are slower).
A mixin of ``policy.Rebalancer``: the same models, the same rule of saving against cost."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .bound import z_above
from .decisions import Regroup
from .leavers import leavers
from .probe import safe_fractions, worst_finish
from .split import best_split, finish_times, full_split, round_split


@dataclass
class Candidate:
    members: np.ndarray           # ranks, ascending
    rows: np.ndarray              # rows per member
    saving: float = -math.inf     # bounded saving per step (s)
    cost: float = 0.0             # cost of acting (s)
    horizon: int = 0              # steps it is weighed over
    reason: str = ""              # what to add to the decision's reason
    expected: float = 0.0         # expected saving per step (s), where it differs from the bound
    declined: frozenset[int] | None = None   # members to run on their own cores only (None: as now)

    def net(self) -> float:
        """Seconds it is expected to save at least, over its horizon, net of its cost."""
        return self.horizon * self.saving - self.cost


class Learning:
    """Probes and trials (see the module's docstring)."""

    def _probe(self, ranks, rows, room, theta, base, target, horizon) -> Candidate | None:
        """After a change of speed the bound cannot act on, the largest move toward the
        target that cannot make a step slower (see ``probe.py``), if its expected saving over
        the horizon beats a move's cost."""
        if not self._m.news or not any(r in self._m.news for r in ranks.tolist()):
            return None
        z = z_above((1.0 - self.config.confidence) / 2 / len(ranks))
        cost = self._m.move_cost_s()
        # the slowest must be slower than each receiver beyond doubt: levels, not slopes, are
        # what the steps measured well (a false alarm of the change test leaves a level
        # known only from its few steps, and no probe)
        behind, margin = self._behind(rows, theta, base, z)
        clear = behind > margin
        for step in safe_fractions(theta, rows, target, base.mean, z):
            new = round_split(rows + step * (target - rows), theta[0], theta[1], room, self.batch, self.align)
            receivers = new > rows
            worst = worst_finish(theta, rows, new, z)
            expected = base.mean - float(np.max(finish_times(theta[0], theta[1], new)))
            if np.any(receivers) and np.all(clear[receivers]) and np.all(worst[receivers] <= base.mean) \
                    and horizon * expected > cost:
                return Candidate(ranks, new, expected, cost, horizon)
        return None

    def _trial(self, ranks, rows, room, theta, base, target, horizon, stale) -> Candidate | None:
        """A group to try (see ``trial.py``), by a saving the walls can show, and by more over
        the horizon than a failed trial costs; of those, the one expected to save most net of
        that. A smaller group, without the members ``leavers`` names, when the models expect
        their place in the collective to cost more than their rows save; or a larger one
        (``_trial_with``)."""
        without = leavers(ranks, rows, target, theta, self._hosts, self._m.collective) if len(ranks) >= 2 else []
        tried = [c for c in [self._trial_without(ranks, rows, room, base, horizon, leave) for leave in without]
                 + [self._trial_with(ranks, rows, room, base, horizon, stale)] if c is not None]
        if not tried:
            return None
        chosen, judged = max(tried, key=lambda cj: cj[0].net())
        self._trials.start(tuple(ranks.tolist()), tuple(rows.tolist()), list(self._m.walls),
                           tuple(chosen.members.tolist()), judged)
        return chosen

    def _trial_without(self, ranks, rows, room, base, horizon, leave) -> tuple[Candidate, int] | None:
        """The trial of the group without the members at positions ``leave``, and the steps its
        verdict is read from; None when it does not qualify (see ``_trial``)."""
        group, group_room = np.delete(ranks, leave), np.delete(room, leave)
        collective = self._collective_saving(ranks, group)
        key = tuple(group.tolist())
        if collective is None or group_room.sum() < self.batch or \
                not self._trials.may_try(key, self._m.last_change(ranks.tolist())):
            return None
        there_and_back = 2 * self._m.regroup_cost_s() + self._m.move_cost_s()
        # the most it could save is the collective's part, over the whole horizon: when that
        # does not pay for going there and back, nothing below can (and it costs a split)
        if horizon * collective[0] <= there_and_back:
            return None
        group_theta = self._view(group)
        new = best_split(group_theta[0], group_theta[1], group_room, self.batch, self.align)
        # what leaving out the member saves whoever is slow: the collective's cost, less the
        # compute its rows add to the others (a slow member is the bounded rule's business)
        now = float(np.max(finish_times(group_theta[0], group_theta[1], np.delete(rows, leave))))
        finish = finish_times(group_theta[0], group_theta[1], new)
        expected = collective[0] - (float(np.max(finish)) - now)
        return self._as_trial(ranks, group, new, expected, there_and_back, base, horizon)

    def _trial_with(self, ranks, rows, room, base, horizon, stale) -> tuple[Candidate, int] | None:
        """The trial of the group with the actor on standby that ``_readmission`` names, weighed
        at the collective's best case (the lower confidence bound of what it adds): what only
        a trial can teach is a collective never measured, e.g. the head's own all-reduce once
        a far host's link was all the group ever showed. Measured once, its sd is small and
        the best case is the case. (A group tried and undone is not tried again until a
        change of speed: the next actor on standby may be.)"""
        def may_try(rank: int) -> bool:
            grown = sorted([*ranks.tolist(), rank])
            return self._trials.may_try(tuple(grown), self._m.last_change(grown))

        back = self._readmission(ranks, stale, may_try) if len(ranks) < self.world else None
        collective = None if back is None else self._collective_saving(ranks, np.append(ranks, back))
        if collective is None:
            return None
        added = max(-collective[0] - z_above((1.0 - self.config.confidence) / 2) * math.sqrt(collective[1]), 0.0)
        there_and_back = 2 * self._m.regroup_cost_s() + self._m.move_cost_s()
        if horizon * (base.mean - added) <= there_and_back:
            return None   # not even every second of the slowest's compute saved could pay
        at = int(np.searchsorted(ranks, back))
        group, group_room = np.insert(ranks, at, back), np.insert(room, at, self._caps[back])
        if group_room.sum() < self.batch:
            return None
        group_theta = self._view(group)
        new = best_split(group_theta[0], group_theta[1], group_room, self.batch, self.align)
        best_case = base.mean - float(np.max(finish_times(group_theta[0], group_theta[1], new))) - added
        return self._as_trial(ranks, group, new, best_case, there_and_back, base, horizon)

    def _as_trial(self, ranks, group, new, saving, there_and_back, base, horizon) -> tuple[Candidate, int] | None:
        """The trial of ``group`` at split ``new``, expected to save ``saving`` a step, and the
        steps its verdict is read from; None when the walls could not show that saving, not
        yet from walls of the group as it is now, or when it would not pay for a failed try."""
        judged = self._trials.judged_steps(list(self._m.walls), saving)
        if judged is None or self._m.steady(ranks.tolist()) < self._trials.steps_at_stake(judged):
            return None
        # what a failed trial costs at most: there and back, and its steps as much slower
        # as they were expected to be faster
        worst = there_and_back + self._trials.steps_at_stake(judged) * saving
        lasting = self._lasting(ranks, group, base, horizon)
        if lasting * saving <= worst:
            return None
        return Candidate(group, new, saving, worst, lasting, reason=" (a trial: measured before it is kept)",
                         expected=saving), judged

    def _undo_trial(self, trial_before) -> Regroup:
        members = np.array(trial_before.before, dtype=np.int64)
        rows = np.array(trial_before.split, dtype=np.int64)
        self.regroups += 1
        self._m.acted(members, rows)
        left, joined = set(trial_before.before) - set(trial_before.group), set(trial_before.group) - set(trial_before.before)
        reason = (f"rank(s) {','.join(str(r) for r in sorted(left))} re-admitted: the smaller group was measured slower"
                  if left else f"rank(s) {','.join(str(r) for r in sorted(joined))} back to standby: the larger group"
                  " was measured slower")
        return Regroup(trial_before.before, full_split(self.world, members, rows), 0.0, 0, self._m.regroup_cost_s(),
                       reason)
