"""The settings of one training job, validated once, before anything starts.

``TrainJob`` is a wire record (``leptonrt.messages``): the rules that check it here are
the rules the wire enforces, so anything a user can build can be sent to a broker.
"""

from __future__ import annotations

from .errors import ConfigError
from .messages import OPTIMIZERS, PRECISIONS, Slowdown, TrainJob

__all__ = ["OPTIMIZERS", "PRECISIONS", "Slowdown", "TrainJob", "parse_slowdown"]


def parse_slowdown(text: str) -> Slowdown:
    """``RANK=FACTOR`` or ``RANK=FACTOR@FROM-TO`` (global steps, TO exclusive, either may be empty)."""
    try:
        rank, _, rest = text.partition("=")
        factor, _, steps = rest.partition("@")
        first, _, end = steps.partition("-")
        values = int(rank), float(factor), int(first or 0), int(end) if end else None
    except ValueError:
        raise ConfigError(f"--simulate-slowdown takes RANK=FACTOR[@FROM-TO], got {text!r}") from None
    try:
        return Slowdown(*values)
    except TypeError:
        raise ConfigError(f"--simulate-slowdown takes RANK=FACTOR[@FROM-TO], got {text!r}") from None
