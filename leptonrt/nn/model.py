"""The model a job trains: the built-in MLP, or one a user's factory builds, and its loss."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..imports import load_callable


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


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (logits, targets) -> per-sample losses (b,)
_PROBE_ROWS = 2


def build_model(n_features: int, n_classes: int, *, hidden, seed: int, model: str | None,
                device: torch.device) -> nn.Module:
    """The job's model on ``device``: the built-in MLP, or ``model``'s factory called as
    ``factory(n_features, n_classes)``. Like the MLP, a factory is called on the CPU under a
    forked RNG seeded with the job's seed, so every actor starts from the same weights when the
    factory draws them from torch's RNG; whatever it draws them from, the first group hands
    every member the lowest member's weights. Anything unusable is a one-line ConfigError."""
    if model is None:
        return build_mlp(n_features, hidden, n_classes, seed).to(device)
    factory = load_callable(model, "--model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            built = factory(n_features, n_classes)
        except Exception as exc:
            raise ConfigError(f"--model {model}: the factory failed: {type(exc).__name__}: {_line(exc)}") from None
    if not isinstance(built, nn.Module):
        raise ConfigError(f"--model {model}: the factory returned an object of type {type(built).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in built.parameters()):
        raise ConfigError(f"--model {model}: the module has no trainable parameters")
    built = built.to(device)
    probe = torch.zeros(_PROBE_ROWS, n_features, device=device)
    try:
        with torch.no_grad():
            out = built(probe)
    except Exception as exc:
        raise ConfigError(f"--model {model}: the module fails on a ({_PROBE_ROWS}, {n_features}) float batch: "
                          f"{type(exc).__name__}: {_line(exc)}") from None
    if not torch.is_tensor(out) or tuple(out.shape) != (_PROBE_ROWS, n_classes) or not out.is_floating_point():
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(f"--model {model}: the module maps a ({_PROBE_ROWS}, {n_features}) batch to {shape}; "
                          f"it must return float logits of shape ({_PROBE_ROWS}, {n_classes})")
    return built


def load_loss(loss: str | None) -> Loss | None:
    """The job's loss, ``loss(logits, targets)`` returning per-sample losses; None: cross-entropy."""
    return None if loss is None else load_callable(loss, "--loss")


def batch_loss(loss: Loss | None, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sum of the per-sample losses of a batch, an fp32 scalar. A custom loss must return
    per-sample losses: a mean cannot be summed exactly across actors (none knows its share of
    it), so any other shape is refused."""
    if loss is None:
        return F.cross_entropy(logits.float(), targets, reduction="sum")
    out = loss(logits.float(), targets)
    if not torch.is_tensor(out) or tuple(out.shape) != (logits.shape[0],):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(f"--loss returned {shape} for a batch of {logits.shape[0]}; it must return the "
                          f"per-sample losses, shape ({logits.shape[0]},) (no mean, no sum)")
    return out.float().sum()


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or "no message"
