"""What a step costs, as estimators: one actor's compute ``t = a + c * rows``, and the collective.

``CostModel`` is Huber-weighted recursive least squares in information form, with exponential
forgetting toward a prior (the fit's memory is about ``1 / (1 - forgetting)`` steps), and one
change-point test: a two-sided CUSUM on the standardised residuals, whose threshold follows
from a stated false-alarm rate through Siegmund's approximation of the average run length.

Noise is relative (a step's spread grows with its length), so residuals are weighed against
the predicted time. Forgetting toward a prior, rather than toward nothing, matters: while an
actor always trains the same rows, the data pins ``a + c * rows`` and nothing else, and the
split of a step between fixed cost and cost per row stays as uncertain as the prior says,
instead of growing without bound (covariance wind-up). A big move is then a big
extrapolation with a wide spread, which the policy's bounded saving prices in.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from statistics import median
from typing import Collection, Sequence

# Model assumptions (not tuning knobs; each is a statement about step times):
HUBER = 4.0                 # residuals beyond this many noise sd are down-weighted in the fit and
                            # clipped in the change test: a lone spike moves neither much
CUSUM_REFERENCE = 0.5       # the change test's reference, in noise sd: tuned to a shift of 1 sd
                            # (reference = shift / 2); a larger shift shows sooner
PRIOR_FIXED_SHARE = 0.3     # before rows vary, a step is taken to be 30% fixed cost...
PRIOR_FIXED_SHARE_SD = 0.2  # ...give or take 20% of a step (one sd)
PRIOR_LEVEL_SD = 0.5        # relative sd of an actor's level before its first step (and long after its last)
PRIOR_NOISE_CV = 0.2        # a step's relative noise (sd / mean) assumed before steps are seen...
PRIOR_NOISE_STEPS = 2.0     # ...worth this many steps of evidence
RESTART_STEPS = 8           # a detected change's new level: the median over at most this many latest steps
_MIN_SECONDS = 1e-9         # predictions are floored here (a model never predicts a free step)
_ONE_HOST: frozenset[str] = frozenset()   # the span of every group when hosts are not told


def huber_variance(k: float = HUBER) -> float:
    """E[min(Z^2, k^2)] for a standard normal Z: what a clipped squared residual averages."""
    inside = math.erf(k / math.sqrt(2.0)) - 2.0 * k * math.exp(-k * k / 2.0) / math.sqrt(2.0 * math.pi)
    return inside + k * k * math.erfc(k / math.sqrt(2.0))


_KAPPA = huber_variance()


@lru_cache(maxsize=64)
def cusum_threshold(false_alarm: float, reference: float = CUSUM_REFERENCE) -> float:
    """The threshold ``h`` of a two-sided CUSUM on N(0, 1) residuals that raises a false alarm
    with probability ``false_alarm`` per step: each side's average run length is
    ``2 / false_alarm``, and Siegmund's approximation gives
    ``ARL = (exp(2 k b) - 2 k b - 1) / (2 k^2)`` with ``b = h + 1.166``."""
    target = 2.0 / false_alarm
    lo, hi = 0.0, 200.0
    for _ in range(200):
        b = (lo + hi) / 2
        arl = (math.expm1(2 * reference * b) - 2 * reference * b) / (2 * reference ** 2)
        lo, hi = (b, hi) if arl < target else (lo, b)
    return max(hi - 1.166, 0.0)


class CostModel:
    """One actor's compute seconds per step as ``a + c * rows``, with its uncertainty.

    ``update(rows, seconds)`` takes one step; ``predict(rows)`` gives the mean step time and
    the sd of that mean (what the fit does not know, not the spread of one step: that is
    ``noise * mean``); ``changed()`` says whether the latest step completed a change of regime.
    """

    __slots__ = ("forgetting", "threshold", "observations", "changes", "last_change", "noise", "a", "c",
                 "_changed", "_started", "_up", "_down", "_up_steps", "_down_steps", "_recent", "_noise_sum",
                 "_noise_weight", "_jaa", "_jac", "_jcc", "_ha", "_hc", "_qaa", "_qac", "_qcc", "_qa", "_qc",
                 "_paa", "_pac", "_pcc")

    def __init__(self, forgetting: float = 0.99, false_alarm: float = 1e-6) -> None:
        self.forgetting = forgetting        # per-step weight of the past: memory ~ 1/(1 - forgetting) steps
        self.threshold = cusum_threshold(false_alarm)
        self.observations = 0               # steps fitted
        self.changes = 0                    # changes of regime detected
        self.last_change = 1.0              # the latest change's ratio of new to old step time
        self._changed = False
        self._started = False
        self._up = self._down = 0.0         # the two CUSUM sums...
        self._up_steps = self._down_steps = 0   # ...and how many steps since each was last zero
        self._recent: deque[tuple[int, float]] = deque(maxlen=RESTART_STEPS)
        self._noise_sum, self._noise_weight = PRIOR_NOISE_STEPS * PRIOR_NOISE_CV ** 2, PRIOR_NOISE_STEPS
        self.noise = PRIOR_NOISE_CV         # relative noise of one step (sd / mean), robustly estimated

    # -- the estimator ----------------------------------------------------------------

    def update(self, rows: int, seconds: float) -> None:
        """Take one step of ``rows`` rows that took ``seconds`` of compute (a step with no rows
        says nothing about compute and is ignored)."""
        self._changed = False
        if rows <= 0 or not seconds > 0 or math.isinf(seconds):
            return
        if not self._started:
            self._start(rows, seconds)
            return
        mean = self.a + self.c * rows
        mean = mean if mean > _MIN_SECONDS else _MIN_SECONDS
        noise = self.noise
        noise_var = (noise * mean) ** 2
        spread = self._paa + 2 * rows * self._pac + rows * rows * self._pcc   # the mean's own variance
        z = (seconds - mean) / math.sqrt(noise_var + (spread if spread > 0 else 0.0))
        self._recent.append((rows, seconds))
        if self._test(z):
            self._restart()
            return
        weight = 1.0 if -HUBER <= z <= HUBER else HUBER / abs(z)
        self._fit(rows, seconds, weight / noise_var)
        # the noise scale: a forgetting mean of clipped squared relative residuals
        relative = (seconds - mean) / mean
        lam = self.forgetting
        self._noise_sum = lam * self._noise_sum + min(relative * relative, (HUBER * noise) ** 2) / _KAPPA
        self._noise_weight = lam * self._noise_weight + 1.0
        self.noise = math.sqrt(self._noise_sum / self._noise_weight)
        self.observations += 1

    def predict(self, rows: float, idle: int = 0) -> tuple[float, float]:
        """(mean, sd of the mean) of the compute seconds at ``rows``, as the model stands after
        ``idle`` further steps with no observation (what it knew fades toward the prior)."""
        a, c, paa, pac, pcc = self.state(idle)
        return a + c * rows, math.sqrt(max(paa + 2 * rows * pac + rows * rows * pcc, 0.0))

    def changed(self) -> bool:
        """Whether the latest step completed a change of regime (the fit restarted from it)."""
        return self._changed

    @property
    def started(self) -> bool:
        return self._started

    def state(self, idle: int = 0) -> tuple[float, float, float, float, float]:
        """(a, c, var a, cov a c, var c) after ``idle`` steps unobserved."""
        if idle <= 0:
            return self.a, self.c, self._paa, self._pac, self._pcc
        keep = self.forgetting ** idle
        jaa, jac, jcc, ha, hc = (keep * x + (1 - keep) * p for x, p in zip(
            (self._jaa, self._jac, self._jcc, self._ha, self._hc),
            (self._qaa, self._qac, self._qcc, self._qa, self._qc)))
        return _solve(jaa, jac, jcc, ha, hc)

    def age(self, steps: int) -> None:
        """Let ``steps`` steps pass with no observation (an actor on standby, or one whose steps
        were left out): what the fit knew fades toward the prior, as ``predict(rows, steps)`` says."""
        if steps > 0 and self._started:
            keep = self.forgetting ** steps
            self._jaa, self._jac, self._jcc, self._ha, self._hc = (keep * x + (1 - keep) * p for x, p in zip(
                (self._jaa, self._jac, self._jcc, self._ha, self._hc),
                (self._qaa, self._qac, self._qcc, self._qa, self._qc)))
            self.a, self.c, self._paa, self._pac, self._pcc = _solve(
                self._jaa, self._jac, self._jcc, self._ha, self._hc)

    # -- internals --------------------------------------------------------------------

    def _start(self, rows: int, seconds: float) -> None:
        """The prior, centred on the first step: ``a = f * t``, ``c = (1 - f) * t / rows`` with
        the fixed share ``f`` and the level ``t`` both uncertain; then the step itself."""
        self._prior_at(rows, seconds)
        self._jaa, self._jac, self._jcc = self._qaa, self._qac, self._qcc
        self._ha, self._hc = self._qa, self._qc
        self._started = True
        self._fit(rows, seconds, 1.0 / (self.noise * seconds) ** 2, forget=False)
        self.observations = 1

    def _prior_at(self, rows: float, t: float) -> None:
        """The prior for a step of ``t`` seconds at ``rows`` rows (see ``_start``)."""
        f = PRIOR_FIXED_SHARE
        self._set_prior((f * t, (1 - f) * t / rows), (t, -t / rows), (f * t, (1 - f) * t / rows))

    def _set_prior(self, mean: tuple[float, float], shape: tuple[float, float], level: tuple[float, float]) -> None:
        """Prior information J0 = inv(S) with S = sd_f^2 v v' + sd_level^2 u u' (v: a change of
        the fixed share at a fixed step time, u: a change of level), and J0 times its mean."""
        (va, vc), (ua, uc) = shape, level
        sf, sl = PRIOR_FIXED_SHARE_SD ** 2, PRIOR_LEVEL_SD ** 2
        saa, sac, scc = sf * va * va + sl * ua * ua, sf * va * vc + sl * ua * uc, sf * vc * vc + sl * uc * uc
        self._set_prior_cov(mean, saa, sac, scc)

    def _set_prior_cov(self, mean: tuple[float, float], saa: float, sac: float, scc: float) -> None:
        det = saa * scc - sac * sac
        self._qaa, self._qac, self._qcc = scc / det, -sac / det, saa / det
        self._qa = self._qaa * mean[0] + self._qac * mean[1]
        self._qc = self._qac * mean[0] + self._qcc * mean[1]

    def _fit(self, rows: int, seconds: float, info: float, forget: bool = True) -> None:
        """One recursive least-squares step in information form: J <- lam J + (1 - lam) J0 + w x x'."""
        lam, keep = (self.forgetting, 1 - self.forgetting) if forget else (1.0, 0.0)
        jaa = lam * self._jaa + keep * self._qaa + info
        jac = lam * self._jac + keep * self._qac + info * rows
        jcc = lam * self._jcc + keep * self._qcc + info * rows * rows
        ha = lam * self._ha + keep * self._qa + info * seconds
        hc = lam * self._hc + keep * self._qc + info * seconds * rows
        self._jaa, self._jac, self._jcc, self._ha, self._hc = jaa, jac, jcc, ha, hc
        det = jaa * jcc - jac * jac
        if not det > 1e-12 * jaa * jcc:
            # the information no longer tells a from c within float precision (a fit that
            # wandered along the direction constant rows leave open): begin again from this step
            self._prior_at(rows, seconds)
            w = 1.0 / (self.noise * seconds) ** 2
            self._jaa, self._jac, self._jcc = self._qaa + w, self._qac + w * rows, self._qcc + w * rows * rows
            self._ha, self._hc = self._qa + w * seconds, self._qc + w * seconds * rows
            self.a, self.c, self._paa, self._pac, self._pcc = _solve(
                self._jaa, self._jac, self._jcc, self._ha, self._hc)
            return
        paa, pac, pcc = jcc / det, -jac / det, jaa / det
        self.a, self.c, self._paa, self._pac, self._pcc = paa * ha + pac * hc, pac * ha + pcc * hc, paa, pac, pcc

    def _test(self, z: float) -> bool:
        """The CUSUM step: True when either side crosses the threshold."""
        z = HUBER if z > HUBER else -HUBER if z < -HUBER else z
        up, down = self._up + z - CUSUM_REFERENCE, self._down - z - CUSUM_REFERENCE
        self._up, self._up_steps = (up, self._up_steps + 1) if up > 0 else (0.0, 0)
        self._down, self._down_steps = (down, self._down_steps + 1) if down > 0 else (0.0, 0)
        return up > self.threshold or down > self.threshold

    def _restart(self) -> None:
        """Start again from the new regime: the steps since the alarming side of the test last
        stood at zero are its evidence. A device that is k times slower is so for its fixed
        cost too, so the fit keeps its shape and scales by the median ratio k of those steps;
        the level is then known only as well as those few steps tell (the delta method:
        Cov' = k^2 Cov + var(k) theta theta')."""
        steps = min(self._up_steps if self._up > self.threshold else self._down_steps, len(self._recent))
        run = list(self._recent)[-max(steps, 1):]
        k = median(t / max(self.a + self.c * r, _MIN_SECONDS) for r, t in run)
        var_k = (math.pi / 2) * (self.noise * k) ** 2 / len(run)   # the median's sampling variance
        a, c = self.a, self.c
        saa = k * k * self._paa + var_k * a * a
        sac = k * k * self._pac + var_k * a * c
        scc = k * k * self._pcc + var_k * c * c
        det = saa * scc - sac * sac
        self._jaa, self._jac, self._jcc = scc / det, -sac / det, saa / det
        self._ha = self._jaa * k * a + self._jac * k * c
        self._hc = self._jac * k * a + self._jcc * k * c
        self.a, self.c, self._paa, self._pac, self._pcc = k * a, k * c, saa, sac, scc
        # the prior moves to the new regime: centred on its steps (scaling the old one by k
        # instead would compound every k's error over many changes)
        rows = median(r for r, _ in run)
        self._prior_at(rows, median(t for _, t in run))
        self._up = self._down = 0.0
        self._up_steps = self._down_steps = 0
        self._recent.clear()
        self.changes += 1
        self.last_change = k
        self._changed = True


