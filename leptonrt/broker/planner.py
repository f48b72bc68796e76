"""The rebalancer: predicts each actor's step time and splits the batch to equalise it.

Pure: no sockets, no clock reads — time arrives as a parameter, so tests step a fake
clock. Each actor's compute time is modelled as ``a + c * rows`` (a fixed overhead plus a
cost per row), fitted robustly over a sliding window; scheduling hiccups are ignored, and
a device that changes speed is seen within a few steps (5 in a row 1.5x off its fit, each
at least 1.3x, or 10 in a row 1.25x off) and refitted from them, where a sliding median
would lag by half a window. A change of speed, or a move's missed prediction, is planned
for at once: the broker otherwise asks only every few reports (``news``). The proposed
split equalises predicted finish times (not rows), is rounded to an alignment unit,
respects each actor's memory cap, and is only adopted when it beats the current split by a
margin (no thrashing), a wider one once a split has held a while (unless every weighing
has shown the usual margin for as long again: an imbalance that lasts is not drift). The
first steps after a move are checked against its prediction, and a fit that missed is
redrawn from them (the speed of one actor can depend on its neighbours' load, which no fit
at the old split can see). A move that would reverse the last one goes half way: the
balance lies between the two splits, unless a device changed speed meanwhile (a miss as
large as a change of speed counts). Nor is a move planned on a fit that the latest steps
already contradict (a change of speed still too short to redraw it). The first two steps
at a larger share run slow, so they stay out of the fit and the check (they would make
every move look like it overshot).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class PlannerConfig:
    """How eagerly the planner moves rows between actors."""

    align: int = 8               # shares are multiples of this many rows (B % align goes to one rank)
    window: int = 48             # observations per actor the fit looks at (long: contention comes and goes)
    min_gain: float = 0.10       # adopt a split only if predicted step time drops by this fraction...
    held_gain: float = 0.20      # ...or by this much once it has held `hold` steps with no device changing speed,
                                 # unless every weighing over the last `hold` steps showed `min_gain` (it persists)
    correct_gain: float = 0.05   # ...but by this much for the correction of a move whose prediction missed (once)
    hold: int = 32
    stale_after_s: float = 2.0   # an actor silent this long gets no larger share
    warmup: int = 16             # observations per actor before it is planned for (start-up is noisy)
    min_rows_spread: float = 0.2   # rows must vary this much (relative) before `a` is re-fitted...
    fixed_share: float = 0.25    # ...and it is at most this share of the window's median step,
    agreed_share: float = 0.5    # or this where the pairwise slopes agree (their interquartile
    slopes_agree: float = 0.5    # range within this fraction of their median)
    change: float = 1.8          # a step this many times slower or faster than predicted is a spike (not fitted)
    shift: float = 1.5           # this many in a row off on one side (their median; each at least `lean`)...
    persist: int = 5             # ...mean the device changed speed: the fit starts again from them
    lean: float = 1.3            # (a 2x slowdown can show a step or two at 1.45x among 2x ones)
    drift: float = 1.25          # a longer run, all this many times off on one side, is a smaller change
    drift_persist: int = 10      # of speed (a sliding median would take half a window to follow it)
    settle: int = 3              # after a change, measure this many steps of the new split before the next
    max_move: float = 2.0        # one move changes no share by more than this factor
    refit_every: int = 4         # with a full window, refit after this many new observations
    verify: int = 4              # after a move, the first this many steps at the new share are checked...
    verify_off: float = 1.15     # ...and if their median is this many times off the prediction, the fit is redrawn
    fresh: int = 2               # the first this many steps at a larger share stay out of the fit and the check
    overhead_window: int = 64    # steps over which the per-step cost outside compute (the all-reduce) is estimated


class _Fit:
    """Robust fit of one actor's step time against its rows over a sliding window.

    Timings on shared machines are spiky, so everything is a median: the per-row cost is
    the median of ``(t - a) / rows``, and the fixed cost ``a`` comes from the median of
    pairwise slopes (Theil-Sen) whenever the window's rows vary enough to show it, and is
    held to a quarter of a step unless the slopes agree (see ``coefficients``).
    """

    def __init__(self, cfg: PlannerConfig) -> None:
        self.cfg = cfg
        self.obs: deque[tuple[int, float]] = deque(maxlen=cfg.window)
        self.a = 0.0          # fixed seconds per step; kept while rows do not vary enough to refit
        self.last_seen: float | None = None
        self._recent: deque[tuple[int, float, float]] = deque(maxlen=max(cfg.persist, cfg.drift_persist))  # (rows, seconds, vs prediction)
        self._cached: tuple[float, float] | None = None
        self._unfitted = 0    # observations taken since the fit was last computed
        self.ready = False    # enough evidence to plan with: a full warm-up, or a detected change
        self._expected: int | None = None          # rows of a move whose prediction is being checked...
        self._predicted = 0.0                       # ...and the seconds the fit predicted for them then
        self._checking: list[tuple[int, float]] = []
        self.redrawn = False  # the fit started again (a change of speed, or a missed prediction) since last asked
        self.missed = False   # ...and the last time, because a move's prediction missed
        self.jumped = False   # ...and the last time, by as much as a change of speed (`shift`)
        self._rows = 0        # rows of the latest observation...
        self._fresh = 0       # ...and how many steps more at them stay out of the fit (the share just grew)

    def expect(self, rows: int | None) -> None:
        """The planner moved this actor to ``rows``: check the prediction against its first
        steps there (None: no check; a check still under way is dropped)."""
        if rows is None:
            self._expected, self._checking = None, []
            return
        a, c = self.coefficients()
        self._expected, self._predicted, self._checking = rows, a + c * rows, []

    @property
    def count(self) -> int:
        return len(self.obs)

    def add(self, rows: int, seconds: float, now: float) -> None:
        """Take one observation. A lone spike (a scheduling hiccup) stays out of the fit; a
        run of steps all well off the prediction on one side means the device changed speed,
        and the fit starts again from that run."""
        self.last_seen = now
        self.ready = self.ready or self.count >= self.cfg.warmup
        # the first steps at a larger share run slow (on the 2-core box, 9-11% in the median
        # over 45 moves, the steps after them within 2% of the steady time): fitted, or
        # checked against a move's prediction, they would say the move overshot. They still
        # count toward a change of speed, which takes more than they show.
        fresh = self.cfg.fresh if rows > self._rows else self._fresh if rows == self._rows else 0
        self._rows, self._fresh = rows, max(fresh - 1, 0)
        if not self.ready:
            self.obs.append((rows, seconds))
            self._cached = None
            return
        ratio = self._off(rows, seconds)
        if not fresh and self._check(rows, seconds):
            return
        self._recent.append((rows, seconds, ratio))
        if self._redraw_if_changed() or fresh:
            return
        if 1 / self.cfg.change <= ratio <= self.cfg.change:
            self.obs.append((rows, seconds))
            self._unfitted += 1
            # the robust fit is O(window^2): refresh it every few steps, but at once while a
            # new split is being measured (its first steps are what moves the fit)
            if self._unfitted >= self.cfg.refit_every or self.count < self.cfg.warmup \
                    or not self.measured(rows, self.cfg.refit_every + 1):
                self._cached = None

    def _redraw_if_changed(self) -> bool:
        """Start the fit again from the latest steps if they show a change of speed."""
        run = self._changed()
        if run:
            # fitting across both regimes would mislead; a device that is k times slower is
            # so for its fixed cost too, so `a` scales with the run's median ratio
            self._redraw(median(r for _, _, r in run), [(r, t) for r, t, _ in run], missed=False, jumped=True)
        return bool(run)

    def _changed(self) -> list[tuple[int, float, float]] | None:
        """The latest steps, if they show that the device changed speed: `persist` in a row
        `shift` times off the fit on one side (their median, with each at least `lean` off),
        or `drift_persist` all `drift` times off."""
        recent = list(self._recent)
        cfg = self.cfg
        for steps, each, middle in ((cfg.persist, cfg.lean, cfg.shift), (cfg.drift_persist, cfg.drift, cfg.drift)):
            run = recent[-steps:]
            if len(run) < steps:
                continue
            ratios = sorted(r for _, _, r in run)
            mid = median(ratios)
            if (ratios[0] > each and mid > middle) or (ratios[-1] < 1 / each and mid < 1 / middle):
                return run
        return None

    def _check(self, rows: int, seconds: float) -> bool:
        """After a move: once ``verify`` steps at the new share are in, and their median is
        well off the prediction, start the fit again from them (True when it did).

        A prediction made at the old share can miss at the new one: the fixed cost was
        poorly known, or the device's speed depends on its neighbours' load (two actors
        sharing memory bandwidth or a core's siblings). Waiting for the sliding medians
        to come round would take tens of steps; one more move from the measured point does not.
        """
        if self._expected is None:
            return False
        if rows != self._expected:
            if self._checking:   # the split moved again (or the group changed) before the check
                self._expected = None
            return False         # (before any: steps granted at the old share are still arriving)
        self._checking.append((rows, seconds))
        if len(self._checking) < self.cfg.verify:
            return False
        # against the prediction the move was made on: the fit itself has taken in the steps
        # at the new share by now (it refits at once while a new share is measured)
        measured = median(t for _, t in self._checking)
        off = measured / max(self._predicted, 1e-12)
        self._expected = None
        if 1 / self.cfg.verify_off <= off <= self.cfg.verify_off:
            return False
        # the fit's shape (its `a` may have been refitted from both shares by now) through
        # the measured point; a miss as large as a change of speed counts as one
        self._redraw(self._off(rows, measured), self._checking, missed=True,
                     jumped=not 1 / self.cfg.shift <= off <= self.cfg.shift)
        return True

    def _redraw(self, scale: float, obs: list[tuple[int, float]], missed: bool, jumped: bool) -> None:
        """Start the fit again from ``obs`` (a change of speed, or a move's missed
        prediction), with the fixed cost scaled by how far off the old fit was."""
        self.a *= scale
        self.redrawn, self.missed, self.jumped = True, missed, jumped
        self.obs.clear()
        self.obs.extend(obs)
        self._recent.clear()
        self._cached = None

    def measured(self, rows: int, steps: int) -> bool:
        """Whether the fit's last ``steps`` observations were at ``rows`` rows."""
        recent = list(self.obs)[-steps:]
        return len(recent) == steps and all(r == rows for r, _ in recent)

    def agrees(self, steps: int) -> bool:
        """Whether the median of the last ``steps`` observations (spikes included) lies within
        `shift` of the fit. A device whose speed changed a few steps ago (fewer than
        `persist`) already contradicts its fit, which still speaks of the old speed: after a
        hold-up that a move answered, the steps at the new split can be fast ones."""
        recent = list(self._recent)[-steps:]
        if len(recent) < steps:
            return True   # just redrawn: the fit is those steps
        off = median(self._off(r, t) for r, t, _ in recent)
        return 1 / self.cfg.shift < off < self.cfg.shift

    def _off(self, rows: int, seconds: float) -> float:
        """How many times the fit's prediction ``seconds`` took."""
        a, c = self.coefficients()
        return seconds / max(a + c * rows, 1e-12)

    def coefficients(self) -> tuple[float, float]:
        """(a, c): seconds per step and seconds per row."""
        if self._cached is None:
            self._unfitted = 0
            obs = list(self.obs)
            rows = [r for r, _ in obs]
            if max(rows) - min(rows) > self.cfg.min_rows_spread * (sum(rows) / len(rows)):
                slopes = sorted((t2 - t1) / (r2 - r1) for i, (r1, t1) in enumerate(obs)
                                for r2, t2 in obs[i + 1:] if r2 != r1)
                slope = median(slopes)
                if slope > 0:
                    a = median(t - slope * r for r, t in obs)
                    # speeds that drift between the shares' steps (a neighbour's load, the
                    # machine's) tilt the slopes: on the 2-core box fits put 18-26% of a step
                    # in `a` in the median and up to half (the model alone measures about 1%),
                    # and replayed, the first move after a slowdown missed its prediction by
                    # over 15% in 149 of 406 runs, against 87 with this bound. Beyond a
                    # quarter, the slopes must agree to show a fixed cost
                    spread = (slopes[3 * len(slopes) // 4] - slopes[len(slopes) // 4]) / slope
                    share = self.cfg.agreed_share if spread <= self.cfg.slopes_agree else self.cfg.fixed_share
                    self.a = min(max(a, 0.0), share * median(t for _, t in obs))
            c = median((t - self.a) / r for r, t in obs)
            self._cached = (self.a, max(c, 1e-12))
        return self._cached


class Planner:
    """Fits per-actor costs from step reports and proposes splits of a global batch."""

    def __init__(self, world: int, batch: int, config: PlannerConfig = PlannerConfig(),
                 caps: list[int | None] | None = None) -> None:
        self.world, self.batch, self.cfg = world, batch, config
        self.caps = list(caps) if caps is not None else [None] * world
        self._fits = [_Fit(config) for _ in range(world)]
        self._outside: list[deque[float]] = [deque(maxlen=config.overhead_window) for _ in range(world)]
        self._held = 0   # observations since the split last moved or a device last changed speed...
        self._weighed = False   # ...counted once a split has been weighed against the current one
        self._wanted: int | None = None   # `_held` when weighings began to show `min_gain` without a break
        self._correcting = False   # the next move corrects one whose prediction missed: it is not checked
        self._last: tuple[list[int], list[int]] | None = None   # (split before, split after) of the last move
        self.news = False   # a fit was redrawn since a split was last weighed: worth planning at once

    def observe(self, rank: int, rows: int, seconds: float, now: float, step_seconds: float | None = None) -> None:
        """One step's compute time of one actor (steps with no rows carry no cost information).

        ``step_seconds`` is the whole step as the actor saw it, collective and optimizer
        included; what it adds to the compute is the time no split can save.
        """
        if rows > 0:
            fit = self._fits[rank]
            fit.add(rows, seconds, now)
            self._held = 0 if fit.redrawn else self._held + self._weighed
            if fit.redrawn:
                self.news, self._wanted = True, None
                self._correcting = fit.missed
                if fit.jumped:
                    # a device changed speed (also when a move's check is what found it, missing
                    # by as much): earlier moves say nothing of the new balance, and going only
                    # half way back would be wrong
                    self._last = None
            fit.redrawn = False
        if step_seconds is not None and step_seconds >= seconds:
            self._outside[rank].append(step_seconds - seconds)

    def overhead(self) -> float:
        """Seconds per step spent outside compute by the actor that waits least (the last to
        arrive at the all-reduce): the floor under every split's step time."""
        medians = [median(d) for d in self._outside if d]
        return min(medians) if medians else 0.0

    def predict(self, split: list[int]) -> list[float]:
        """Predicted compute seconds of each actor for ``split``."""
        return [_finish(fit.coefficients(), rows) if rows > 0 else 0.0 for fit, rows in zip(self._fits, split)]

    def _members(self) -> list[bool]:
        """Which actors may be given rows (a cap of 0 keeps an actor out of the group)."""
        return [cap is None or cap > 0 for cap in self.caps]

    def _coefficients(self) -> list[tuple[float, float]]:
        return [f.coefficients() if member else (0.0, 1.0) for f, member in zip(self._fits, self._members())]

    def best(self) -> list[int] | None:
        """The split that equalises predicted finish times over the members, with no
        hysteresis (for a group that just changed); None while a member is unmeasured."""
        members = self._members()
        if any(member and f.count == 0 for f, member in zip(self._fits, members)):
            return None
        caps = [(self.batch if cap is None else cap) for cap in self.caps]
        coeffs = self._coefficients()
        return _round(_equalise(coeffs, caps, self.batch), coeffs, caps, self.batch, self.cfg.align)

    def propose(self, current: list[int], now: float) -> list[int] | None:
        """A better split than ``current``, or None to keep it."""
        members = self._members()
        if not all(f.ready for f, member in zip(self._fits, members) if member):
            return None
        if not all(f.measured(rows, self.cfg.settle) for f, rows in zip(self._fits, current) if rows > 0):
            return None  # judge the current split by measurements, not by extrapolation
        if not all(f.agrees(self.cfg.settle) for f, rows in zip(self._fits, current) if rows > 0):
            return None  # ...and by fits that those measurements do not contradict
        self._weighed, self.news = True, False
        # a correction gets one weighing: a miss measured at the new share is evidence,
        # not noise, but a correction not worth making now is not kept for later
        correcting, self._correcting = self._correcting, False
        caps = [self._cap(rank, current, now) if members[rank] else 0 for rank in range(self.world)]
        coeffs = self._coefficients()
        # a trust region: no share more than doubles or halves in one move, so a fit misled by
        # a few noisy steps cannot swing the split far (a bigger change takes two moves)
        floors = [min(rows / self.cfg.max_move, cap) for rows, cap in zip(current, caps)]
        caps = [min(cap, max(rows * self.cfg.max_move, self.cfg.align)) for rows, cap in zip(current, caps)]
        target = _equalise(coeffs, caps, self.batch, floors)
        if self._last is not None and self._last[1] == list(current):
            before, after = self._last
            if sum((t - c) * (a - b) for t, c, a, b in zip(target, current, after, before)) < 0:
                # this move would reverse the last one: the balance lies between the two splits
                # (or the fits are chasing noise), so it goes half way; swinging past it again
                # and again is the thrashing the margins are there to prevent
                target = [c + (t - c) / 2 for t, c in zip(target, current)]
        proposal = _round(target, coeffs, caps, self.batch, self.cfg.align)
        if proposal == list(current):
            self._wanted = None
            return None
        # the gain is judged on whole steps: when the collective dominates, a compute
        # imbalance is not worth chasing
        fixed = self.overhead()
        before, after = max(self.predict(current)) + fixed, max(self.predict(proposal)) + fixed
        # no thrashing: a split that has held a while, with every device at its speed, is
        # worth a move only for a clear gain (timings on a shared machine drift by 10-20%
        # and back), or for the usual one that every weighing has shown for as long again:
        # an imbalance that lasts is no drift, and holding it would cost every step
        steps = self.cfg.hold * sum(members)
        held = self._held >= steps
        worth = after < before * (1.0 - self.cfg.min_gain)
        self._wanted = (self._held if self._wanted is None else self._wanted) if worth else None
        lasts = self._wanted is not None and self._held - self._wanted >= steps
        gain = self.cfg.correct_gain if correcting else self.cfg.min_gain if not held or lasts \
            else self.cfg.held_gain
        if after >= before * (1.0 - gain):
            return None
        self._held, self._wanted = 0, None
        self._last = (list(current), proposal)
        # check the move's prediction on its first steps, unless it is itself the correction
        # of a missed one: on a noisy machine, checks of checks would chase each other's noise
        # (a check of the last move still under way, for a share that grew, ends here too)
        for fit, old, new in zip(self._fits, current, proposal):
            fit.expect(new if new != old and new > 0 and not correcting else None)
        return proposal

    def _cap(self, rank: int, current: list[int], now: float) -> int:
        cap = self.batch if self.caps[rank] is None else self.caps[rank]
        # in synchronous SGD every actor reports the same steps; one whose reports lag the
        # newest by long is silent, and its old figures must not earn it a larger share
        newest = max(f.last_seen for f in self._fits if f.last_seen is not None)
        seen = self._fits[rank].last_seen
        if seen is None or newest - seen > self.cfg.stale_after_s:
            cap = min(cap, current[rank])
        return cap


def _equalise(coeffs: list[tuple[float, float]], caps: list[int], batch: int,
              floors: list[float] | None = None) -> list[float]:
    """Continuous rows per actor, each within [floor, cap], so that every busy actor
    finishes at the same time (as near as the bounds allow)."""
    floors = floors or [0.0] * len(coeffs)

    def rows_at(t: float) -> list[float]:
        return [min(max((t - a) / c, lo), cap) for (a, c), lo, cap in zip(coeffs, floors, caps)]

    lo, hi = 0.0, max(a + c * batch for a, c in coeffs)
    # bisection on the common finish time, down to a millionth of a row (about 30 halvings;
    # it runs many times a second in the broker)
    tolerance = 1e-6 * min(c for _a, c in coeffs)
    for _ in range(100):
        if hi - lo <= tolerance:
            break
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(rows_at(mid)) < batch else (lo, mid)
    return rows_at(hi)


def _round(rows: list[float], coeffs: list[tuple[float, float]], caps: list[int], batch: int, align: int) -> list[int]:
    """Whole alignment units summing to ``batch``; every actor keeps at least one unit so it
    stays measured, and leftover rows go where they delay the finish least."""
    units = [min(max(int(r // align), 1 if cap >= align else 0), cap // align) for r, cap in zip(rows, caps)]
    out = [u * align for u in units]
    while sum(out) > batch:                      # the one-unit floors overshot: take from the slowest
        above = [i for i in range(len(out)) if out[i] > align] or [i for i in range(len(out)) if out[i] > 0]
        i = max(above, key=lambda i: _finish(coeffs[i], out[i]))
        out[i] -= min(align, sum(out) - batch)
    while sum(out) < batch:                      # hand out what is left, unit by unit
        step = min(align, batch - sum(out))
        room = [i for i in range(len(out)) if out[i] + step <= caps[i]] or list(range(len(out)))
        i = min(room, key=lambda i: (_finish(coeffs[i], out[i] + step), i))
        out[i] += step
    return out


def _finish(coeff: tuple[float, float], rows: int) -> float:
    a, c = coeff
    return a + c * rows if rows > 0 else 0.0


def rows_that_fit(memory_bytes: int, n_features: int, hidden: list[int], n_classes: int) -> int | None:
    """Largest share whose activations fit in half of a device's memory (None: not tracked)."""
    if memory_bytes <= 0:
        return None
    # forward activations, their gradients and autocast copies: ~3 floats per unit per row
    per_row = 4 * (n_features + 3 * (sum(hidden) + n_classes))
    return max(memory_bytes // 2 // per_row, 1)
