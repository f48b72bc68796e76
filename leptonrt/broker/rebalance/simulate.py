"""A simulated cluster with known truth, to judge the rebalancer against an oracle.

Pure: a fake clock (every time is a sum of simulated seconds), seeded noise, no clock reads;
a caller that wants the wall time of ``decide`` passes its own timer in.

Each actor's compute is ``(a + c * rows) * speed(t) * noise``: Gaussian noise of a given CV,
heavy-tailed spikes, two-speed steps (alternately slow and fast), and changes of speed that
last, come and go, or drift. The group pays a collective and an optimizer step. The collective
of a group of ``n >= 2`` members spanning the hosts ``H`` (none for a group of one) costs

    latency_s + per_member_s * n + (max over h in H of link_s[h], when H has two hosts or more)

A ring all-reduce moves its chunks in lock-step, each of its 2 (n - 1) steps as slow as the
slowest link in the ring, and a ring through two hosts or more crosses each one's link: so the
slowest link crossed sets the pace (a maximum, not a sum per host), and a group that spans one
host crosses none. A host's ``link_s`` is what crossing its link adds to one all-reduce: its
latency times the ring's steps plus the bytes the ring sends over it (about twice the
gradient) over its bandwidth. The mechanics of the real system are there: a
decided split takes effect a few steps later, the first steps at a larger share run slow, and
a regroup costs wall seconds; the cores of actors on standby may be lent to the members. The ORACLE knows the true current costs and picks the best
membership and split at every step, with no lag and no cost of switching; it sees the same
noise (common random numbers), so regret measures decisions, not luck.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .policy import Cores, Move, RebalanceConfig, Rebalancer, Regroup
from .split import best_split, finish_times, round_split
from .when import cut_short_pays
from ..cores import Lending


@dataclass(frozen=True)
class Change:
    """From ``step`` on, one actor's step time is multiplied by ``factor``."""

    step: int
    rank: int
    factor: float
    steps: int | None = None      # how long it lasts (None: to the end of the run)
    ramp: int = 0                 # steps over which it grows to ``factor`` (a drift); 0: at once


@dataclass(frozen=True)
class Scenario:
    """One simulated job: the true costs and how they behave."""

    case: str
    a: tuple[float, ...]          # fixed compute seconds per step, per actor
    c: tuple[float, ...]          # compute seconds per row, per actor
    batch: int                    # rows per global batch
    steps: int                    # steps in the run
    cv: tuple[float, ...]         # Gaussian noise per actor: sd / mean of one step
    spike_p: float = 0.0          # probability per actor and step of a spike...
    spike: tuple[float, float] = (3.0, 10.0)   # ...multiplying the step by a uniform factor in this range
    two_speed: tuple[float, ...] = ()          # per actor x: its steps alternate (1 + x) and (1 - x) times
    changes: tuple[Change, ...] = ()
    caps: tuple[int | None, ...] | None = None   # rows that fit on each actor (None: no limit)
    align: int = 1
    latency_s: float = 0.5e-3     # the collective: latency_s + per_member_s * size, for size >= 2...
    per_member_s: float = 2e-6
    hosts: tuple[int, ...] = ()   # ...plus the slowest link_s of the hosts it spans, when they are two or
    link_s: tuple[float, ...] = ()   # more: each actor's host (empty: all on one) and each host's link (s)
    optimizer_s: float = 0.2e-3   # the optimizer step, every member, every step
    lag: tuple[int, int] = (3, 6)   # a decision takes effect this many steps later (uniform, inclusive)...
    window: int = 0               # ...but with steps granted this far ahead (0: no window), a regroup
    snapshot_every: int = 8       # waits for the snapshot boundary after them, or is made at once from the
    cut_short: bool | None = None  # newest snapshot, its steps since trained again: as ``when`` says (None),
                                  # always (True) or never (False); no decision is made while one waits
    fresh_steps: int = 2          # the first steps at a larger share...
    fresh_slow: float = 0.10      # ...run this much slower
    regroup_s: float = 0.3        # wall seconds a regroup costs
    lent_speedup: float | None = None   # each actor has a core of its own, one on standby lends it
                                  # to the members (``broker.cores``), and a member on k cores
                                  # computes this ** (k - 1) times faster; None: no lending
    pure_noise: bool = False      # nothing changes: every decision is a false move
    persistent_change: bool = False   # some change lasts to the end of the run


