"""Fault injection for tests, read by actors from the ``LEPTONRT_FAULT`` environment variable.

Format: ``KIND@STEP`` or ``KIND@STEP:RANK`` (RANK defaults to every rank), several
separated by commas. Kinds:

- ``crash``      the process exits abruptly (``os._exit(17)``) before running step STEP
- ``hang``       the process stops making progress before step STEP (sleeps forever)
- ``allreduce``  the process exits abruptly while step STEP's all-reduce is in flight
- ``checkpoint`` the process exits abruptly while writing the checkpoint of step STEP,
                 after its data files and before its manifest
- ``start``      the process exits with code 17 right after the broker welcomes it
                 (STEP ignored), every time it is started

All but ``start`` fire in an actor's first process only: a replacement started after a
crash runs clean, so a test sees one fault and its recovery. Never set this outside
tests: it exists so failure handling can be proven with real processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

KINDS = ("crash", "hang", "allreduce", "checkpoint", "start")


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

    def __init__(self, rank: int, text: str | None = None, incarnation: int | None = None) -> None:
        text = os.environ.get("LEPTONRT_FAULT") if text is None else text
        if incarnation is None:
            incarnation = int(os.environ.get("LEPTONRT_INCARNATION", "0") or 0)
        self.faults = [f for f in parse(text) if f.rank in (None, rank) and (f.kind == "start" or incarnation == 0)]

    def _fires(self, kind: str, step: int) -> bool:
        return any(f.kind == kind and f.step == step for f in self.faults)

    def at_start(self) -> None:
        if any(f.kind == "start" for f in self.faults):
            os._exit(17)

    def before_step(self, step: int) -> None:
        if self._fires("crash", step):
            os._exit(17)
        if self._fires("hang", step):
            while True:
                time.sleep(3600)

    def inside_allreduce(self, step: int) -> None:
        if self._fires("allreduce", step):
            os._exit(17)

    def in_checkpoint(self, step: int) -> Callable[[str], None] | None:
        """A hook for the checkpoint writer that dies just before the manifest of ``step``."""
        if not self._fires("checkpoint", step):
            return None

        def hook(stage: str) -> None:
            if stage == "manifest":
                os._exit(17)
        return hook
