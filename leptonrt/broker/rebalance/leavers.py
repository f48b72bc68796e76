"""Whom a smaller group would leave out: the candidates of standby, for the bound and for trials.

The member that carries least is always one (its rows are the fewest the others must take
on). Where the group spans hosts, so is every member of the host whose leaving the
collective's model expects to save most per row its members train: a far host's link costs
every member's all-reduce, and no single member's leaving shows that while others of its
host stay.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .model import CollectiveModel
from .split import finish_times


def leavers(ranks: np.ndarray, rows: np.ndarray, target: np.ndarray, theta: np.ndarray,
            hosts: Sequence[str] | None, collective: CollectiveModel) -> list[np.ndarray]:
    """Positions in ``ranks`` (the group, with ``rows`` now and ``target`` at its best split;
    ``theta``: its models) of the members each candidate leaves out: one or two candidates."""
    least = np.array([int(np.argmin(target - 1e-9 * finish_times(theta[0], theta[1], rows)))])
    if hosts is None:
        return [least]
    on = np.array([hosts[r] for r in ranks.tolist()])
    spanned = sorted(set(on.tolist()))
    now = collective.predict(ranks.tolist())
    best, most = None, 0.0
    for host in spanned if now is not None and len(spanned) > 1 else ():
        then = collective.predict(ranks[on != host].tolist())
        per_row = None if then is None else (now[0] - then[0]) / max(int(rows[on == host].sum()), 1)
        if per_row is not None and per_row > most:
            best, most = np.flatnonzero(on == host), per_row
    return [least] if best is None or np.array_equal(best, least) else [least, best]
