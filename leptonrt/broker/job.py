"""The broker's decisions for one training job, with no I/O: messages in, effects out.

The shell feeds every decoded message (with the sender's ROUTER identity), every observed
process exit and the passing of time into a ``JobCore`` and carries out the effects it
returns (``events.Send``, ``Kill``, ``Respawn``, ``Pin``, ``Emit``). Time is a parameter, so tests
drive it with plain numbers. The job's lifecycle and each actor's are tables
(``lifecycle``); who holds which rank is the ``Roster``'s; the committed history is the
``Ledger``'s; who is hung is ``Liveness``'s; how far ahead steps are granted, ``Grants``';
how often a rank may be replaced, the ``RestartBudget``'s; how rows are split, and who is
worth having in the group, the ``Rebalancer``'s.

Recovery: actors snapshot their state in memory every ``snapshot_every`` steps. When a
member is lost, the others re-form the group without it at once, at the newest snapshot at
or before the first uncommitted step, and train the steps after it again (the ledger's
history is truncated there too). A replacement starts meanwhile; when it says hello, the
broker grants nothing past the next snapshot boundary and the group re-forms there with
it (nothing is replayed; it takes the lowest member's state). A change of membership the
rebalancer decides (an actor to standby, or back) happens the same way, at a boundary, or
at once from the newest snapshot when replaying costs less than waiting. All of that is
``regroup.Regrouping``'s, the part of the core that changes who is in the group; granting
steps and acting on the rebalancer's decisions is ``granting.Granting``'s; what the job's
owner reads (progress, statistics, the result), ``figures.JobFigures``'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError, InternalError
from ..messages import (CheckpointNow, DatasetInfo, EpochResult, Failure, Finished, GroupFailed, Heartbeat, Hello,
                        JobSpec, Message, Reports, Stop)
from .grants import Grants
from .events import Effect, Emit, EpochEvent, Kill, Send
from .capacity import rows_that_fit
from .cores import Lending
from .ledger import HistoryBroken, Ledger
from .lifecycle import JOB, SLOT, JobState, SlotState
from .liveness import Liveness, Watched
from .rebalance import Rebalancer, Regroup as Membership
from .restarts import RestartBudget
from .figures import JobFigures
from .granting import Granting
from .regroup import Regrouping
from .roster import Roster, Slot
from .series import Series
from .splits import Splits
from .stats import Change
from .tally import Tally


@dataclass
class JobConfig:
    """How the core grants, plans and judges; every field has a meaning, none a story."""

    window_s: float = 0.03          # grant roughly this much time of work ahead of the slowest actor...
    max_window: int = 256           # ...but never more steps than this, nor fewer than min_window
    min_window: int = 4
    plan_every_s: float = 0.02      # decisions at most 50 times a second: one costs ~0.5 ms (bench/rebalance_sim.py)
    snapshot_every: int = 8         # actors snapshot their state in memory this often (steps)
    cut_short: bool = True          # a membership change may re-form at once from the newest
                                    # snapshot when that is cheaper (else after the steps granted)
    hang_timeout_s: float = 3.0     # --hang-timeout
    max_restarts: int = 3           # replacements allowed per actor within restart_window_s...
    restart_window_s: float = 60.0  # ...beyond that the job fails (exit code 70)


class JobCore(JobFigures, Granting, Regrouping):
    """State of one job across its actors; ``handle``, ``exited``, ``unreachable`` and
    ``tick`` are the only ways in."""

    def __init__(self, *, job: JobSpec, data: DatasetInfo, actor_ids: list[str], threads: list[int],
                 split: list[int], n_train: int, steps_per_epoch: int, config: JobConfig = JobConfig(),
                 rebalancer: Rebalancer | None = None, save_path: str | None = None, start_step: int = 0,
                 resume_from: str | None = None, prior_epochs: tuple = (), history: bytes | None = None,
                 tally: Tally | None = None, data_of: dict[str, DatasetInfo] | None = None,
                 lending: Lending | None = None) -> None:
        settings = job.job
        if len(split) != len(actor_ids) or sum(split) != settings.batch_size:
            raise InternalError(f"split {split} does not fit {len(actor_ids)} actors and batch {settings.batch_size}")
        self.job, self.data, self.config, self.rebalancer = job, data, config, rebalancer
        # actor id -> its host's own copy of the data (a joined host's); the shell adds to it
        # when a host comes back mid-job
        self.data_of = data_of if data_of is not None else {}
        self.tally = tally if tally is not None else Tally()   # the broker's, across its jobs
        self.batch, self.n_train, self.steps_per_epoch = settings.batch_size, n_train, steps_per_epoch
        self.total_steps = settings.epochs * steps_per_epoch
        self.save_path, self.start_step, self.resume_from = save_path, start_step, resume_from
        self.state = JobState.GATHERING
        self.roster = Roster(actor_ids, threads, start_step)
        self.ledger = Ledger(n_train=n_train, batch_size=self.batch, seed=settings.seed, start_step=start_step,
                             digest=history, snapshot_every=config.snapshot_every)
        self.liveness = Liveness(config.hang_timeout_s)
        self.splits = Splits(start_step, split)
        self._base_split = list(split)          # the shares a full group starts from (even, or the user's)
        self._caps: list[int | None] = [None] * len(actor_ids)
        self.generation, self.group_start = 0, start_step
        self.grants = Grants(config.window_s, config.min_window, config.max_window, granted=start_step)
        self._change: Membership | None = None  # ...with the members the rebalancer chose, if that is why
        self._benched: set[int] = set()         # ranks the rebalancer keeps out of the group
        # the cores of pinned CPU actors: those on standby lend theirs to the members
        self.lending = lending if lending is not None else Lending({})
        self._pinned = dict(self.lending.home)  # rank -> the cores it runs on now
        # ranks that take no lent cores: every one, until the rebalancer has a member try them
        self._declined: frozenset[int] = frozenset(self.lending.home)
        self._recored: tuple[int, dict[int, int]] | None = None   # (from step, threads) of Cores not yet in force
        self.cores_changes = 0                  # Cores decided (members moved onto other cores)
        self._formed_at: float | None = None    # when the last planned regroup began (its cost is measured)
        self._planned_at = -math.inf
        self._restarts = RestartBudget(config.max_restarts, config.restart_window_s)
        self._group_failed: tuple[Slot, str, float] | None = None
        self._epochs: list[EpochResult] = list(prior_epochs)
        self.replayed_steps = self.bad_messages = self.rebalances = self.regroups = 0
        self.interrupted = self.budget_exceeded = False
        self.problems: list[str] = []   # every failure seen: lost processes first, then in order
        self.lost: dict[int, str] = {}  # rank -> how its process ended, when that failed the job
        self.checkpointed = None        # the leader's answer to checkpoint_now()
        self.unusable: str | None = None   # why the job's own model or loss cannot run (an actor said)
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.step_ms = Series()        # the slowest member's whole step, per committed step (ms)
        self.losses = Series()         # training loss, per finished epoch
        self.last_change: Change | None = None   # the latest split or membership change, and why

    # -- input -----------------------------------------------------------------------

    def handle(self, identity: bytes, msg: Message, now: float) -> list[Effect]:
        """React to one message from ``identity``; one that does not fit is counted and dropped."""
        if self.started_at is None:
            self.started_at = now
        handler = getattr(self, f"_on_{type(msg).__name__.lower()}", None)
        if handler is None:
            return self._drop()
        if self.state in (JobState.DONE, JobState.FAILED) and not isinstance(msg, Failure):
            return []   # late traffic of a finished job is expected, not bad
        slot = self.roster.sender(identity)
        if not isinstance(msg, Hello) and not self.roster.sender_matches(slot, msg, self.job.job_id):
            return self._drop()
        if slot is not None:
            slot.last_heard = now
        return handler(slot, identity, msg, now)

    def exited(self, actor_id: str, how: str, now: float) -> list[Effect]:
        """A supervised process ended: replace it and go on, or fail the job."""
        slot = self.roster.actor(actor_id)
        if self.state == JobState.DONE or slot is None or slot.state in (SlotState.FINISHED, SlotState.LOST):
            return []
        if slot.killed:
            how = f"taken for hung, then {how}"
        if self.state == JobState.RUNNING and self._may_restart(slot, now):
            return self._lose(slot, how, now)
        # a lost process is a root cause: it goes before the collective errors it provoked
        self.problems.insert(len(self.lost), f"rank {slot.rank} (actor {actor_id}) exited: {how}")
        self.lost[slot.rank] = how
        return self._fail(None, now)

    def host_lost(self, host: str, actor_ids: list[str], how: str, now: float) -> list[Effect]:
        """Every actor of one host ended at once (its agent died or was cut off): one regroup
        without all of them, and one loss against the restart budget, the host's."""
        slots = [s for s in map(self.roster.actor, actor_ids)
                 if s is not None and s.state not in (SlotState.FINISHED, SlotState.LOST)]
        if self.state == JobState.DONE or not slots:
            return []
        if self.state == JobState.RUNNING and self._may_restart(slots[0], now, host=host, together=tuple(slots[1:])):
            return self._lose(slots[0], how, now, together=tuple(slots[1:]))
        for slot in slots:
            self.problems.insert(len(self.lost), f"rank {slot.rank} (actor {slot.actor_id}) exited: {how}")
            self.lost[slot.rank] = how
        return self._fail(None, now)

    def unreachable(self, identity: bytes, now: float) -> list[Effect]:
        """A send to ``identity`` failed (its socket is gone): take it for lost, by killing it
        (its exit then goes the usual way)."""
        slot = self.roster.sender(identity)
        if slot is None or slot.killed or self.state in (JobState.DONE, JobState.FAILED):
            return []
        slot.killed = True
        self.problems.append(f"rank {slot.rank}: a message to it could not be delivered")
        return [Kill(slot.actor_id)]

    def tick(self, now: float) -> list[Effect]:
        """The passing of time: hung actors, and collective failures nobody explained."""
        out = []
        if self._group_failed is not None:
            failed_slot, _message, at = self._group_failed
            if self.state != JobState.RUNNING or failed_slot.state == SlotState.LOST:
                self._group_failed = None   # a loss explained it; that recovery covers it
            elif now - at > self.liveness.group_failed_grace():
                out += self._regroup_all(now)
        if self.state in (JobState.RUNNING, JobState.STOPPING):
            out += self._judge_silence(now)
        return out

    def interrupt(self) -> None:
        """Grant no further steps; the actors stop at the end of what they hold."""
        self.interrupted = True

    def fail(self, reason: str, now: float) -> None:
        """End the job as failed for a reason seen outside the messages (a timeout)."""
        if self.state not in (JobState.DONE, JobState.FAILED):
            self._fail(reason, now)

    def checkpoint_now(self) -> list[Effect]:
        """Ask the leader for a checkpoint of the drained boundary (the answer lands in ``checkpointed``)."""
        self.checkpointed = None
        return [Send(self.roster.leader().identity, CheckpointNow(job_id=self.job.job_id, step=self.grants.granted))]

    # -- handlers ----------------------------------------------------------------------

    def _on_hello(self, _slot, identity: bytes, msg: Hello, now: float) -> list[Effect]:
        slot = self.roster.actor(msg.actor_id)
        if slot is None or slot.state != SlotState.STARTING or self.roster.known(identity) \
                or self.state not in (JobState.GATHERING, JobState.RUNNING, JobState.STOPPING):
            return self._drop()
        slot.state = SLOT.apply(slot.state, "said_hello")
        self.roster.said_hello(slot, identity, msg, now)
        if self.state != JobState.GATHERING:   # a replacement: it joins at the next boundary
            if slot.rank in self._benched:
                return []   # ...unless the rank is on standby: it waits until it is asked back
            return self._schedule_boundary() + self._maybe_reform(now)
        if not self.roster.all_said_hello():
            return []
        return self._start(now)

    def _on_reports(self, slot: Slot, _identity, msg: Reports, now: float) -> list[Effect]:
        if msg.generation != self.generation or slot.state not in (SlotState.JOINING, SlotState.TRAINING):
            return []   # steps of a group that broke (they will be replayed), or of one on standby
        for stat in msg.steps:
            self.ledger.record(slot.rank, stat)
            slot.last_step = max(slot.last_step, stat.step)
            slot.compute.append(stat.compute_s)
            self.grants.stepped(stat.step_s)
            self.liveness.stepped(stat.step_s)
            self.splits.used(stat.version, stat.step)
        if msg.steps:
            slot.has_state = True
            slot.state = SLOT.apply(slot.state, "reported")
        try:
            self._commit(now)
        except HistoryBroken as exc:
            return self._fail(f"exactly-once is broken: {exc}", now)
        return self._rebalance(now) + self._grant_more() + self._maybe_stop() + self._maybe_reform(now)

    def _on_epochresult(self, slot: Slot, _identity, msg: EpochResult, now: float) -> list[Effect]:
        leader = slot is self.roster.leader()
        if leader and msg.epoch < len(self._epochs):
            return []   # evaluated again after a rewind or resume to an epoch boundary
        if not leader or msg.epoch != len(self._epochs) or msg.generation != self.generation:
            return self._drop()
        self._epochs.append(msg)
        self.losses.add(msg.train_loss)
        shares = tuple(b / self.batch for b in self.splits.at((msg.epoch + 1) * self.steps_per_epoch - 1))
        rate = self.n_train / msg.seconds if msg.seconds > 0 else 0.0
        return [Emit(EpochEvent(msg.epoch + 1, self.job.job.epochs, msg.train_loss, msg.test_loss,
                                msg.test_accuracy, msg.seconds, rate, shares))] + self._maybe_done(now)

    def _on_finished(self, slot: Slot, _identity, msg: Finished, now: float) -> list[Effect]:
        if self.state != JobState.STOPPING or slot.state not in (SlotState.JOINING, SlotState.TRAINING):
            return self._drop()
        if msg.digest != self.ledger.digest():
            return self._fail(f"exactly-once is broken: rank {slot.rank}'s weights trained the history "
                              f"{msg.digest[:12] or '(none)'}, the committed history is {self.ledger.digest()[:12]}", now)
        slot.finished = msg
        slot.state = SLOT.apply(slot.state, "stopped")
        return self._maybe_done(now)

    def _on_failure(self, slot: Slot, _identity, msg: Failure, now: float) -> list[Effect]:
        if msg.exit_code == ConfigError.exit_code and self.unusable is None:
            self.unusable = msg.message   # every actor would say the same: the job cannot run as given
        return self._fail(f"rank {slot.rank} failed: {msg.message}", now)

    def _on_groupfailed(self, slot: Slot, _identity, msg: GroupFailed, now: float) -> list[Effect]:
        """A collective failed. Usually a peer died and its exit is about to be seen; if every
        actor is still here after a short grace, the same group re-forms from the last snapshot."""
        if self.state == JobState.RUNNING and msg.generation == self.generation and self._group_failed is None:
            self._group_failed = (slot, msg.message, now)
        return []

    def _on_checkpointed(self, slot: Slot, _identity, msg, now: float) -> list[Effect]:
        self.checkpointed = msg
        return []

    def _on_heartbeat(self, slot: Slot, _identity, msg: Heartbeat, now: float) -> list[Effect]:
        return []

    # -- the job's course ------------------------------------------------------------------

    def _start(self, now: float) -> list[Effect]:
        """Every actor said hello: welcome them all into one group, and grant the first steps."""
        self.state = JOB.apply(self.state, "all_said_hello")
        # a user's model has a footprint only it knows: its caps are not tracked
        self._caps = [None if self.job.job.model is not None else rows_that_fit(
            s.hello.memory_bytes, self.data.n_features, list(self.job.job.hidden), self.data.n_classes)
            for s in self.roster.ranked()]
        if self.rebalancer is not None:
            self.rebalancer.set_caps(self._caps)
        for slot in self.roster.ranked():
            slot.last_heard = now   # the clock of silence starts for everyone now
            slot.state = SLOT.apply(slot.state, "welcomed")
        # forming the first group is the first measurement of what forming a group costs
        # (to the first committed step: the first steps' own slowness is part of the cost)
        self._formed_at = now
        # a user's factory may draw its weights from other than torch's seeded RNG: then every
        # member takes the lowest one's, so the group starts from one set of weights
        source = self.roster.ranked()[0].rank if self.job.job.model is not None and self.resume_from is None else None
        return [Send(s.identity, self._welcome(s, source)) for s in self.roster.ranked()] + self._grant_more()

    def _commit(self, now: float) -> None:
        members = [s.rank for s in self.roster.members()]
        for done in self.ledger.advance(members):
            if self._recored is not None and done.step >= self._recored[0] and self.rebalancer is not None:
                self.rebalancer.formed(self._recored[1], self._declined)   # from this step on, the new cores
                self._recored = None
            self.tally.committed(done.stats)
            self.step_ms.add(1000 * max(stat.step_s for stat in done.stats.values()))
            if self.rebalancer is not None:
                for rank, stat in sorted(done.stats.items()):
                    self.rebalancer.observe(rank, rows=stat.rows, compute_s=stat.compute_s,
                                            collective_s=stat.collective_s, step_s=stat.step_s,
                                            group_size=len(members))
        if self._formed_at is not None and self.committed() >= self.group_start:
            if self.rebalancer is not None:
                self.rebalancer.regrouped(now - self._formed_at)   # what re-forming the group cost
            self._formed_at = None
        self.ledger.forget_before(self._rewind_floor())

    def _maybe_stop(self) -> list[Effect]:
        if self.state != JobState.RUNNING or self.committed() < self.total_steps - 1:
            return []
        self.state = JOB.apply(self.state, "last_step_committed")
        stop = Stop(job_id=self.job.job_id, save=self.save_path is not None)
        return [Send(s.identity, stop) for s in self.roster.members()]

    def _maybe_done(self, now: float) -> list[Effect]:
        finished = all(s.state == SlotState.FINISHED for s in self.roster.members())
        if self.state == JobState.STOPPING and finished and len(self._epochs) == self.job.job.epochs:
            self.state, self.ended_at = JOB.apply(self.state, "all_finished"), now
        return []

    def _fail(self, reason: str | None, now: float) -> list[Effect]:
        if reason is not None:
            self.problems.append(reason)
        if self.state not in (JobState.DONE, JobState.FAILED):
            self.state, self.ended_at = JOB.apply(self.state, "failed"), now
        return []

    def _drop(self) -> list[Effect]:
        self.bad_messages += 1
        return []

    # -- silence --------------------------------------------------------------------------

    def _judge_silence(self, now: float) -> list[Effect]:
        watched = [Watched(s.rank, s.last_heard, s.state == SlotState.JOINING) for s in self.roster.ranked()
                   if s.state in (SlotState.JOINING, SlotState.TRAINING, SlotState.STANDBY) and not s.killed]
        verdict = self.liveness.judge(watched, now, stopping=self.state == JobState.STOPPING)
        if verdict.fail is not None:
            return self._fail(verdict.fail, now)
        out: list[Effect] = []
        for rank in verdict.kill:
            slot = self.roster.ranked()[rank]
            slot.killed = True
            self.problems.append(f"rank {rank} sent nothing for {now - slot.last_heard:.1f} s: taken for hung")
            out.append(Kill(slot.actor_id))
        return out
