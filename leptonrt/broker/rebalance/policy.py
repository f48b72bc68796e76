"""The rebalancer: one decision rule over the cost models.

Act when the confidence-bounded saving per step, times the steps it will be enjoyed (the
horizon), exceeds the measured cost of acting. Everything the broker can do is weighed by
that rule:

- a Move (a new split in the same group) costs what the first steps at a new split lose
  against the steps after them, measured after every decision (a prior until then);
- a Regroup (an actor to standby, or one re-admitted) costs the wall time of leaving and
  re-forming the group, measured by the broker (a prior until then), plus a move's. It must
  also beat the group's own best split by its cost: an actor goes on standby when what its
  rows save at best is less than what its place in the collective costs everyone, and comes
  back when it would pay.

The bound (see ``bound.py``) is tight where the models know a split well and wide where a
candidate extrapolates, e.g. far from the rows an actor has trained, while its fixed cost was
never told from its cost per row. So a first move may go only a half or a quarter of the way,
and each move teaches the slope; and undoing a move needs evidence (hysteresis). What the
bound cannot act on yet is learnt by probes and trials (``learning.py``).

Where actors on standby lend their cores (``broker.cores``), what a member runs on is a
decision too: a member on lent cores is measured there (a model per thread count), and a
change of Cores that gives them back, or takes them again, is weighed by the same rule, its
saving read from the model of the threads it would run, its cost a move's (the member
changes its threads between two steps; the group is not re-formed).
"""

from __future__ import annotations

import math
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from ..cores import Lending
from .bound import Slowest, bounded_savings, slowest, z_above
from .config import RebalanceConfig
from .decisions import Cores, Move, RankStatistics, RebalanceStatistics, Regroup
from .leavers import leavers
from .measure import Measurements
from .split import (best_split, equalise_measured, finish_times, finish_vars, full_split, round_split,
                    rows_within)
from .lent import LentCores
from .learning import Candidate, Learning
from .trial import Trials

__all__ = ["Cores", "Move", "RankStatistics", "RebalanceConfig", "RebalanceStatistics", "Rebalancer", "Regroup"]


