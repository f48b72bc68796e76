"""Which split each step used: every split the broker decides is numbered (its version),
and the history puts each at the first step the members used it.

A split the rebalancer decides goes out at once (``Resplit``) and in every later grant;
the members switch to it together when their vote says all of them hold it, which may be
before the grants already out end. Their reports name the version of each step, so the
history records the step a split really started at. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SplitEntry:
    first: int               # first step that used (or may use) it
    split: tuple[int, ...]   # rows per rank
    why: str                 # "start", "rebalance" or "members" (a loss, a rejoin, a standby)
    version: int


class Splits:
    """The current split, its version, and the history of those in effect."""

    def __init__(self, start: int, split: list[int]) -> None:
        self.version = 0
        self.history = [SplitEntry(start, tuple(split), "start", 0)]
        self.current = list(split)

    def decide(self, first: int, split: list[int], why: str) -> int:
        """A new split, in effect from ``first`` at the latest; returns its version."""
        self.version += 1
        self.current = list(split)
        self.history.append(SplitEntry(first, tuple(split), why, self.version))
        return self.version

    def reset(self, step: int, split: list[int]) -> None:
        """A group forms at ``step``: later entries are gone (they will be replayed), and the
        new group's grants start from a version no earlier split may be agreed on over."""
        self.history = [e for e in self.history if e.first < step] or [SplitEntry(step, tuple(split), "start", 0)]
        self.version += 1
        if self.at(step) != tuple(split):
            self.history.append(SplitEntry(step, tuple(split), "members", self.version))
        self.current = list(split)

    def used(self, version: int, step: int) -> None:
        """A member trained ``step`` with split ``version``: if that is before the step the
        history has for it (the members agreed on it early), it starts there."""
        for i in range(len(self.history) - 1, 0, -1):
            entry = self.history[i]
            if entry.version < version:
                return
            if entry.version == version:
                if step < entry.first and self.history[i - 1].first < step:
                    self.history[i] = SplitEntry(step, entry.split, entry.why, version)
                return

    def at(self, step: int) -> tuple[int, ...]:
        """The split in effect at ``step``."""
        return next(e.split for e in reversed(self.history) if e.first <= step)

    def changes(self, trained: int) -> list[SplitEntry]:
        """The changes that took effect before ``trained`` steps were done (one decided too
        late to be used is no change)."""
        return [e for e in self.history[1:] if e.first < trained]
