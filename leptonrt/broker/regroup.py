"""The half of a job's core that changes who is in the gradient group, with no I/O.

A member lost, a collective failed, a replacement said hello, or the rebalancer chose other
members: each ends in ``_form``, the group's next generation, formed at a step every member
holds a snapshot of. ``staying`` members restore it, ``joiners`` take the lowest member's
state, ``benched`` ones go on standby; the ledger is rewound there, so what the old group
had not committed is trained again exactly once.

``Regrouping`` is a part of ``JobCore`` (``job.py``), kept here so that each file reads as one
story; it works on the state ``JobCore.__init__`` sets up (roster, ledger, splits, grants).
"""

from __future__ import annotations

from ..batches import share_among
from ..messages import Regroup, Standby, Welcome
from .events import ActorLost, Benched, Effect, Emit, Pin, Recovered, Respawn, Send
from .lifecycle import SLOT, JobState, SlotState
from .rebalance.when import cut_short_pays
from .roster import Slot
from .stats import Change


class Regrouping:
    """Losing actors, re-forming the group, and the messages that tell its members."""

    def _may_restart(self, slot: Slot, now: float, lost: bool = True, host: str | None = None,
                     together: tuple[Slot, ...] = ()) -> bool:
        """Whether the job may go on after losing ``slot`` (and the slots lost ``together``
        with it, a host's: the budget is then the host's, spent once)."""
        problem = self._restarts.spend(slot.rank if host is None else f"host {host}", now)
        if problem is not None:
            self.budget_exceeded = True
            self.problems.append(problem)
            return False
        gone = {slot.rank, *(s.rank for s in together)} if lost else set()
        survivors = [s for s in self.roster.members() if s.rank not in gone and s.has_state]
        if not survivors:
            self.problems.append("no actor with the training state survived; nothing to recover from")
            return False
        return True

    def _lose(self, slot: Slot, how: str, now: float, together: tuple[Slot, ...] = ()) -> list[Effect]:
        """Start a replacement; if the lost actor was a member, the others re-form the group
        now without it (and replay what it had not committed), taking over its share. Slots
        lost ``together`` with it (a host's) go the same way, in the same one regroup."""
        member = any(s.member for s in (slot, *together))
        out: list[Effect] = []
        for lost in (slot, *together):
            lost.restarts += 1
            out += [Emit(ActorLost(lost.rank, how, self.committed())), Respawn(lost.actor_id)]
            if lost.rank in self.lending.home:   # its replacement starts on its own cores
                self._pinned[lost.rank] = self.lending.home[lost.rank]
            self.roster.forget(lost)
            lost.state = SLOT.apply(SLOT.apply(lost.state, "exited"), "respawned")
        if not member:
            return out   # a replacement or a standby actor lost: the group is not affected
        ranks = ",".join(str(s.rank) for s in (slot, *together))
        return out + self._form(now, self._rewind_floor(), self.roster.members(),
                                self.roster.waiting(self._benched), [], reason=f"rank {ranks} lost")

    def _regroup_all(self, now: float) -> list[Effect]:
        slot, message, _at = self._group_failed
        self._group_failed = None
        self.problems.append(f"rank {slot.rank}: collective failed: {message}")
        if not self._may_restart(slot, now, lost=False):
            return self._fail(None, now)
        return self._form(now, self._rewind_floor(), self.roster.members(), self.roster.waiting(self._benched), [],
                          reason="a collective failed")

    def _rewind_floor(self) -> int:
        """The newest snapshot at or before the first uncommitted step."""
        every = self.config.snapshot_every
        return max((self.committed() + 1) // every * every, self.group_start)

    def _schedule_boundary(self) -> list[Effect]:
        """Stop granting at the next snapshot boundary, where the group re-forms (with a
        replacement that said hello, or with the members the rebalancer chose)."""
        if self.state != JobState.RUNNING or self.grants.boundary is not None:
            return []
        at = self._boundary_after_grants()
        if at < self.total_steps:   # otherwise the job ends first, and the change with it
            self.grants.boundary = at
        else:
            self._change = None
        return []

    def _cut_short_pays(self, change) -> bool:
        """Whether a membership change should re-form the group now, from the newest
        snapshot, rather than once the old group has trained what it was granted
        (``rebalance.when``)."""
        if not self.config.cut_short:
            return False
        # the old group trains on to the snapshot boundary after its grants (or the job's end)
        waiting = min(self._boundary_after_grants(), self.total_steps) - (self.committed() + 1)
        replay = self.committed() + 1 - self._rewind_floor()
        return cut_short_pays(self.grants.step_s, change.expected_s, waiting, replay)

    def _boundary_after_grants(self) -> int:
        """The first snapshot boundary at or after the steps granted: where the group re-forms
        when it waits for them."""
        every = self.config.snapshot_every
        return max(-(-self.grants.granted // every) * every, self.group_start)

    def _reform_now(self, now: float) -> list[Effect]:
        """Re-form at the newest snapshot: members leave the old group at their next step
        (their steps past the snapshot are not committed, so the new group trains them)."""
        self.grants.boundary = self._rewind_floor()
        return self._maybe_reform(now)

    def _maybe_reform(self, now: float) -> list[Effect]:
        if self.grants.boundary is None or self.state != JobState.RUNNING or self.committed() + 1 < self.grants.boundary:
            return []
        change, self._change = self._change, None
        staying = self.roster.members()
        if change is not None:
            wanted = set(change.members)
            benched = [s for s in staying if s.rank not in wanted]
            back = [s for s in self.roster.ranked() if s.rank in wanted and s.state == SlotState.STANDBY]
            self._benched = (self._benched | {s.rank for s in benched}) - wanted
            staying = [s for s in staying if s.rank in wanted]
        else:
            benched, back = [], []
        joiners = back + self.roster.waiting(self._benched)
        self._formed_at = now
        rejoined = f"rank {','.join(str(s.rank) for s in joiners)} rejoined" if joiners else "regrouped"
        return self._form(now, self.grants.boundary, staying, joiners, benched,
                          split=list(change.split) if change is not None else None,
                          reason=change.reason if change is not None else rejoined)

    def _form(self, now: float, rewind: int, staying: list[Slot], joiners: list[Slot], benched: list[Slot],
              split: list[int] | None = None, reason: str = "") -> list[Effect]:
        """The next generation of the group, from ``rewind``: ``staying`` members restore the
        snapshot there, ``joiners`` take the lowest member's state, ``benched`` go on standby
        (``reason``, for people, is why: the rebalancer's, or the loss or rejoin that caused it)."""
        self.generation += 1
        self.regroups += 1
        self._group_failed = None   # the new group answers any failure the old one reported
        replayed = max(self.ledger.high_water + 1 - rewind, 0)
        self.replayed_steps += replayed
        self.tally.regrouped(replayed)
        self.ledger.high_water = rewind - 1
        self.ledger.rewind(rewind)
        self.group_start, self.grants.granted, self.grants.boundary = rewind, rewind, None
        self._change = None   # a change the rebalancer wanted is weighed again for this group
        members = sorted(staying + joiners, key=lambda s: s.rank)
        ranks = [s.rank for s in members]
        source = next(s.rank for s in members if s.has_state)
        idle = ({s.rank for s in benched} | self._benched) - set(ranks)   # on standby (or its replacement, waiting)
        cores = self.lending.cores(ranks, idle, self._declined)
        self._recored = None   # (the Regroup says each member's threads)
        if self.rebalancer is not None:   # before the split: it is of the threads each member will run
            self.rebalancer.formed({rank: len(these) for rank, these in cores.items()}, self._declined)
        self.splits.reset(rewind, split or self._split_for(ranks))
        self.last_change = Change(rewind, tuple(self.splits.current), reason)
        out: list[Effect] = []
        for slot in benched:
            slot.state = SLOT.apply(slot.state, "benched")
            out.append(Send(slot.identity, Standby(job_id=self.job.job_id, generation=self.generation)))
        fresh = {s.rank for s in members if s.state == SlotState.READY}   # new processes: a Welcome
        moved = self._lend(cores, {s.rank for s in members} - fresh, out)
        for slot in members:   # every member's state first: each message describes the whole new group
            event = "welcomed" if slot.state in (SlotState.READY, SlotState.STANDBY) else "regrouped"
            slot.state = SLOT.apply(slot.state, event)
            slot.last_step, slot.last_heard = rewind - 1, now   # forming a group: its own clock of silence
        for slot in members:
            n = len(cores[slot.rank]) if slot.rank in cores else slot.threads
            out.append(Send(slot.identity, self._welcome(slot, source, n) if slot.rank in fresh else Regroup(
                job_id=self.job.job_id, generation=self.generation, rank=slot.rank, world_size=len(self.roster),
                rewind_step=rewind, source_rank=source, members=ranks, gradient_sync=self.roster.gradient_sync(),
                history=self.ledger.digest(), threads=n, cores=list(cores[slot.rank]) if slot.rank in moved else None)))
        if benched:
            out.append(Emit(Benched(rewind, tuple(s.rank for s in benched), tuple(ranks), reason)))
        out.append(Emit(Recovered(self.generation, rewind, self.replayed_steps, tuple(ranks),
                                  tuple(s.rank for s in joiners))))
        return out + self._grant_more(force=True)

    def _lend(self, cores: dict[int, tuple[int, ...]], told: set[int], out: list[Effect]) -> set[int]:
        """Each CPU actor onto its ``cores`` (those on standby lend theirs to the members): the
        ranks that move. A member ``told`` (by its Regroup or Threads) moves itself, between two
        steps, its threads in order; any other (on standby, or a new process before its
        Welcome: idle either way) is moved by a ``Pin``."""
        moved = set()
        for rank, these in cores.items():
            if self._pinned.get(rank) != these:
                self._pinned[rank] = these
                moved.add(rank)
                if rank not in told:
                    out.append(Pin(self.roster.ranked()[rank].actor_id, these))
        return moved

    def _split_for(self, ranks: list[int]) -> list[int]:
        """A new group's split: the rebalancer's best guess when it has measured every member,
        else the starting shares renormalised over the members."""
        members = set(ranks)
        if self.rebalancer is not None:
            best = self.rebalancer.best(ranks)
            if best is not None:
                return list(best)
        return share_among(self._base_split, members, self.batch, self.job.job.align if self.job.job.planned else 1)

    # -- messages out ---------------------------------------------------------------------

    def _welcome(self, slot: Slot, source: int | None = None, threads: int | None = None) -> Welcome:
        ranks = [s.rank for s in self.roster.members()] or [s.rank for s in self.roster.ranked()]
        if slot.rank not in ranks:
            ranks = sorted(ranks + [slot.rank])
        data = self.data_of.get(slot.actor_id, self.data)
        # a host's copy without training rows is a streaming host's: its actors take them by value
        by_value = self.n_train if data.x_train.shape[0] == 0 else 0
        return Welcome(rank=slot.rank, world_size=len(self.roster), job=self.job, data=data, rows_by_value=by_value,
                       steps_per_epoch=self.steps_per_epoch, threads=threads or slot.threads, backend=self.roster.backend(),
                       collective_timeout_s=self.liveness.collective_timeout(), generation=self.generation,
                       start_step=self.group_start, source_rank=source,
                       resume_from=self.resume_from if self.generation == 0 else None,
                       snapshot_every=self.config.snapshot_every, members=ranks,
                       gradient_sync=self.roster.gradient_sync(), save_path=self.save_path, history=self.ledger.digest())
