"""The half of a job's core that grants steps and acts on the rebalancer's decisions, with no I/O.

Members train only steps they were granted, a window ahead (``grants.Grants`` says how far),
each grant naming the split its steps use. The rebalancer is asked at most every
``plan_every_s``: a Move becomes a new split version (``Resplit``, voted on by the members
in their gradient sum); Cores move members onto other cores (``Pin``) and tell them their
threads (``Threads``) from the next step not yet granted; a change of membership is
``regroup.Regrouping``'s to carry out.

``Granting`` is a part of ``JobCore`` (``job.py``), like ``Regrouping``: it works on the state
``JobCore.__init__`` sets up.
"""

from __future__ import annotations

from ..messages import Grant, Resplit, Threads
from .events import Effect, Emit, Send, SplitChanged
from .lifecycle import JobState
from .rebalance import Cores, Move, Regroup as Membership
from .stats import Change


class Granting:
    """Grants out, the rebalancer asked, its moves made."""

    def window(self) -> int:
        """Steps granted ahead now (see ``grants.py``)."""
        return self.grants.window(self._far())

    def _far(self) -> bool:
        """Nothing can change the split soon: no rebalancer, and no actor still starting."""
        return self.rebalancer is None and not self.roster.any_starting()

    def _grant_more(self, force: bool = False) -> list[Effect]:
        if self.state != JobState.RUNNING or self.interrupted:
            return []
        span = self.grants.next(self.committed(), self.total_steps, far=self._far(),
                                topped_up=self.rebalancer is not None, force=force)
        if span is None:
            return []
        grant = Grant(job_id=self.job.job_id, first_step=span[0], end_step=span[1], split=list(self.splits.current),
                      committed=self.committed(), version=self.splits.version)
        return [Send(s.identity, grant) for s in self.roster.members()]

    def _rebalance(self, now: float) -> list[Effect]:
        if self.rebalancer is None or self.state != JobState.RUNNING or self.grants.boundary is not None \
                or now - self._planned_at < self.config.plan_every_s:
            return []
        self._planned_at = now
        members = [s.rank for s in self.roster.members()]
        stale = frozenset(s.rank for s in self.roster.members() if now - s.last_heard > self.liveness.hang_bound() / 4)
        decision = self.rebalancer.decide(self.splits.current, members, steps_left=self.total_steps - self.committed() - 1,
                                          stale=stale)
        if isinstance(decision, Move):
            return self._move(decision)
        if isinstance(decision, Cores):
            return self._recore(decision)
        if isinstance(decision, Membership):
            self._change = decision
            if self._cut_short_pays(decision):
                return self._reform_now(now)
            return self._schedule_boundary()
        return []

    def _recore(self, decision: Cores) -> list[Effect]:
        """Members onto the cores ``decision`` says, from the first step not yet granted: each
        that moves is told its cores and threads (and moves itself there before that step);
        the rebalancer's models switch when that step is committed (``_commit``), so no step
        on the old cores is read as one on the new."""
        self._declined = frozenset(decision.declined)
        ranks = [s.rank for s in self.roster.members()]
        cores = self.lending.cores(ranks, self._benched - set(ranks), self._declined)
        out: list[Effect] = []
        moved = self._lend(cores, set(ranks), out)
        at = self.grants.granted
        out += [Send(s.identity, Threads(job_id=self.job.job_id, generation=self.generation, from_step=at,
                                         threads=len(cores[s.rank]), cores=list(cores[s.rank])))
                for s in self.roster.members() if s.rank in moved]
        self._recored = (at, {rank: len(these) for rank, these in cores.items()})
        self.cores_changes += 1
        self.last_change = Change(at, tuple(self.splits.current), decision.reason)
        return out

    def _move(self, move: Move) -> list[Effect]:
        before = self.splits.current
        version = self.splits.decide(self.grants.granted, list(move.split), "rebalance")
        self.rebalances += 1
        self.last_change = Change(self.grants.granted, tuple(move.split), move.reason)
        step_s = self.grants.step_s or 0.0
        gain = move.saving_s / step_s if step_s > 0 else 0.0
        resplit = Resplit(job_id=self.job.job_id, generation=self.generation, version=version, split=list(move.split))
        out: list[Effect] = [Emit(SplitChanged(self.grants.granted, tuple(move.split), gain, move.reason))]
        out += [Send(s.identity, resplit) for s in self.roster.members()]
        return out + self._grant_more(force=before != self.splits.current)
