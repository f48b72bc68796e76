"""How far ahead the broker grants steps, and where grants stop for a regroup.

Actors train the steps they hold without waiting for the broker; a grant covers roughly
``window_s`` of work ahead of the last committed step. The window is short while a
rebalancer may change the split (a new split waits behind the steps already granted), and
long when nothing can change. A ``boundary`` (a snapshot step where the group will
re-form) caps every grant until the group has re-formed.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Grants:
    window_s: float                 # grant roughly this much time of work ahead...
    min_window: int                 # ...but never fewer steps than this...
    max_window: int                 # ...nor more than this
    granted: int                    # the first step not granted yet
    boundary: int | None = None     # grants stop here: the group re-forms at it
    step_s: float | None = None     # smoothed wall time of one step

    def stepped(self, step_s: float) -> None:
        self.step_s = step_s if self.step_s is None else 0.8 * self.step_s + 0.2 * step_s

    def window(self, far: bool) -> int:
        """Steps to grant ahead: far (``max_window``) when nothing can change the split and
        no boundary is set; else enough never to starve an actor, few enough that a new
        split or a boundary takes effect soon."""
        if far and self.boundary is None:
            return self.max_window
        if self.step_s is None or self.step_s <= 0:
            return self.min_window
        return max(self.min_window, min(self.max_window, math.ceil(self.window_s / self.step_s)))

    def next(self, committed: int, total: int, *, far: bool, topped_up: bool,
             force: bool = False) -> tuple[int, int] | None:
        """The steps ``[first, end)`` to grant now, or None (enough is out, or nothing is left).
        ``topped_up``: keep the window full (a rebalancer's new split waits behind it)."""
        if self.granted >= total:
            return None
        window = self.window(far)
        slack = window - max(1, window // 4) if topped_up else window // 2
        if not force and self.granted - (committed + 1) > slack:
            return None
        first = self.granted
        end = min(total, max(first + 1, committed + 1 + window))
        if self.boundary is not None:   # the group re-forms there: nothing past it yet
            end = min(end, self.boundary)
            if end <= first:
                return None
        self.granted = end
        return first, end
