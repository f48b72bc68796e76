"""Pure arithmetic of a global batch, shared by the broker and the actors: how many steps,
which rows each actor takes, and the digest of a history of steps.

Global batch ``t`` of epoch ``e`` is ``perm_e[t*B : t*B + rows_t]`` where ``perm_e`` is a
permutation derived from (seed, epoch) (``leptonrt.nn.order``). A split ``[b_1, ..., b_n]``
with ``sum = B`` cuts it into contiguous pieces, rank order. The last batch of an epoch may
be short; its split is derived from the full one by largest remainders, the same way in
every process.

The history digest chains, for each step trained, which positions of which epoch's
permutation it trained (``fold``). It is the same for any split and any membership, so two
runs have equal digests exactly when their committed histories trained the same rows in
the same order: that is how exactly-once is shown, not by comparing weights (whose bits
depend on the order of the sums, and so on the split).
"""

from __future__ import annotations

import hashlib
import struct


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Every sample is used once per epoch, so the last batch may be short."""
    return -(-n_train // batch_size)


def batch_rows(n_train: int, batch_size: int, t: int) -> int:
    """Rows in global batch ``t`` of an epoch."""
    return min(batch_size, n_train - t * batch_size)


def _largest_remainder(weights: list[float], rows: int) -> list[int]:
    """Integers proportional to ``weights`` summing to ``rows``; ties go to lower ranks."""
    total = sum(weights)
    exact = [w * rows / total for w in weights]
    out = [int(v) for v in exact]
    order = sorted(range(len(out)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: rows - sum(out)]:
        out[i] += 1
    return out


def scale_split(split: list[int], rows: int) -> list[int]:
    """``split`` (summing to B) rescaled to a short batch of ``rows`` rows."""
    return list(split) if rows == sum(split) else _largest_remainder(split, rows)


def piece(split: list[int], rows: int, rank: int) -> tuple[int, int]:
    """(start, stop) of ``rank``'s rows inside a global batch of ``rows`` rows."""
    sizes = scale_split(split, rows)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def even_split(batch_size: int, world: int, align: int = 1) -> list[int]:
    """Equal shares in units of ``align`` rows; the remainder goes to the lowest ranks."""
    units, rest = divmod(batch_size, align)
    base, extra = divmod(units, world)
    split = [(base + (1 if r < extra else 0)) * align for r in range(world)]
    split[0] += rest
    return split


def share_among(base: list[int], members: set[int], batch_size: int, align: int = 1) -> list[int]:
    """``base`` (rows per rank) renormalised over ``members``, the others getting none, in
    units of ``align`` rows (the remainder goes to the lowest member). ``base`` itself
    comes back for the whole group."""
    weights = [b if r in members else 0 for r, b in enumerate(base)]
    if sum(weights) == 0:
        weights = [1 if r in members else 0 for r in range(len(base))]
    units, rest = divmod(batch_size, align)
    split = [u * align for u in _largest_remainder(weights, units)]
    split[min(members)] += rest
    return split


def split_from_fractions(batch_size: int, fractions: list[float]) -> list[int]:
    """Rows per rank for user-given shares such as ``0.7,0.3``."""
    return _largest_remainder(fractions, batch_size)


def history_start(seed: int, n_train: int, batch_size: int) -> bytes:
    """The digest of an empty history of a job with this data order."""
    return hashlib.sha256(b"leptonrt history 1" + struct.pack(">QQQ", seed, n_train, batch_size)).digest()


def fold(digest: bytes, step: int, n_train: int, batch_size: int) -> bytes:
    """The digest after global ``step`` trained its whole global batch on top of ``digest``."""
    spe = steps_per_epoch(n_train, batch_size)
    epoch, t = divmod(step, spe)
    first = t * batch_size
    return hashlib.sha256(digest + struct.pack(">QQQQ", step, epoch, first, first + batch_rows(n_train, batch_size, t))
                          ).digest()
