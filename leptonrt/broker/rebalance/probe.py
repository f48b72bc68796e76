"""A move that cannot lose: what the rebalancer does when a change of speed was detected but
the bound cannot show any move to pay.

The bound weighs a move by each actor's cost per row, and while an actor has trained the
same rows since its last change of speed, that slope is the prior's guess: its doubt can
exceed the slope itself, and then no move of any size is shown to save anything. Nor can
one be learnt, since only rows that vary tell the slope. But two facts hold whatever the
slope: an actor's fixed cost and its cost per row are both at least zero. So an actor that
gives rows away takes at most its time now, and one that takes ``k`` more rows on top of
``r`` takes at most its time now times ``(r + k) / r`` (all of it per row). A move whose
receivers all finish, at that worst, before the slowest actor does now cannot make a step
slower: it is made when its expected saving over the horizon exceeds a move's cost, and
the steps after it tell the slopes, after which the bound decides as usual (further, or
back).
"""

from __future__ import annotations

import numpy as np

from .split import finish_times, finish_vars

STEPS = (1.0, 0.5, 0.25)   # fractions of the way to the target tried, largest first


def worst_finish(theta: np.ndarray, rows: np.ndarray, new: np.ndarray, z: float) -> np.ndarray:
    """Each actor's time at ``new`` rows at worst (its time now plus z sd, scaled up by the
    rows it gains as if every second of it were per row; not scaled down for rows it gives);
    +inf for one that gains rows from none (nothing to scale)."""
    high = finish_times(theta[0], theta[1], rows) + z * np.sqrt(finish_vars(theta, rows))
    gain = new > rows
    scale = np.where(rows > 0, new / np.maximum(rows, 1), np.inf)
    return np.where(gain, high * scale, np.where(new > 0, high, 0.0))


def safe_fractions(theta: np.ndarray, rows: np.ndarray, target: np.ndarray, slowest_s: float,
                   z: float) -> list[float]:
    """The fractions of the way from ``rows`` to ``target`` (real-valued) that cannot make the
    step slower than ``slowest_s``, the slowest actor's time now."""
    safe = []
    for step in STEPS:
        new = rows + step * (target - rows)
        receivers = new > rows
        if np.any(receivers) and np.all(worst_finish(theta, rows, new, z)[receivers] <= slowest_s):
            safe.append(step)
    return safe
