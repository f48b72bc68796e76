"""Fault injection for tests, read by actors from the ``LEPTONRT_FAULT`` environment variable.

Format: ``KIND@STEP`` or ``KIND@STEP:RANK`` (RANK defaults to every rank), several
separated by commas. Kinds:

- ``crash``  the process exits abruptly (``os._exit(17)``) before running step STEP
- ``hang``   the process stops making progress before step STEP (sleeps forever)
- ``start``  the process exits with code 17 right after the broker welcomes it (STEP ignored)

Never set this outside tests: it exists so failure handling can be proven with real processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ..errors import ConfigError

KINDS = ("crash", "hang", "start")


@dataclass(frozen=True)
class Fault:
    kind: str          # one of KINDS
    step: int          # global step before which it fires
    rank: int | None   # None: every rank


def parse(text: str | None) -> list[Fault]:
    """The faults described by ``text`` (empty or None: none)."""
    faults = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        try:
            kind, _, where = part.partition("@")
            step, _, rank = where.partition(":")
            fault = Fault(kind, int(step or 0), int(rank) if rank else None)
        except ValueError:
            raise ConfigError(f"LEPTONRT_FAULT: cannot parse {part!r} (expected KIND@STEP[:RANK])") from None
        if fault.kind not in KINDS:
            raise ConfigError(f"LEPTONRT_FAULT: unknown kind {fault.kind!r} (one of {', '.join(KINDS)})")
        faults.append(fault)
    return faults


class Injector:
    """Fires the configured faults of one actor at the points the actor reports."""

    def __init__(self, rank: int, text: str | None = None) -> None:
        text = os.environ.get("LEPTONRT_FAULT") if text is None else text
        self.faults = [f for f in parse(text) if f.rank in (None, rank)]

    def at_start(self) -> None:
        if any(f.kind == "start" for f in self.faults):
            os._exit(17)

    def before_step(self, step: int) -> None:
        for fault in self.faults:
            if fault.step == step and fault.kind == "crash":
                os._exit(17)
            if fault.step == step and fault.kind == "hang":
                while True:
                    time.sleep(3600)
