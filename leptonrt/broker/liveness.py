"""When an actor is hung: heartbeats come from the step loop, so silence means a stuck loop.

Pure: the times of what each actor last sent come in, a verdict goes out. libzmq's own
heartbeats would keep answering from a hung process, so they are not used; an actor's
reports, heartbeats and answers are what count.

- An actor silent for ``hang_bound()`` while its peers speak is hung: kill it.
- Forming a group blocks an actor (it cannot speak while it connects): its bound is
  longer by the time forming may take (the store, then the group, each with twice the
  collective timeout, then the state hand-over).
- Collectives time out (``collective_timeout()``) before the hang bound, so the peers of a
  hung actor speak up again before it is judged; when every actor is silent, they get that
  long first, and only then is the job failed (nobody left to tell who is stuck).
- Both bounds stretch to ``hang_steps`` times the longest recent step: a big model on a
  CPU is slow, not hung.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    kill: tuple[int, ...] = ()   # ranks taken for hung
    fail: str | None = None      # the job must fail: why


@dataclass(frozen=True)
class Watched:
    rank: int
    last_heard: float            # when it last sent anything (s, the caller's clock)
    joining: bool                # forming a group: silent by necessity


class Liveness:
    """The hang bound of one job, stretched by its longest recent step."""

    def __init__(self, hang_timeout_s: float, hang_steps: float = 3.0, decay: float = 0.99) -> None:
        self.hang_timeout_s = hang_timeout_s   # the user's bound (--hang-timeout)
        self.hang_steps = hang_steps           # ...or this many of the longest recent steps, if longer
        self.decay = decay                     # the longest step fades by this factor per step reported
        self.longest_s = 0.0

    def stepped(self, step_s: float) -> None:
        self.longest_s = max(self.decay * self.longest_s, step_s)

    def collective_timeout(self) -> float:
        """How long a collective may wait before it fails: under the hang bound."""
        return max(self.hang_timeout_s - 1.0, 1.0, self.hang_steps * self.longest_s)

    def hang_bound(self) -> float:
        """Seconds of silence after which a running actor is taken for hung."""
        return max(self.hang_timeout_s, self.hang_steps * self.longest_s)

    def joining_bound(self) -> float:
        return self.hang_bound() + 5 * self.collective_timeout() + 1.0

    def judge(self, watched: list[Watched], now: float, stopping: bool) -> Verdict:
        """Who is hung among ``watched`` (every alive actor the job waits on), or whether
        the job must fail."""
        bound = self.hang_bound()
        silent = [w for w in watched if now - w.last_heard > (self.joining_bound() if w.joining else bound)]
        if not silent:
            return Verdict()
        if len(silent) == len(watched):
            # a hung actor keeps its peers waiting in the collective; they speak again when it
            # times out (shorter than the bound), so only the hung one would stay silent
            if now - min(w.last_heard for w in silent) < bound + self.collective_timeout() + 2:
                return Verdict()
        if len(silent) == len(watched) or stopping:
            names = ", ".join(f"{w.rank} ({now - w.last_heard:.1f} s)" for w in silent)
            return Verdict(fail=f"rank(s) {names} sent nothing for over {bound:.3g} s: taken for hung")
        return Verdict(kill=tuple(w.rank for w in silent))

    def group_failed_grace(self) -> float:
        """How long a collective failure waits for an explanation: a peer's exit shows within
        milliseconds; a hung peer is judged when its silence passes the hang bound, which is
        this much later than its peers' collectives time out."""
        return max(0.5, self.hang_bound() - self.collective_timeout() + 0.5)
