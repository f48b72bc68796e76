"""Pure arithmetic of a global batch: how many steps, and which rows each actor takes.

Global batch ``t`` of epoch ``e`` is ``perm_e[t*B : t*B + rows_t]`` where ``perm_e`` is a
permutation derived from (seed, epoch). A split ``[b_1, ..., b_n]`` with ``sum = B`` cuts
it into contiguous pieces, rank order. The last batch of an epoch may be short; its split
is derived from the full one by largest remainders, the same way in every process.
"""

from __future__ import annotations

import torch


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


def epoch_permutation(n_train: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``; identical in every process for the same (seed, epoch)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n_train, generator=gen)
