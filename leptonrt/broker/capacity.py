"""How many rows of a batch fit on a device (a memory cap for the rebalancer)."""

from __future__ import annotations


def rows_that_fit(memory_bytes: int, n_features: int, hidden: list[int], n_classes: int) -> int | None:
    """Largest share whose activations fit in half of a device's memory (None: not tracked)."""
    if memory_bytes <= 0:
        return None
    # forward activations, their gradients and autocast copies: ~3 floats per unit per row
    per_row = 4 * (n_features + 3 * (sum(hidden) + n_classes))
    return max(memory_bytes // 2 // per_row, 1)
