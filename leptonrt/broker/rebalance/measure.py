"""What the step reports say: every actor's cost model, the collective's, and the costs of acting.

One report is one member's step. A step is complete once every member of the group that ran
it has reported; from a complete step come the collective's own cost (the smallest
collective time over the members: the last to arrive waits for nothing else) and the step's
wall time (what a decision's cost is measured in).
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np

from .config import RebalanceConfig
from .model import CollectiveModel, CostModel

FRESH_STEPS = 2      # the first steps after an actor's share changes are the move's cost, not its
                     # speed: they stay out of its fit (on a 2-core box the first 1-2 ran ~10% slow)
SETTLED_STEPS = 4    # the steps after those, whose median is what a decision's cost is measured against


class Measurements:
    """The models the policy decides with, kept up to date from step reports."""

    def __init__(self, world: int, config: RebalanceConfig, hosts: Sequence[str] | None = None,
                 lending: bool = False) -> None:
        self.config = config
        self._lending = lending   # whether members may run on other cores (then their own part is modelled)
        self.models = [CostModel(config.forgetting, config.false_alarm) for _ in range(world)]
        # each rank's model is of the threads it runs now; a model of other threads it ran
        # with before is kept, with the complete steps seen at its last fit, for when it does again
        self.threads: list[int | None] = [None] * world
        self._kept: dict[tuple[int, int | None], tuple[CostModel, int]] = {}
        # and per (rank, threads), a model of its own part of the step (all of it but the wait
        # for the others and the collective: compute and the optimizer, what its cores change),
        # with the complete steps seen at its last fit: what choosing its cores is judged by
        self._own: dict[tuple[int, int | None], tuple[CostModel, int]] = {}
        self.collective = CollectiveModel(config.forgetting, hosts)   # by size and hosts spanned
        # per rank, kept as lists (cheap to touch once per report) and mirrored into arrays
        # (cheap to read once per decision) whenever a step completes
        self._rows, self._settled, self._seen = [-1] * world, [0] * world, [0] * world
        self._on_threads = [0] * world                     # steps fitted since each rank's threads last changed
        self.changed_at = np.full(world, -1, dtype=np.int64)   # complete steps seen at each rank's last change (-1: none)
        self._fresh = [0] * world                          # steps at the latest rows still left out
        self._dirty: set[int] = set()                      # ranks fitted since the last mirror
        self.theta = np.zeros((5, world))       # each model's a, c, var a, cov ac, var c
        self.rows = np.full(world, -1, dtype=np.int64)     # rows of each rank's latest step
        self.settled = np.zeros(world, dtype=np.int64)     # steps fitted at those rows
        self.seen = np.zeros(world, dtype=np.int64)        # complete steps before each rank's last fit
        self.started = np.zeros(world, dtype=bool)         # measured at least once
        self.steps = 0                                     # complete steps seen
        self.step_s = 0.0                                  # a step's wall time, smoothed over ~10 steps
        self.walls: deque[float] = deque(maxlen=64)       # the latest complete steps' wall times
        self._group: frozenset[int] = frozenset()          # the ranks of the latest complete step...
        self.group_since = 0                               # ...and complete steps seen when it formed
        self.news: dict[int, float] = {}                   # rank -> ratio of a change not yet acted on
        self._round: dict[int, tuple[int, float, float]] = {}   # rank -> (rows, collective_s, step_s)
        self._probe: list[float] | None = None             # wall times of the steps after a decision...
        self._probe_split: dict[int, int] = {}            # ...at the split it decided
        self._move_costs = [config.move_cost_steps, 1.0]   # [sum in steps, count]: the prior is one
        self._regroup_prior = config.regroup_cost_s
        self._cores_probe: list[float] | None = None        # wall times of the steps on new cores
        self._cores_costs = [config.move_cost_steps, 1.0]   # [sum in steps, count]: a move's prior
        self._regroup_costs = [0.0, 0]                      # [sum in s, count]: measured only

    def observe(self, rank: int, rows: int, compute_s: float, collective_s: float, step_s: float,
                group_size: int) -> None:
        if rows != self._rows[rank]:
            self._rows[rank], self._settled[rank], self._fresh[rank] = rows, 0, FRESH_STEPS
        self._dirty.add(rank)
        if rows > 0:
            if self._fresh[rank] > 0:
                self._fresh[rank] -= 1
            else:
                self._fit(rank, rows, compute_s)
                if self._lending:
                    self._fit_own(rank, rows, max(step_s - collective_s, 0.0))
        if rank in self._round:
            self._round.clear()    # a member's next step before the others' reports: start over
        self._round[rank] = (rows, collective_s, step_s)
        if len(self._round) >= group_size:
            self._complete(group_size)

    def _fit(self, rank: int, rows: int, compute_s: float) -> None:
        model = self.models[rank]
        idle = self.steps - self._seen[rank]
        if idle > 1 and model.started:
            model.age(idle - 1)    # steps it took no part in, or whose times were left out
        model.update(rows, compute_s)
        self._settled[rank] += 1
        self._on_threads[rank] += 1
        self._seen[rank] = self.steps
        if model.changed():
            self.news[rank] = model.last_change
            self.changed_at[rank] = self.steps

    def _fit_own(self, rank: int, rows: int, own_s: float) -> None:
        key = (rank, self.threads[rank])
        model, seen = self._own.get(key, (None, self.steps))
        if model is None:
            model = CostModel(self.config.forgetting, self.config.false_alarm)
        elif self._own_unseen(rank, seen) > 1:
            model.age(self._own_unseen(rank, seen) - 1)
        model.update(rows, own_s)
        self._own[key] = (model, self.steps)

    def _own_unseen(self, rank: int, seen: int) -> int:
        """The steps a model of ``rank``'s own part last fitted after ``seen`` complete steps has
        aged by: what it measured on other cores fades only once a change of speed of the
        member is detected since (until then nothing says that what it measured there moved)."""
        return self.steps - seen if self.changed_at[rank] > seen else 0

    def own_view(self, ranks: np.ndarray, threads: dict[int, int] | None = None) -> np.ndarray | None:
        """(a, c, var a, cov, var c) x len(ranks) of the members' own part of the step, each at
        the threads ``threads`` says (by default the ones it runs now), aged like ``view``;
        None while a member has no such model."""
        theta = np.zeros((5, len(ranks)))
        for i, rank in enumerate(ranks.tolist()):
            model, seen = self._own.get((rank, (threads or {}).get(rank, self.threads[rank])), (None, 0))
            if model is None or not model.started:
                return None
            theta[:, i] = model.state(max(self._own_unseen(rank, seen) - 1, 0))
        return theta

    def _mirror(self) -> None:
        """Copy what changed since the last mirror into the arrays the policy reads."""
        if not self._dirty:
            return
        ranks = sorted(self._dirty)
        self._dirty = set()
        at = np.array(ranks, dtype=np.int64)
        models = [self.models[r] for r in ranks]
        self.theta[:, at] = np.array([m.state() if m.started else (0.0,) * 5 for m in models]).T
        self.started[at] = [m.started for m in models]
        self.rows[at] = [self._rows[r] for r in ranks]
        self.settled[at] = [self._settled[r] for r in ranks]
        self.seen[at] = [self._seen[r] for r in ranks]

    def _complete(self, group_size: int) -> None:
        reports, self._round = self._round, {}
        if frozenset(reports) != self._group:
            self._group, self.group_since = frozenset(reports), self.steps
        wall = max(s for _, _, s in reports.values())
        if group_size >= 2:
            self.collective.update(sorted(reports), min(c for _, c, _ in reports.values()))
        self.step_s = wall if self.steps == 0 else 0.9 * self.step_s + 0.1 * wall
        self.walls.append(wall)
        self.steps += 1
        self._mirror()
        if self._probe is not None:
            self._measure(wall, {rank: rows for rank, (rows, _, _) in reports.items()})
        if self._cores_probe is not None:
            self._measure_cores(wall)

    def configure(self, rank: int, threads: int) -> None:
        """``rank`` runs ``threads`` CPU threads from now (cores lent or given back): another
        machine, known to have changed, so not a change of speed to detect. Its model so far is
        kept; the one of ``threads``, if it ran with them before, takes its place."""
        if self.threads[rank] is None:
            self.threads[rank] = threads
        if threads == self.threads[rank]:
            return
        self._kept[(rank, self.threads[rank])] = (self.models[rank], self._seen[rank])
        model, seen = self._kept.pop((rank, threads), (None, self.steps))
        self.models[rank] = model or CostModel(self.config.forgetting, self.config.false_alarm)
        self.threads[rank], self._seen[rank] = threads, seen
        self._rows[rank], self._settled[rank], self._on_threads[rank] = -1, 0, 0   # its next steps are fresh
        self._dirty.add(rank)

    # -- the costs of acting ----------------------------------------------------------

    def acted(self, members: np.ndarray, rows: np.ndarray) -> None:
        """A decision was made: measure what its first steps lose, once they run."""
        self._probe = []
        self._probe_split = {int(r): int(n) for r, n in zip(members.tolist(), rows.tolist())}
        self.news.clear()

    def _measure(self, wall: float, rows: dict[int, int]) -> None:
        """A decision's cost: its first FRESH_STEPS steps against the median of the next ones."""
        if any(self._probe_split.get(rank, 0) != r for rank, r in rows.items()):
            if self._probe:
                self._probe = None    # the split moved on before the measurement was done
            return
        self._probe.append(wall)
        if len(self._probe) < FRESH_STEPS + SETTLED_STEPS:
            return
        settled = float(np.median(self._probe[FRESH_STEPS:]))
        lost = sum(self._probe[:FRESH_STEPS]) - FRESH_STEPS * settled
        if not self.news and settled > 0:   # a change of speed meanwhile would be read as cost
            self._move_costs[0] += max(lost, 0.0) / settled
            self._move_costs[1] += 1
        self._probe = None

    def cores_changed(self) -> None:
        """Members run on other cores from the next step: measure what their first steps lose
        (a thread pool resized, caches cold), as a move's cost is measured."""
        self._cores_probe = []

    def _measure_cores(self, wall: float) -> None:
        self._cores_probe.append(wall)
        if len(self._cores_probe) < FRESH_STEPS + SETTLED_STEPS:
            return
        settled = float(np.median(self._cores_probe[FRESH_STEPS:]))
        if settled > 0:
            self._cores_costs[0] += max(sum(self._cores_probe[:FRESH_STEPS]) - FRESH_STEPS * settled, 0.0) / settled
            self._cores_costs[1] += 1
        self._cores_probe = None

    def cores_cost_s(self) -> float:
        """What moving members onto other cores costs (s): the mean of its measurements in
        steps, a move's prior included, at the current step's length."""
        steps, n = self._cores_costs
        return steps / n * self.step_s

    def regrouped(self, cost_s: float) -> None:
        if cost_s >= 0:
            self._regroup_costs[0] += cost_s
            self._regroup_costs[1] += 1

    def move_cost_s(self) -> float:
        """What a move costs (s): the mean of its measurements in steps, prior included, at
        the current step's length."""
        steps, n = self._move_costs
        return steps / n * self.step_s

    def regroup_cost_s(self) -> float:
        """What a regroup costs (s): the prior until one is measured, then the mean of the
        measurements. Unlike a move's cost (the difference of a few noisy steps), a regroup's is
        one wall time read directly, and it differs between machines by orders of magnitude
        (gloo on one host: tens of ms; NCCL across hosts: seconds), so one measurement says
        more than any prior could."""
        total, n = self._regroup_costs
        return total / n if n else self._regroup_prior

    # -- the models, as the policy reads them -----------------------------------------

    def measured(self) -> np.ndarray:
        """Per rank, whether it was ever fitted."""
        self._mirror()
        return self.started

    def shown(self, ranks: np.ndarray, rows: np.ndarray) -> bool:
        """Whether every member's latest step ran at its share of ``rows``, and every busy one
        was fitted there at least once: a split is judged on measurements of it."""
        self._mirror()
        return bool(np.all(self.rows[ranks] == rows) and np.all((rows == 0) | (self.settled[ranks] > 0)))

    def view(self, ranks: np.ndarray, threads: dict[int, int] | None = None) -> np.ndarray:
        """(a, c, var a, cov, var c) x len(ranks), each model aged by the steps since its last fit.
        ``threads``: rank -> the threads it would run (in a candidate group); a rank is seen by
        its model of those threads where it ran with them before, else by its current one."""
        self._mirror()
        theta = self.theta[:, ranks].copy()
        idle = self.steps - self.seen[ranks]
        for i in np.flatnonzero((idle > 1) & self.started[ranks]).tolist():
            theta[:, i] = self.models[int(ranks[i])].state(int(idle[i]))
        for i, rank in enumerate(ranks.tolist() if threads and self._kept else ()):
            kept = self._kept.get((rank, threads.get(rank)))
            if kept is not None and kept[0].started:
                unseen = self.steps - kept[1]
                theta[:, i] = kept[0].state(unseen if unseen > 1 else 0)
        return theta

    def on_threads(self, rank: int) -> int:
        """Steps of ``rank`` fitted since its threads last changed."""
        return self._on_threads[rank]

    def predict(self, rank: int, rows: float) -> float:
        """The mean compute seconds of ``rank`` at ``rows``, aged like ``view``."""
        return self.models[rank].predict(rows, self.steps - self._seen[rank])[0]

    def last_change(self, ranks) -> int | None:
        """Complete steps seen at the latest change of speed detected among ``ranks`` (None: none ever)."""
        at = np.fromiter(ranks, dtype=np.int64)
        last = int(self.changed_at[at].max()) if len(at) else -1
        return None if last < 0 else last

    def regime_age(self, ranks) -> int | None:
        """Steps since the latest change of speed detected among ``ranks`` (None: none ever)."""
        last = self.last_change(ranks)
        return None if last is None else self.steps - last

    def steady(self, ranks) -> int:
        """Complete steps of the current group since it formed and since the latest change of
        speed among ``ranks``: walls from which that group, as it is now, can be judged."""
        age = self.regime_age(ranks)
        since = self.steps - self.group_since
        return since if age is None else min(since, age)

    def idle(self, rank: int) -> int:
        """Complete steps since ``rank`` was last fitted."""
        return self.steps - self._seen[rank]
