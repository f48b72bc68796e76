"""The confidence-bounded saving of a candidate: the policy's one question, as arithmetic.

A step lasts as long as its slowest actor's compute, plus the collective. Against a base
split whose slowest actor is i (predicted to take t_i), a candidate (a split, maybe of
another group) saves at least ``min_j (t_i - t_j(candidate))`` over the candidate's busy
actors j, plus what the collective saves. Each difference has its own sd: for j != i the
two predictions' spreads add; for j = i only the slope matters (the same actor at fewer
rows: ``c_i * shed`` with sd ``shed * sd(c_i)``). Any actor's time now bounds the current
step from below, not only the slowest's: so each j may instead be weighed against its own
time now (``c_j * shed``, sd ``shed * sd(c_j)``), whichever bound is higher. A
near-critical actor that the candidate also relieves then does not sink the bound by the
doubt whether it, and not i, is the slowest.

The bound is the minimum of the differences less z sd each, with the z of a Bonferroni
split of the stated confidence. The levels (each actor's time at its rows now) err
independently: one share of the tail per actor. The slopes are taken to err together: where
rows never varied, every actor's slope is the prior's split of a step between fixed cost
and cost per row, one statement about the job (its model, its kernels) rather than about
each device, so it is one event with half of the tail. Without that, N actors whose slopes
were never measured could never be shown to gain from any move at large N, and none
would ever teach one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np


@lru_cache(maxsize=4096)
def z_above(tail: float) -> float:
    """The standard normal quantile with ``tail`` of the mass above it."""
    return NormalDist().inv_cdf(1.0 - tail)


@dataclass(frozen=True)
class Slowest:
    """The actor predicted to finish last at the split a candidate is weighed against."""

    rank: int
    rows: float
    mean: float       # its predicted compute seconds there
    var: float        # the variance of that prediction (s^2)
    c: float          # its seconds per row...
    var_c: float      # ...and that slope's variance


def slowest(ranks: np.ndarray, theta: np.ndarray, rows: np.ndarray) -> Slowest:
    """The busy member of ``ranks`` (with model rows ``theta``: a, c, var a, cov, var c) that
    is predicted to finish last at ``rows``."""
    mean = np.where(rows > 0, theta[0] + theta[1] * rows, -np.inf)
    i = int(np.argmax(mean))
    r = float(rows[i])
    var = float(theta[2, i] + 2 * r * theta[3, i] + r * r * theta[4, i])
    return Slowest(int(ranks[i]), r, float(mean[i]), max(var, 0.0), float(theta[1, i]), float(theta[4, i]))


def bounded_savings(base: Slowest, ranks: np.ndarray, theta: np.ndarray, rows: np.ndarray, before: np.ndarray,
                    confidence: float, collective: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Lower confidence bounds on the seconds per step each candidate saves against the base.

    ``ranks``/``theta``: the candidates' group and its models; ``rows``: one candidate per row
    (m x n, real-valued rows allowed); ``before``: each of those actors' rows at the base split
    (0 for one not in it); ``collective``: (mean, variance) of what the collective saves.
    """
    rows = np.atleast_2d(rows).astype(float)
    a, c, paa, pac, pcc = theta
    busy = rows > 0
    saved, doubt = collective
    # Bonferroni: half the tail to the slopes (one event: see the module's docstring), half
    # shared by the comparisons with the base's slowest actor, one per busy actor
    tail = 1.0 - confidence
    z_slope = z_above(tail / 2)
    z_level = np.array([z_above(tail / 2 / max(k, 1)) for k in busy.sum(axis=1).tolist()])[:, None]
    # against the base's slowest actor: its time now, less j's time in the candidate
    var = paa + rows * (2 * pac + rows * pcc)
    var += base.var + doubt
    np.maximum(var, 0.0, out=var)
    vs_base = (base.mean + saved) - (a + c * rows) - z_level * np.sqrt(var)
    # against j's own time now: what its shed rows save (no better than nothing if it gains)
    shed = before - rows
    if doubt > 0:
        vs_own = c * shed + saved - z_slope * np.sqrt(shed * shed * pcc + doubt)
    else:
        vs_own = shed * c - z_slope * np.abs(shed) * np.sqrt(pcc)
    at = np.flatnonzero(ranks == base.rank)
    if at.size:    # the base actor's two terms are one: the same actor at other rows
        j, shed_j = int(at[0]), base.rows - rows[:, int(at[0])]
        vs_base[:, j] = base.c * shed_j + saved - z_slope * np.sqrt(shed_j * shed_j * base.var_c + doubt)
    bound = np.maximum(vs_base, vs_own, out=vs_base) if before.all() else \
        np.maximum(vs_base, np.where(before > 0, vs_own, -np.inf), out=vs_base)
    bound[~busy] = np.inf
    return bound.min(axis=1)