def _solve(jaa: float, jac: float, jcc: float, ha: float, hc: float) -> tuple[float, float, float, float, float]:
    """(a, c) = J^-1 h and the covariance J^-1 of a 2x2 information state."""
    det = jaa * jcc - jac * jac
    paa, pac, pcc = jcc / det, -jac / det, jaa / det
    return paa * ha + pac * hc, pac * ha + pcc * hc, paa, pac, pcc


class CollectiveModel:
    """The all-reduce's own seconds per step of a group, by its composition: its size and the
    hosts it spans (0 for a group of one).

    Per composition seen, a robust exponentially weighted mean of the step's smallest
    collective time over its members (the last to arrive waits only for the collective
    itself). One never seen is read as ``local(n) + link(H)``, as the simulator's truth is:

    - ``local(n)``: the all-reduce of n members on one host (taken to cost the same on every
      host): seen, or read from the nearest size seen on one host, scaled by log2(n) (a tree or
      recursive-doubling all-reduce), with a sd of half the change that scaling makes on top of
      the seen one's. Before any group on one host is seen, the share of the nearest
      composition seen that is local is unknown, anywhere from none to all: half, give or
      take half.
    - ``link(H)``: 0 on one host; across hosts, what the ring's slowest link adds (a ring runs
      in lock-step at its slowest link). Each composition seen across hosts tells the link of
      its span: its cost less ``local(n)``. A span never seen lies between the dearest span
      seen inside it (more hosts cross no faster link) and the dearest of its hosts' least
      links seen (a host's link is at most that of any span it was in): the midpoint, give or
      take half the gap. A host never seen across hosts leaves it unknown (None).

    Every guess is priced as one (sds add): so the bound decides conservatively, and a trial
    measures what the models cannot tell. With every rank on one host (``hosts`` None) this
    is a model per group size.
    """

    def __init__(self, forgetting: float = 0.99, hosts: Sequence[str] | None = None) -> None:
        self.forgetting = forgetting
        self._hosts = list(hosts) if hosts is not None else None
        # (size, hosts spanned) -> [weight, mean, weighted squared deviation]
        self._seen: dict[tuple[int, frozenset[str]], list[float]] = {}

    def composition(self, members: Collection[int]) -> tuple[int, frozenset[str]]:
        """(size, hosts spanned) of the group of ranks ``members``."""
        hosts = self._hosts
        return len(members), _ONE_HOST if hosts is None else frozenset(hosts[int(r)] for r in members)

    def update(self, members: Collection[int], seconds: float) -> None:
        key = self.composition(members)
        if key[0] < 2 or not seconds >= 0 or math.isinf(seconds):
            return
        w, mean, dev = self._seen.get(key, (0.0, seconds, 0.0))
        if w > 0:
            sd = math.sqrt(dev / w) if dev > 0 else abs(mean) * PRIOR_NOISE_CV
            limit = HUBER * max(sd, 1e-12)
            seconds = min(max(seconds, mean - limit), mean + limit)
        lam = self.forgetting
        w = lam * w + 1.0
        delta = seconds - mean
        mean += delta / w
        dev = lam * dev + delta * (seconds - mean)
        self._seen[key] = [w, mean, dev]

    def predict(self, members: Collection[int]) -> tuple[float, float] | None:
        """(mean, sd of the mean) seconds for the group of ranks ``members``; None before any
        group is seen, or for a span with a host never seen across hosts."""
        size, span = self.composition(members)
        if size <= 1:
            return 0.0, 0.0
        if (size, span) in self._seen:
            return self._estimate((size, span))
        if not self._seen:
            return None
        local = self._local(size)
        if len(span) <= 1:
            return local
        link = self._link(span)
        return None if link is None else (local[0] + link[0], local[1] + link[1])

    def sizes(self) -> tuple[tuple[int, float, float, float], ...]:
        """(size, mean s, sd of the mean s, weight in steps) per composition seen."""
        out = []
        for key in sorted(self._seen, key=lambda k: (k[0], sorted(k[1]))):
            mean, sd = self._estimate(key)
            out.append((key[0], mean, sd, self._seen[key][0]))
        return tuple(out)

    # -- internals --------------------------------------------------------------------

    def _estimate(self, key: tuple[int, frozenset[str]]) -> tuple[float, float]:
        w, mean, dev = self._seen[key]
        spread = math.sqrt(dev / w) if w > 1 else abs(mean) * PRIOR_NOISE_CV
        return mean, spread / math.sqrt(w)

    def _local(self, size: int) -> tuple[float, float]:
        """``local(size)``: see the class docstring."""
        local = [key for key in self._seen if len(key[1]) <= 1]
        near = self._nearest(local or list(self._seen), size)
        seen, seen_sd = self._estimate(near)
        mean = seen * math.log2(size) / math.log2(near[0])
        if local:
            return mean, seen_sd + 0.5 * abs(mean - seen)
        return 0.5 * mean, seen_sd + 0.5 * mean

    @staticmethod
    def _nearest(keys: list[tuple[int, frozenset[str]]], size: int) -> tuple[int, frozenset[str]]:
        return min(keys, key=lambda k: (abs(math.log2(k[0]) - math.log2(size)), k[0], sorted(k[1])))

    def _link(self, span: frozenset[str]) -> tuple[float, float] | None:
        """``link(span)`` for a span of two hosts or more: see the class docstring."""
        links: dict[frozenset[str], tuple[float, float]] = {}
        for key in sorted(self._seen, key=lambda k: -self._seen[k][0]):   # per span, its most weighed size
            if len(key[1]) > 1 and key[1] not in links:
                seen, seen_sd = self._estimate(key)
                local, local_sd = self._local(key[0])
                links[key[1]] = max(seen - local, 0.0), seen_sd + local_sd
        if span in links:
            return links[span]
        bounds = [min((links[s] for s in links if host in s), default=None) for host in span]
        if any(bound is None for bound in bounds):
            return None
        high, high_sd = max(bounds)  # type: ignore[type-var]
        low = max((links[s][0] for s in links if s <= span), default=0.0)
        return 0.5 * (low + high), high_sd + 0.5 * (high - low)