@dataclass(frozen=True)
class Verdict:
    """How the rebalancer did on one run, against the oracle and two fixed baselines."""

    case: str
    n_actors: int
    persistent_change: bool
    regret_frac: float            # mean extra step time over the oracle's, as a fraction of it
    detect_steps: int | None      # slow steps seen before the decision that answered the first 2x
                                  # slowdown (None: no such slowdown; the steps left if unanswered)
    detect_answered: bool | None
    false_moves_per_10k: float | None   # decisions per 10,000 steps (pure noise only)
    decision_ms_p50: float | None       # median wall ms of decide (only with a timer)
    moves: int
    regroups: int
    cores_changes: int            # members moved onto other cores (lending only)
    declined_final: tuple[int, ...]   # members on their own cores only at the end (lending only)
    steps: int
    members_final: tuple[int, ...]
    split_final: tuple[int, ...]
    speed_vs_single: float        # the best single actor's time over the rebalancer's, last half of the run
    speed_vs_even: float          # a fixed even split's time over the rebalancer's, last half of the run
    speed_vs_oracle: float        # the oracle's time over the rebalancer's, last half of the run
    run_vs_single: float          # the same as speed_vs_single over the whole run (regroup costs included)

    def as_dict(self) -> dict:
        """The verdict as JSON-ready values (a figure that is not finite becomes None)."""
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in asdict(self).items()}


class _Truth:
    """The true costs at each step, and the noise every decision maker sees."""

    def __init__(self, s: Scenario, rng: np.random.Generator) -> None:
        self.s, self.rng, self.n = s, rng, len(s.a)
        self.a, self.c, self.cv = np.array(s.a), np.array(s.c), np.array(s.cv)
        self.two = np.array(s.two_speed) if s.two_speed else np.zeros(self.n)
        self.lending = Lending({r: (r,) for r in range(self.n)})
        self.hosts = np.array(s.hosts if s.hosts else (0,) * self.n, dtype=np.int64)
        self.link = np.array(s.link_s if s.link_s else (0.0,) * (int(self.hosts.max()) + 1))

    def speed(self, t: int) -> np.ndarray:
        factor = np.ones(self.n)
        for ch in self.s.changes:
            if t < ch.step or (ch.steps is not None and t >= ch.step + ch.steps):
                continue
            grown = 1.0 if ch.ramp <= 0 else min((t - ch.step + 1) / ch.ramp, 1.0)
            factor[ch.rank] *= 1.0 + (ch.factor - 1.0) * grown
        return factor

    def noise(self, t: int) -> np.ndarray:
        noise = np.maximum(1.0 + self.cv * self.rng.standard_normal(self.n), 0.05)
        if self.s.spike_p > 0:
            hit = self.rng.random(self.n) < self.s.spike_p
            if hit.any():
                noise[hit] *= self.rng.uniform(*self.s.spike, size=int(hit.sum()))
        return noise * (1.0 + self.two * (1 if t % 2 else -1))

    def collective(self, group: np.ndarray) -> float:
        """What the all-reduce of the ranks ``group`` costs (see the module's docstring)."""
        size = len(group)
        if size <= 1:
            return 0.0
        spanned = np.unique(self.hosts[group])
        link = float(self.link[spanned].max()) if len(spanned) > 1 else 0.0
        return self.s.latency_s + self.s.per_member_s * size + link

    def lent(self, members: np.ndarray, declined=()) -> np.ndarray:
        """Per actor, the factor its compute is divided by while ``members`` form the group and
        those ``declined`` take no lent cores."""
        if not self.s.lent_speedup:
            return np.ones(self.n)
        threads = self.lending.threads(members.tolist(), declined=declined)
        return np.array([self.s.lent_speedup ** (threads[r] - 1) for r in range(self.n)])


