"""The MLP leptonrt trains."""

from __future__ import annotations

import torch
from torch import nn


def build_mlp(n_features: int, hidden: list[int] | tuple[int, ...], n_classes: int, seed: int) -> nn.Sequential:
    """Linear/ReLU stack ``n_features -> hidden... -> n_classes``, initialised from ``seed``.

    Built on the CPU under a forked RNG so every process that calls this with the same
    arguments holds bit-identical weights, whatever device it moves them to afterwards,
    and the caller's global RNG is left untouched.
    """
    widths = [n_features, *hidden, n_classes]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(w_in, w_out))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)
