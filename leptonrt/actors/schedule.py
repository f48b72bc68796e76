"""What an actor does next in a job, decided with no torch, no sockets and no clock.

The job loop (``leptonrt.actors.loop``) feeds the broker's messages in (``receive``)
and asks: which split does step ``g`` use (``plan_for``), how does this actor vote on a
newer split (``vote``), is a snapshot or a checkpoint due, are reports due, must the group
be left (``broken``), and where does it go then (``take_place``). Tested like the broker's
core, with plain messages and numbers.

Splits: grants say which split each step uses. A newer split (``Resplit``) is voted on in
the next step's gradient sum: every member adds how many versions ahead of the current one
the next split it holds is; when the sums show all voted the same, all switch from the
step after. A member that missed a Resplit votes differently, so nobody switches early;
the grants still carry every split, so it applies where the grants already out end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..messages import CheckpointNow, Grant, Regroup, Release, Resplit, Shutdown, Standby, Stop, Threads, Welcome

MAX_HELD_SPLITS = 64     # newer splits kept waiting for a vote (the grants carry every split anyway)
REPORT_EVERY_STEPS = 64  # reports are batched, so the control plane stays cheap...
REPORT_EVERY_S = 0.01    # ...yet fresh enough for the broker to plan and grant ahead
REPORT_ALONE_S = 0.05    # an actor alone has nothing to rebalance: it reports less often


@dataclass(frozen=True)
class Place:
    """This actor's place in the current group."""

    generation: int
    rank: int
    world: int                 # ranks in the job
    members: tuple[int, ...]   # ranks in the gradient group
    sync: str                  # "allreduce" or "exchange"
    start: int                 # the first step this group trains (a rewind point)
    source: int | None         # the rank whose state everybody takes when the group forms; None: no hand-over

    @property
    def leader(self) -> bool:
        """The lowest member evaluates for the job and writes checkpoints and the weights."""
        return self.rank == self.members[0]

    @property
    def position(self) -> int:
        """Its rank in the torch.distributed group (ranks are positions among the members)."""
        return self.members.index(self.rank)


