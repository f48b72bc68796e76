"""The order samples are trained in: one permutation per epoch, the same in every process."""

from __future__ import annotations

import torch


def epoch_permutation(n_train: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch ``epoch``; identical in every process for the same (seed, epoch)."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n_train, generator=gen)