class _Oracle:
    """The best membership and split for the true current costs, cached while they hold."""

    def __init__(self, truth: _Truth, caps: np.ndarray) -> None:
        self.truth, self.caps = truth, caps
        self._key: bytes | None = None
        self._best: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def best(self, speed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best group, its split, and each member's factor from lent cores."""
        key = speed.tobytes()
        if key != self._key:
            self._key, self._best = key, self._search(self.truth.a * speed, self.truth.c * speed)
        return self._best  # type: ignore[return-value]

    def _search(self, a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, eligible = self.truth.s, np.flatnonzero(self.caps > 0)
        best, best_t = None, np.inf
        for group in self._groups(a, c, eligible):
            if self.caps[group].sum() < s.batch:
                continue
            # lent cores taken by every member, or declined by every member (with lending)
            for declined in ((), tuple(group.tolist())) if s.lent_speedup else ((),):
                lent = self.truth.lent(group, declined)[group]
                rows = best_split(a[group] / lent, c[group] / lent, self.caps[group], s.batch, s.align)
                t = float(np.max(finish_times(a[group] / lent, c[group] / lent, rows))) + self.truth.collective(group)
                if t < best_t:
                    best, best_t = (group, rows, lent), t
        return best  # type: ignore[return-value]

    @staticmethod
    def _groups(a: np.ndarray, c: np.ndarray, eligible: np.ndarray):
        if len(eligible) <= 4:
            for k in range(1, len(eligible) + 1):
                yield from (np.array(g) for g in itertools.combinations(eligible.tolist(), k))
            return
        order = eligible[np.argsort(a[eligible] + c[eligible] * 64, kind="stable")]
        sizes = sorted({len(order), len(order) - 1, *(2 ** k for k in range(20) if 2 ** k < len(order))})
        for k in sizes:
            yield np.sort(order[:k])


def simulate(s: Scenario, seed: int = 0, *, config: RebalanceConfig = RebalanceConfig(),
             timer: Callable[[], float] | None = None) -> Verdict:
    """Run one scenario with the rebalancer deciding, and judge it."""
    rng = np.random.default_rng(seed)
    truth = _Truth(s, rng)
    n = truth.n
    caps = np.array([s.batch if cap is None else cap for cap in (s.caps or [None] * n)], dtype=np.int64)
    reb = Rebalancer(n, s.batch, align=s.align, caps=s.caps, config=config,
                     lending=truth.lending if s.lent_speedup else None,
                     hosts=[f"host{h}" for h in s.hosts] if s.hosts else None)
    reb.regrouped(s.regroup_s)   # forming the first group: the broker's first measurement of a regroup
    oracle = _Oracle(truth, caps)
    members = np.flatnonzero(caps > 0)
    running = np.zeros(n, dtype=np.int64)
    running[members] = round_split(np.full(len(members), s.batch / len(members)), np.zeros(len(members)),
                                   np.ones(len(members)), caps[members], s.batch, s.align)
    even = running.copy()
    decided, decided_members = running.copy(), members.copy()
    # members running on their own cores only, now and as decided: every one, until tried
    declined = decided_declined = tuple(range(n)) if s.lent_speedup else ()
    pending: list[tuple[int, np.ndarray, np.ndarray, type, tuple[int, ...], int]] = []   # ..., steps replayed
    grew = np.full(n, -10 ** 9)
    walls, oracle_walls, even_walls = (np.zeros(s.steps) for _ in range(3))
    singles = np.zeros((n, s.steps))
    durations: list[float] = []
    decisions = moves = regroups = cores = 0
    watch = next((ch for ch in s.changes if ch.factor == 2.0 and ch.steps is None and ch.ramp == 0), None)
    detect: int | None = None
    needed = False   # whether the watched slowdown calls for an answer (it may not: caps)
    # an actor alone: on every core, or on its own where that is faster (the best single actor)
    alone = np.array([max(truth.lent(np.array([r]))[r], 1.0) for r in range(n)])
    for t in range(s.steps):
        extra, replayed = 0.0, 0
        while pending and pending[0][0] <= t:
            _, new_members, new_rows, kind, new_declined, replay = pending.pop(0)
            replayed += replay
            grew[new_rows > running] = t
            running, members, declined = new_rows, new_members, new_declined
            if kind is Regroup:
                extra += s.regroup_s
                reb.regrouped(s.regroup_s)
            if kind is not Move and s.lent_speedup:   # (a move keeps every member's cores)
                reb.formed(truth.lending.threads(members.tolist(), declined=declined), declined)
        speed, noise = truth.speed(t), truth.noise(t)
        a, c = truth.a * speed, truth.c * speed
        lent = truth.lent(members, declined)   # (the oracle's and the baselines' groups lend as theirs would)
        coll_noise = max(1.0 + 0.05 * rng.standard_normal(), 0.5)
        fresh = np.where(t - grew < s.fresh_steps, 1.0 + s.fresh_slow, 1.0)
        compute = finish_times(a, c, running) * noise * fresh / lent
        slowest = float(compute[members].max())
        coll = truth.collective(members) * coll_noise
        walls[t] = (slowest + coll + s.optimizer_s) * (1 + replayed) + extra   # (replayed steps: as this one)
        for rank in members[np.argsort(compute[members])].tolist():
            reb.observe(rank, rows=int(running[rank]), compute_s=float(compute[rank]),
                        collective_s=coll + slowest - float(compute[rank]),
                        step_s=slowest + coll + s.optimizer_s, group_size=len(members))
        group, rows, oracle_lent = oracle.best(speed)
        full = np.zeros(n, dtype=np.int64)
        full[group] = rows
        if watch is not None and t == watch.step:
            # an answer is called for when the split in force is 5% slower than the oracle's
            # for the new costs (with caps, the oracle may have nothing better to do)
            kept = float(finish_times(a, c, decided)[decided_members].max()) + truth.collective(decided_members)
            needed = kept > 1.05 * (float(finish_times(a, c, full).max()) + truth.collective(group))
        oracle_walls[t] = float((finish_times(a, c, full)[group] * noise[group] / oracle_lent).max()) \
            + truth.collective(group) * coll_noise + s.optimizer_s
        even_walls[t] = float((finish_times(a, c, even) * noise).max()) \
            + truth.collective(np.flatnonzero(even > 0)) * coll_noise + s.optimizer_s
        singles[:, t] = np.where(caps >= s.batch, (a + c * s.batch) * noise / alone, np.inf) + s.optimizer_s
        if s.window and any(kind is Regroup for _, _, _, kind, _, _ in pending):
            continue   # a regroup waits for its boundary: the broker decides nothing meanwhile
        started = timer() if timer else 0.0
        decision = reb.decide(decided.tolist(), decided_members.tolist(), steps_left=s.steps - t - 1)
        if timer:
            durations.append(timer() - started)
        if decision is None:
            continue
        decisions += 1
        new_members = np.array(decision.members if isinstance(decision, Regroup) else decided_members)
        new_rows = decided if isinstance(decision, Cores) else np.array(decision.split, dtype=np.int64)
        if needed and detect is None and t >= watch.step and \
                (new_rows[watch.rank] < decided[watch.rank] or watch.rank not in new_members):
            detect = t - watch.step + 1
        moves += isinstance(decision, Move)
        regroups += isinstance(decision, Regroup)
        cores += isinstance(decision, Cores)
        decided, decided_members = new_rows, new_members
        decided_declined = decision.declined if isinstance(decision, Cores) else decided_declined
        at, replay = t + 1 + int(rng.integers(s.lag[0], s.lag[1] + 1)), 0
        if isinstance(decision, Regroup) and s.window:
            at, replay = _regroup_at(s, t, float(np.mean(walls[max(t - 9, 0):t + 1])), decision.expected_s)
        pending.append((at, new_members, new_rows, type(decision), decided_declined, replay))
        pending.sort(key=lambda p: p[0])
    half = slice(s.steps // 2, None)
    best_single = int(np.argmin(singles.sum(axis=1)))
    return Verdict(
        case=s.case, n_actors=n, persistent_change=s.persistent_change,
        regret_frac=float((walls.sum() - oracle_walls.sum()) / oracle_walls.sum()),
        detect_steps=None if not needed else detect if detect is not None else s.steps - watch.step,
        detect_answered=None if not needed else detect is not None,
        false_moves_per_10k=decisions * 10_000 / s.steps if s.pure_noise else None,
        decision_ms_p50=float(np.median(durations)) * 1e3 if durations else None,
        moves=moves, regroups=regroups, cores_changes=cores, declined_final=tuple(decided_declined), steps=s.steps,
        members_final=tuple(int(r) for r in decided_members), split_final=tuple(int(r) for r in decided),
        speed_vs_single=float(singles[best_single, half].sum() / walls[half].sum()),
        speed_vs_even=float(even_walls[half].sum() / walls[half].sum()),
        speed_vs_oracle=float(oracle_walls[half].sum() / walls[half].sum()),
        run_vs_single=float(singles[best_single].sum() / walls.sum()))


def _regroup_at(s: Scenario, t: int, step_s: float, saving_s: float) -> tuple[int, int]:
    """(the step a regroup decided at step ``t`` takes effect, the steps trained again): with
    ``s.window`` steps granted ahead, at the snapshot boundary after them, or cut short at the
    next step, from the newest snapshot."""
    replay, boundary = (t + 1) % s.snapshot_every, -(-(t + 1 + s.window) // s.snapshot_every) * s.snapshot_every
    short = cut_short_pays(step_s, saving_s, boundary - (t + 1), replay) if s.cut_short is None else s.cut_short
    return (t + 2, replay) if short else (boundary, 0)