class Rebalancer(Learning, LentCores):
    """Per-actor cost models, the collective's cost, and the one decision rule."""

    def __init__(self, world: int, batch: int, *, align: int = 1,
                 caps: Sequence[int | None] | None = None,
                 config: RebalanceConfig = RebalanceConfig(),
                 lending: Lending | None = None,
                 hosts: Sequence[str] | None = None) -> None:
        # ``lending``: the cores of actors on standby go to the members that have not declined
        # them (``broker.cores``), who run a thread on each; None: every rank's threads fixed.
        # ``hosts``: each rank's host, for the collective's cost by the hosts a group spans
        # (a far host's link costs everyone); None: every rank on this one
        if hosts is not None and len(hosts) != world:
            raise ValueError(f"{len(hosts)} hosts for {world} ranks")
        self.world, self.batch, self.align, self.config = world, batch, align, config
        self._lending = lending if lending is not None and lending.home else None
        # members that run on their own cores only: everyone, until lent cores are tried
        self.declined: frozenset[int] = frozenset(self._lending.home if self._lending is not None else ())
        self._asked: frozenset[int] | None = None     # ...as Cores decided and not yet in force ask
        self._hosts = list(hosts) if hosts is not None else None
        self._m = Measurements(world, config, hosts, lending=self._lending is not None)
        for rank, cores in (self._lending.home.items() if self._lending is not None else ()):
            self._m.configure(rank, len(cores))   # each starts on its own cores
        self.set_caps(caps if caps is not None else [None] * world)
        self.moves = self.regroups = 0
        self._trials = Trials()

    def observe(self, rank: int, *, rows: int, compute_s: float, collective_s: float,
                step_s: float, group_size: int) -> None:
        """One step of one member. ``compute_s``: its compute before the collective;
        ``collective_s``: its wall time in the all-reduce (waiting included); ``step_s``: the
        whole step; ``group_size``: members in the group that ran it (1: no collective)."""
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} outside a world of {self.world}")
        self._m.observe(rank, rows, compute_s, collective_s, step_s, group_size)

    def regrouped(self, cost_s: float) -> None:
        """The measured wall cost of the last regroup (s)."""
        self._m.regrouped(cost_s)

    def formed(self, threads: Mapping[int, int], declined: Collection[int] = ()) -> None:
        """From the next step reported on, each rank of ``threads`` runs that many CPU threads
        (its model becomes the one of them), the ranks ``declined`` taking no lent cores: a
        group formed, or Cores decided came into force."""
        moved = [rank for rank, n in threads.items() if self._m.threads[rank] not in (None, n)]
        for rank, n in threads.items():
            self._m.configure(rank, n)
        if moved and self._asked is not None:   # Cores in force (a regroup's cost is its own)
            self._m.cores_changed()
        self.declined, self._asked = frozenset(declined), None

    def _view(self, group: np.ndarray, declined: frozenset[int] | None = None) -> np.ndarray:
        """The members of a candidate ``group`` as they would run in it (with ``declined``, by
        default the ranks that decline lent cores now)."""
        if self._lending is None:
            return self._m.view(group)
        declined = self.declined if declined is None else declined
        return self._m.view(group, self._lending.threads(group.tolist(), declined=declined))

    def set_caps(self, caps: Sequence[int | None]) -> None:
        """Rows that fit on each device (None: not tracked; 0: never a member)."""
        if len(caps) != self.world:
            raise ValueError(f"{len(caps)} caps for {self.world} ranks")
        self._caps = np.array([self.batch if cap is None else min(max(int(cap), 0), self.batch)
                               for cap in caps], dtype=np.int64)

    def best(self, members: Sequence[int]) -> tuple[int, ...] | None:
        """The split for ``members`` that equalises predicted finish times, with no hysteresis
        (after a loss or a rejoin); None while some member was never measured."""
        ranks = np.array(sorted(members), dtype=np.int64)
        caps = self._caps[ranks]
        if not self._m.measured()[ranks].all() or caps.sum() < self.batch:
            return None
        theta = self._view(ranks)
        return full_split(self.world, ranks, best_split(theta[0], theta[1], caps, self.batch, self.align))

    def decide(self, split: Sequence[int], members: Sequence[int], *, steps_left: int,
               stale: frozenset[int] = frozenset()) -> Move | Regroup | Cores | None:
        """A Move, a Regroup, Cores, or None to keep the current split, group and cores. ``split`` is the one
        last decided: until the members' latest steps show it, None. ``stale``: ranks not heard
        from lately (never given more rows, never re-admitted)."""
        ranks = np.array(sorted(members), dtype=np.int64)
        rows = np.asarray(split, dtype=np.int64)[ranks]
        if not self._m.shown(ranks, rows):
            return None
        horizon = min(self.config.horizon, steps_left)
        if np.any(self._caps[ranks] == 0) or np.any(rows > self._caps[ranks]):
            return self._forced(ranks, horizon)
        room = self._room(ranks, rows, stale)
        if horizon <= 0 or room.sum() < self.batch:
            return None
        undo = self._trials.judge(list(self._m.walls), tuple(ranks.tolist()), self._m.steps - self._m.group_since,
                                  self._m.steps)
        if undo is not None:   # the smaller group was measured slower: the old one comes back
            return self._undo_trial(undo)
        theta = self._m.view(ranks)
        base = slowest(ranks, theta, rows)
        target = equalise_measured(theta[0], theta[1], room, self.batch, self.align)
        chosen = self._best_move(ranks, rows, room, theta, base, target, horizon)
        if self._trials.running is None:   # (a trial is judged by its measurements alone)
            regroup = self._best_regroup(ranks, rows, room, theta, base, target, horizon, stale)
            if regroup is not None and regroup.net() > chosen.net():
                chosen = regroup
            cores = self._best_cores(ranks, rows, base, horizon)
            if cores is not None and cores.net() > chosen.net():
                chosen = cores
        if chosen.net() <= 0:
            chosen = self._probe(ranks, rows, room, theta, base, target, horizon) \
                or self._trial(ranks, rows, room, theta, base, target, horizon, stale)
            if chosen is None:
                return None
        return self._emit(chosen, ranks, rows, theta)

    def _room(self, ranks: np.ndarray, rows: np.ndarray, stale: frozenset[int]) -> np.ndarray:
        """The most rows each member may be given: its cap, or no more than now for a stale
        member (a silent actor's old figures earn it nothing) and for one never measured."""
        held = ~self._m.measured()[ranks]
        if stale:
            held |= np.isin(ranks, np.fromiter(stale, dtype=np.int64, count=len(stale)))
        return np.where(held, np.minimum(self._caps[ranks], rows), self._caps[ranks])

    def _best_move(self, ranks, rows, room, theta, base, target, horizon) -> Candidate:
        """The split within the group with the largest bounded saving, among the one that
        equalises predicted times, the one that equalises them with every actor that might be
        the slowest counted as slow as the slowest, and a half or a quarter of the way to
        either (weighed real-valued first, then the best rounded and weighed again)."""
        robust = equalise_measured(theta[0] + self._doubt(ranks, rows, theta, base), theta[1], room,
                                   self.batch, self.align)
        steps = np.array([[1.0], [0.5], [0.25]])
        real = np.vstack([rows + steps * (target - rows), rows + steps * (robust - rows)])
        savings = bounded_savings(base, ranks, theta, real, rows, self.config.confidence)
        k, cost = int(np.argmax(savings)), self._m.move_cost_s()
        if horizon * savings[k] <= cost:
            return Candidate(ranks, rows, float(savings[k]), cost, horizon)
        new = round_split(real[k], theta[0], theta[1], room, self.batch, self.align)
        saving = float(bounded_savings(base, ranks, theta, new, rows, self.config.confidence)[0])
        return Candidate(ranks, new, saving if not np.array_equal(new, rows) else -math.inf, cost, horizon)

    def _doubt(self, ranks, rows, theta, base) -> np.ndarray:
        """Seconds to add to each actor's time so that a split equalising the sums relieves
        every actor that might be the slowest. A saving is bounded only if each of those sheds
        rows (one that keeps its rows might be what the step waits for): an actor within its
        confidence margin of the slowest is counted as slow as the slowest, and one clear of
        it as slower by its margin (so it is not loaded up to that margin)."""
        behind, margin = self._behind(rows, theta, base, z_above((1.0 - self.config.confidence) / 2 / len(ranks)))
        shift = np.clip(np.minimum(margin, behind), 0.0, None)
        shift[ranks == base.rank] = 0.0
        return shift

    @staticmethod
    def _behind(rows, theta, base: Slowest, z: float) -> tuple[np.ndarray, np.ndarray]:
        """How far each actor's predicted time at ``rows`` is behind the slowest's, and the
        margin (z sd of the difference) it must exceed to be clear of it."""
        return (base.mean - finish_times(theta[0], theta[1], rows),
                z * np.sqrt(base.var + finish_vars(theta, rows)))

    def _best_regroup(self, ranks, rows, room, theta, base, target, horizon, stale) -> Candidate | None:
        """Standby of the member that carries least, the fastest member alone, or the
        re-admission of the fastest actor on standby: the one with the largest bounded saving
        among those that also beat the members' own best split by a regroup's cost."""
        cost, regroup = self._m.regroup_cost_s() + self._m.move_cost_s(), self._m.regroup_cost_s()
        best: Candidate | None = None
        own: Slowest | None = None
        for group, group_room, collective in self._groups(ranks, rows, room, theta, base, target, horizon, cost, stale):
            if group_room.sum() < self.batch:
                continue
            group_theta = self._view(group)
            new = best_split(group_theta[0], group_theta[1], group_room, self.batch, self.align)
            before = rows_within(ranks, rows, group)
            saving = float(bounded_savings(base, group, group_theta, new, before, self.config.confidence,
                                           collective)[0])
            lasting = self._lasting(ranks, group, base, horizon)
            if lasting * saving <= cost or (best is not None and lasting * saving - cost <= best.net()):
                continue
            if own is None:
                best_rows = round_split(target, theta[0], theta[1], room, self.batch, self.align)
                own = slowest(ranks, theta, best_rows)
            beyond = float(bounded_savings(own, group, group_theta, new, rows_within(ranks, best_rows, group),
                                           self.config.confidence, collective)[0])
            if lasting * beyond > regroup:
                expected = base.mean + collective[0] - float(np.max(finish_times(group_theta[0], group_theta[1], new)))
                best = Candidate(group, new, saving, cost, lasting, expected=expected)
        return best

    def _lasting(self, ranks: np.ndarray, group: np.ndarray, base: Slowest, horizon: int) -> int:
        """The steps a regroup is weighed over. A regroup is undone only at a cost, and an
        actor on standby is no longer measured: when what calls for it is a change of speed
        (of an actor that leaves or joins, or of the slowest), it is weighed over no more steps
        than that regime has lasted so far, which it outlasts as often as not. This is
        ski rental: pay the dearer step until it has cost what the regroup costs, then regroup;
        it never pays more than twice the best choice made knowing the regime's length."""
        moved = set(ranks.tolist()) ^ set(group.tolist())
        age = self._m.regime_age(moved | {base.rank})
        return horizon if age is None else max(min(horizon, age), 1)

    def _groups(self, ranks, rows, room, theta, base, target, horizon, cost, stale):
        """The candidate groups worth weighing: (ranks, the rows each may take, what the
        collective saves). At most four (without each of ``leavers``, the fastest alone, one
        re-admitted), and each skipped cheaply when a ceiling on its bound cannot pay: without
        members the others finish no sooner than at the members' own best split (they only gain
        their rows), an actor alone takes its time at the batch, and every term of the bound
        carries the collective's sd."""
        n, floor_z, groups = len(ranks), z_above((1.0 - self.config.confidence) / 2), []

        def collective_if_worth(group: np.ndarray, compute: float) -> tuple[float, float] | None:
            collective = self._collective_saving(ranks, group)
            if collective is None or horizon * (compute + collective[0] - floor_z * math.sqrt(collective[1])) <= cost:
                return None
            return collective

        finish = finish_times(theta[0], theta[1], target)
        for leave in leavers(ranks, rows, target, theta, self._hosts, self._m.collective) if n >= 2 else ():
            stay = np.ones(n, dtype=bool)
            stay[leave] = False
            rest = ranks[stay]
            others = float(np.max(finish[stay]))    # they only gain their rows...
            if self._lending is not None:   # ...and the cores they lend them
                lent = self._view(rest)
                others = min(others, float(np.max(finish_times(lent[0], lent[1], target[stay]))))
            if (collective := collective_if_worth(rest, base.mean - others)) is not None:
                groups.append((rest, room[stay], collective))
        if n >= 3:
            alone = np.where(room >= self.batch, theta[0] + theta[1] * self.batch, np.inf)
            fastest = int(np.argmin(alone))
            if (collective := collective_if_worth(ranks[[fastest]], base.mean - alone[fastest])) is not None:
                groups.append((ranks[[fastest]], room[[fastest]], collective))
        back = self._readmission(ranks, stale)
        if back is not None and (collective := collective_if_worth(np.append(ranks, back), base.mean)) is not None:
            at = int(np.searchsorted(ranks, back))
            groups.append((np.insert(ranks, at, back), np.insert(room, at, self._caps[back]), collective))
        return groups

    def _readmission(self, ranks: np.ndarray, stale: frozenset[int],
                     allowed: Callable[[int], bool] | None = None) -> int | None:
        """The actor on standby predicted fastest at a member's share (measured, not stale, and
        ``allowed`` where given)."""
        outside = self._m.measured() & (self._caps > 0)
        outside[ranks] = False
        if not outside.any():
            return None
        candidates = [r for r in np.flatnonzero(outside).tolist()
                      if r not in stale and (allowed is None or allowed(r))]
        share = self.batch / (len(ranks) + 1)
        return min(candidates, key=lambda r: self._m.predict(r, share)) if candidates else None

    def _collective_saving(self, ranks: np.ndarray, group: np.ndarray) -> tuple[float, float] | None:
        """(mean, variance) of the seconds per step the collective saves going from the group
        ``ranks`` to ``group``."""
        now, then = self._m.collective.predict(ranks), self._m.collective.predict(group)
        if now is None or then is None:
            return None
        return now[0] - then[0], now[1] ** 2 + then[1] ** 2

    def _forced(self, ranks: np.ndarray, horizon: int) -> Move | Regroup | None:
        """The current split breaks a cap, or a member may not be one (cap 0): the best
        feasible split, whatever it saves (one never measured keeps no rows)."""
        keep = ranks[self._caps[ranks] > 0]
        room = np.where(self._m.measured()[keep], self._caps[keep], 0)
        if room.sum() < self.batch:
            return None
        theta = self._m.view(keep)
        new = best_split(theta[0], theta[1], room, self.batch, self.align)
        cost = self._m.move_cost_s()
        self._m.acted(keep, new)
        if len(keep) < len(ranks):
            self.regroups += 1
            return Regroup(tuple(keep.tolist()), full_split(self.world, keep, new), 0.0, horizon,
                           cost + self._m.regroup_cost_s(), "cap 0: not a member")
        self.moves += 1
        return Move(full_split(self.world, keep, new), 0.0, horizon, cost, "over a memory cap")

    def _emit(self, chosen: Candidate, ranks, rows, theta) -> Move | Regroup | Cores:
        split, saving = full_split(self.world, chosen.members, chosen.rows), max(chosen.saving, 0.0)
        if chosen.declined is not None:
            gave, took = sorted(chosen.declined - self.declined), sorted(self.declined - chosen.declined)
            reason = (f"rank {gave[0]} gives back the cores lent to it" if gave else
                      f"rank {took[0]} takes the cores of those on standby")
            self._asked = chosen.declined
            self._m.news.clear()   # (what it costs is measured once it is in force: ``formed``)
            return Cores(tuple(sorted(chosen.declined)), saving, chosen.horizon, chosen.cost, reason + chosen.reason)
        if np.array_equal(chosen.members, ranks):
            reason = self._reason(ranks, rows, theta, chosen.rows)
            self.moves += 1
            self._m.acted(chosen.members, chosen.rows)
            return Move(split, saving, chosen.horizon, chosen.cost, reason)
        left = sorted(set(ranks.tolist()) - set(chosen.members.tolist()))
        joined = sorted(set(chosen.members.tolist()) - set(ranks.tolist()))
        reason = (f"rank {joined[0]} re-admitted" if joined else
                  f"rank {left[0]} to standby" if len(left) == 1 else f"{len(left)} ranks to standby") + chosen.reason
        self.regroups += 1
        self._m.acted(chosen.members, chosen.rows)
        return Regroup(tuple(chosen.members.tolist()), split, saving, chosen.horizon, chosen.cost, reason,
                       max(chosen.expected, saving))

    def _reason(self, ranks, rows, theta, new_rows) -> str:
        inside = set(ranks.tolist())
        changed = [(abs(math.log(k)), r, k) for r, k in self._m.news.items() if r in inside]
        if changed:
            _, rank, k = max(changed)
            return f"rank {rank} {'slowed' if k > 1 else 'sped up'} {max(k, 1 / k):.1f}x"
        before = float(np.max(finish_times(theta[0], theta[1], rows)))
        after = float(np.max(finish_times(theta[0], theta[1], new_rows)))
        return f"imbalance {100 * (before - after) / max(before, 1e-12):.0f}%"

    def statistics(self) -> RebalanceStatistics:
        ranks = []
        for rank, model in enumerate(self._m.models):
            a, c, paa, _, pcc = model.state(self._m.idle(rank)) if model.started else (0.0,) * 5
            ranks.append(RankStatistics(rank, a, c, math.sqrt(max(paa, 0.0)), math.sqrt(max(pcc, 0.0)),
                                        model.noise, model.observations, model.changes))
        collective = tuple((size, mean, sd) for size, mean, sd, _ in self._m.collective.sizes())
        return RebalanceStatistics(tuple(ranks), collective, self.moves, self.regroups, self._m.move_cost_s(),
                                   self._m.regroup_cost_s(), self._m.steps)