@dataclass
class ActorSchedule:
    """The actor's schedule in one job."""

    job_id: int
    place: Place
    snapshot_every: int
    checkpoint_every: int          # 0: never
    grants: list[Grant] = field(default_factory=list)
    held: dict[int, list[int]] = field(default_factory=dict)   # newer splits by version, not in use yet
    agreed: tuple[int, int, list[int]] | None = None            # (version, first step, split) the group switched to
    committed: int = -1            # the last step every member has reported (from the grants)
    stop: Stop | None = None
    released: bool = False
    shutdown: str | None = None    # why the broker told this process to exit
    checkpoint_asked: CheckpointNow | None = None
    next_place: Regroup | Standby | None = None   # the group is re-forming: leave this one
    reported_at: float = 0.0       # when reports last went out (the shell's clock, passed in)
    threads_from: Threads | None = None   # the cores and threads the broker moves us to, from a step on

    @classmethod
    def from_welcome(cls, welcome: Welcome) -> "ActorSchedule":
        place = Place(welcome.generation, welcome.rank, welcome.world_size,
                      tuple(welcome.members) if welcome.members else tuple(range(welcome.world_size)),
                      welcome.gradient_sync, welcome.start_step, welcome.source_rank)
        return cls(welcome.job.job_id, place, welcome.snapshot_every, welcome.job.job.checkpoint_every)

    # -- messages in ------------------------------------------------------------------------

    def receive(self, msg) -> None:
        """Take one message from the broker into account."""
        if isinstance(msg, Shutdown):
            self.shutdown = msg.reason or "shutdown"
        elif getattr(msg, "job_id", self.job_id) != self.job_id:
            return   # of another job (a late message of the last one)
        elif isinstance(msg, Grant):
            self.grants.append(msg)
            self.committed = max(self.committed, msg.committed)
        elif isinstance(msg, Resplit) and msg.generation == self.place.generation:
            self.held[msg.version] = list(msg.split)
            while len(self.held) > MAX_HELD_SPLITS:
                del self.held[min(self.held)]
        elif isinstance(msg, Threads) and msg.generation == self.place.generation:
            self.threads_from = msg
        elif isinstance(msg, Stop):
            self.stop = msg
        elif isinstance(msg, Release):
            self.released = True
        elif isinstance(msg, CheckpointNow):
            self.checkpoint_asked = msg
        elif isinstance(msg, (Regroup, Standby)) and msg.generation > self.place.generation:
            self.next_place = msg
            self._forget_grants()   # of the group that is going; the new one's follow this message

    @property
    def broken(self) -> bool:
        """The broker re-forms the group: leave this one (at once: its collectives may hang)."""
        return self.next_place is not None

    def take_place(self) -> Regroup | Standby:
        """Move to the place the broker gave: a new group (Regroup) or standby."""
        msg, self.next_place = self.next_place, None
        if isinstance(msg, Regroup):
            members = tuple(msg.members) if msg.members else tuple(range(msg.world_size))
            self.place = Place(msg.generation, msg.rank, msg.world_size, members, msg.gradient_sync,
                               msg.rewind_step, msg.source_rank)
        else:
            self.place = Place(msg.generation, self.place.rank, self.place.world, (), self.place.sync,
                               self.place.start, None)
        return msg

    def group_failed(self) -> None:
        """Our collective failed with nobody telling us of a loss: what was granted is void."""
        self._forget_grants()

    def _forget_grants(self) -> None:
        self.grants.clear()
        self.held.clear()
        self.agreed = None
        self.threads_from = None   # (a new group's message says its threads)

    def cores_for(self, step: int) -> Threads | None:
        """The cores and threads to run ``step`` on, when the broker moves us to other cores
        from it (None: as now)."""
        if self.threads_from is None or step < self.threads_from.from_step:
            return None
        moved, self.threads_from = self.threads_from, None
        return moved

    # -- steps ------------------------------------------------------------------------------

    def plan_for(self, step: int) -> tuple[int, list[int]] | None:
        """(version, split) of ``step``: its grant's, or a newer one the group agreed on before
        it; None while the step is not granted, and while the group re-forms: the grants held
        then are the new group's, for steps from its rewind point, which may be behind ``step``
        (a cut-short regroup), so none may be dropped as done."""
        if self.next_place is not None:
            return None
        while self.grants and self.grants[0].end_step <= step:   # grants come in step order
            self.grants.pop(0)
        if not self.grants or self.grants[0].first_step > step:
            return None
        grant = self.grants[0]
        if self.agreed is not None and self.agreed[0] > grant.version and step >= self.agreed[1]:
            return self.agreed[0], self.agreed[2]
        return grant.version, grant.split

    def vote(self, version: int) -> int:
        """How many versions ahead of ``version`` (the current step's) the next split held is, or 0."""
        newer = [v for v in self.held if v > version]
        return min(newer) - version if newer else 0

    def agree(self, step: int, version: int) -> None:
        """Every member holds split ``version``: it applies from the step after ``step``."""
        self.agreed = (version, step + 1, self.held[version])
        for old in [v for v in self.held if v <= version]:
            del self.held[old]

    def granted_end(self) -> int:
        """One past the last step granted (0 if none)."""
        return self.grants[-1].end_step if self.grants else 0

    # -- snapshots, checkpoints, reports ------------------------------------------------------

    def snapshot_due(self, steps_done: int) -> bool:
        return steps_done % self.snapshot_every == 0

    def snapshot_floor(self) -> int:
        """Snapshots before this step are never needed again: a rewind goes no further back
        than the newest one at or before the first uncommitted step."""
        every = self.snapshot_every
        return max((self.committed + 1) // every * every, self.place.start)

    def checkpoint_due(self, steps_done: int, writes_checkpoints: bool) -> bool:
        return (writes_checkpoints and self.place.leader and self.checkpoint_every > 0
                and steps_done % self.checkpoint_every == 0)

    def report_due(self, pending: int, now: float) -> bool:
        """Whether ``pending`` unreported steps should go to the broker now."""
        period = REPORT_EVERY_S if len(self.place.members) > 1 else REPORT_ALONE_S
        return pending > 0 and (pending >= REPORT_EVERY_STEPS or now - self.reported_at >= period)

    def reported(self, now: float) -> None:
        self.reported_at = now
