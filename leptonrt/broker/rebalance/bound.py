"""The confidence-bounded saving of a candidate: the policy's one question, as arithmetic.

A step lasts as long as its slowest actor's compute, plus the collective. Against a base
split whose slowest actor is i (predicted to take t_i), a candidate (a split, maybe of
another group) saves at least ``min_j (t_i - t_j(candidate))`` over the candidate's busy
actors j, plus what the collective saves. Each difference has its own sd: for j != i the
two predictions' spreads add; for j = i only the slope matters (the same actor at fewer
rows: ``c_i * shed`` with sd ``shed * sd(c_i)``). The bound is the minimum of the
differences less z sd each, with the z of a Bonferroni split of the stated confidence: half
of the tail to the slowest actor's own term, half shared by the others. It holds with at
least that confidence for all of them at once.
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


def bounded_savings(base: Slowest, ranks: np.ndarray, theta: np.ndarray, rows: np.ndarray,
                    confidence: float, collective: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Lower confidence bounds on the seconds per step each candidate saves against ``base``.

    ``ranks``/``theta``: the candidates' group and its models; ``rows``: one candidate per row
    (m x n, real-valued rows allowed); ``collective``: (mean, variance) of what the
    collective saves going to this group.
    """
    rows = np.atleast_2d(rows).astype(float)
    a, c, paa, pac, pcc = theta
    busy = rows > 0
    diff = base.mean - (a + c * rows) + collective[0]
    var = base.var + paa + 2 * rows * pac + rows * rows * pcc + collective[1]
    tail = 1.0 - confidence
    count = busy.sum(axis=1)
    at = np.flatnonzero(ranks == base.rank)
    own = np.zeros(len(rows), dtype=bool)
    if at.size:
        j = int(at[0])
        shed = base.rows - rows[:, j]
        diff[:, j] = base.c * shed + collective[0]
        var[:, j] = shed * shed * base.var_c + collective[1]
        own = busy[:, j]
    others = np.maximum(count - own, 1)
    z = np.empty_like(diff)
    z[:] = np.array([z_above(tail / 2 / k if o else tail / k) for k, o in zip(others.tolist(), own.tolist())])[:, None]
    if at.size:
        z[:, int(at[0])] = np.array([z_above(tail / 2 if k > 1 else tail) for k in count.tolist()])
    bound = np.where(busy, diff - z * np.sqrt(np.maximum(var, 0.0)), np.inf)
    return bound.min(axis=1)
