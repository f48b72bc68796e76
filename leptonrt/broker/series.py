"""A bounded history of one measurement over a whole job (step time, epoch loss), for the
live view's sparklines.

A job may commit millions of steps; the view wants a few dozen points that still cover all
of them. ``Series`` keeps at most ``capacity`` points, each the mean of ``every`` values in
a row: when the points fill up, neighbours merge pairwise and ``every`` doubles, so memory
stays bounded and the oldest values are never dropped, only coarser. The newest, unfinished
point is shown too, so a value appears as soon as it is added. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math


class Series:
    """At most ``capacity`` means of ``every`` consecutive values each (``every`` doubles as it fills)."""

    def __init__(self, capacity: int = 60) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError(f"a series holds an even number of points, at least 2; got {capacity}")
        self.capacity = capacity
        self.every = 1                  # values per point
        self._points: list[float] = []  # finished points, oldest first (fewer than capacity)
        self._sum, self._n = 0.0, 0     # the point being filled

    def add(self, value: float) -> None:
        """One more value (a non-finite one is skipped: it would poison every mean it joins)."""
        if not math.isfinite(value):
            return
        self._sum += value
        self._n += 1
        if self._n < self.every:
            return
        self._points.append(self._sum / self._n)
        self._sum, self._n = 0.0, 0
        if len(self._points) == self.capacity:
            self._points = [(a + b) / 2 for a, b in zip(self._points[::2], self._points[1::2])]
            self.every *= 2

    def points(self) -> tuple[float, ...]:
        """The points, oldest first; the last may be the mean of fewer than ``every`` values."""
        partial = (self._sum / self._n,) if self._n else ()
        return (*self._points, *partial)


__all__ = ["Series"]
