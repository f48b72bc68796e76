"""Splits that equalise predicted finish times: the arithmetic the policy and the oracle share.

Every actor's compute is modelled as ``a + c * rows`` for ``rows > 0`` and nothing for
``rows == 0`` (a zero-row member only joins the all-reduce). Pure numpy, O(N log N), so a
split for 512 actors costs tens of microseconds.
"""

from __future__ import annotations

import numpy as np

_TINY = 1e-15   # seconds per row below which a slope is treated as this (keeps 1/c finite)


def equalise(a: np.ndarray, c: np.ndarray, caps: np.ndarray, batch: int) -> np.ndarray:
    """Real-valued rows per actor, each within [0, cap], summing to ``batch``, such that every
    actor given rows finishes at the same time ``T = a + c * rows``; an actor whose fixed cost
    alone exceeds ``T`` gets none. ``caps`` must sum to at least ``batch``.

    The total rows at a common finish time ``T`` is piecewise linear and increasing in ``T``,
    with a kink where an actor starts (``T = a``) and where it reaches its cap. Newton's
    method on it is exact on each linear piece and usually lands in two or three steps; when
    it does not, sorting the kinks gives the exact ``T`` in one pass.
    """
    a, c = np.maximum(a, 0.0), np.maximum(c, _TINY)
    caps = caps.astype(float)
    if caps.sum() < batch:
        raise ValueError(f"caps sum to {caps.sum():.0f} rows, below the batch of {batch}")
    if batch <= 0:
        return np.zeros(len(a))
    inv, full = 1.0 / c, a + c * caps
    a_inv = a * inv
    free, top = (caps > 0).astype(float), np.zeros(len(a))
    for _ in range(6):
        weight = inv @ free
        if weight <= 0:
            break
        finish = (batch - caps @ top + a_inv @ free) / weight
        rows = np.clip((finish - a) * inv, 0.0, caps)
        if abs(np.add.reduce(rows) - batch) <= 1e-9 * batch:
            return rows
        free = ((finish > a) & (finish < full)).astype(float)
        top = ((finish >= full) & (caps > 0)).astype(float)
    return _equalise_sorted(a, c, caps, batch)


def _equalise_sorted(a: np.ndarray, c: np.ndarray, caps: np.ndarray, batch: int) -> np.ndarray:
    """``equalise`` by sorting the kinks of the total (always exact, slower)."""
    live = caps > 0
    points = np.concatenate([a[live], a[live] + c[live] * caps[live]])
    turns = np.concatenate([1.0 / c[live], -1.0 / c[live]])
    order = np.argsort(points, kind="stable")
    points, slope = points[order], np.cumsum(turns[order])   # slope of the total on [p_k, p_k+1]
    total = np.concatenate([[0.0], np.cumsum(slope[:-1] * np.diff(points))])
    total = np.maximum.accumulate(total)                     # rounding must not make it dip
    k = min(int(np.searchsorted(total, batch, side="right")) - 1, len(points) - 1)
    finish = points[k] + (batch - total[k]) / slope[k] if slope[k] > 0 else points[k]
    return np.clip((finish - a) / c, 0.0, caps)


def round_split(rows: np.ndarray, a: np.ndarray, c: np.ndarray, caps: np.ndarray, batch: int,
                align: int) -> np.ndarray:
    """Whole multiples of ``align`` (the last ``batch % align`` rows go to one actor) within
    the caps, summing to ``batch``: each actor keeps the whole units below its real share, and
    the units left go one by one to the actors that would finish earliest with one more."""
    caps = caps.astype(np.int64)
    out = np.minimum(np.floor(rows / align).astype(np.int64), caps // align) * align
    left = batch - int(out.sum())
    while left > 0:
        step = min(align, left)
        finish = np.where(out + step <= caps, a + c * (out + step), np.inf)
        room = int(np.isfinite(finish).sum())
        if room == 0:
            raise ValueError(f"no room for {left} more rows within the caps")
        n = min(left // step, room)
        pick = np.argpartition(finish, n - 1)[:n] if n < len(finish) else np.flatnonzero(np.isfinite(finish))
        out[pick] += step
        left -= n * step
    return out


def equalise_measured(a: np.ndarray, c: np.ndarray, caps: np.ndarray, batch: int, align: int) -> np.ndarray:
    """``equalise``, with every actor that can take ``align`` rows given at least that many: a
    member with no rows tells nothing of its speed, so it could never earn rows back. One
    whose fixed cost is not worth even that belongs on standby, which is the policy's call."""
    floors = np.where(caps >= align, align, 0)
    if floors.sum() > batch:
        return equalise(a, c, caps, batch)
    return floors + equalise(a + c * floors, c, caps - floors, batch - int(floors.sum()))


def best_split(a: np.ndarray, c: np.ndarray, caps: np.ndarray, batch: int, align: int) -> np.ndarray:
    """The split (whole rows) that equalises predicted finish times within the caps, every
    actor that can take one alignment unit keeping at least one."""
    return round_split(equalise_measured(a, c, caps, batch, align), a, c, caps, batch, align)


def finish_times(a: np.ndarray, c: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Predicted compute seconds of each actor at ``rows`` (0 for an actor with none)."""
    return np.where(rows > 0, a + c * rows, 0.0)


def finish_vars(theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The variance of each of those predictions (models' rows ``theta``: a, c, var a, cov,
    var c), at least 0."""
    return np.maximum(theta[2] + 2 * rows * theta[3] + rows * rows * theta[4], 0.0)


def rows_within(ranks: np.ndarray, rows: np.ndarray, group: np.ndarray) -> np.ndarray:
    """The rows each member of ``group`` has at the split ``rows`` of ``ranks`` (0 if none)."""
    at = np.searchsorted(ranks, group)
    inside = (at < len(ranks)) & (ranks[np.minimum(at, len(ranks) - 1)] == group)
    return np.where(inside, rows[np.minimum(at, len(ranks) - 1)], 0)


def full_split(world: int, members: np.ndarray, rows: np.ndarray) -> tuple[int, ...]:
    """Rows per rank of the whole world (0 for a rank outside ``members``)."""
    out = [0] * world
    for rank, n in zip(members.tolist(), rows.tolist()):
        out[rank] = int(n)
    return tuple(out)
