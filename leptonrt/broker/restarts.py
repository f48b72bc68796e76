"""How often one rank (or one host) may be replaced: at most ``max_restarts`` losses within a sliding window.

Pure: time is a parameter.
"""

from __future__ import annotations


class RestartBudget:
    def __init__(self, max_restarts: int, window_s: float) -> None:
        self.max_restarts, self.window_s = max_restarts, window_s
        self._times: dict[int, list[float]] = {}

    def spend(self, rank: int | str, now: float) -> str | None:
        """Count a loss of ``rank`` (or of a host, ``"host NAME"``: all its actors at once) at
        ``now``; the problem to report when that is one too many."""
        times = [t for t in self._times.get(rank, []) if now - t <= self.window_s] + [now]
        self._times[rank] = times
        if len(times) > self.max_restarts:
            who = rank if isinstance(rank, str) else f"rank {rank}"
            return (f"{who} was lost {len(times)} times within {self.window_s:g} s "
                    f"(--max-restarts {self.max_restarts})")
        return None
