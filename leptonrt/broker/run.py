"""The broker's decisions for one training run, with no I/O: messages in, messages out.

The asyncio shell feeds every decoded message (with the sender's ROUTER identity) and
every observed process exit into a ``TrainingRun`` and sends whatever it returns. Time is
a parameter, so tests drive it with plain numbers.

Lifecycle::

    gathering --all hellos--> running --last step committed--> stopping --all finished--> done
        any failure, a loss beyond the restart budget, or no survivor ----------------> failed

A step is committed when every member of the gradient group has reported it. Actors
snapshot their state in memory every ``snapshot_every`` steps (and when a group forms).
When an actor is lost, the survivors re-form the group without it at once, at the newest
snapshot at or before the first uncommitted step, its share of the batch goes to them,
and the steps after the snapshot are trained again, so the committed history trains
every sample of every epoch exactly once. A replacement starts meanwhile; when it says
hello, the broker stops granting at the next snapshot boundary, and once the group has
committed everything before it the group re-forms with the replacement, which takes the
lowest member's state (nothing is replayed). A replacement that never comes back costs
nothing but its share.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import median

from ..errors import InternalError
from .plan import share_among
from .planner import Planner, rows_that_fit
from ..messages import (CheckpointNow, DatasetInfo, EpochResult, Failure, Finished, Grant, Hello, JobSpec,
                       Message, Regroup, Reports, Resplit, Stop, Welcome)


@dataclass(frozen=True)
class Out:
    """One message to send to one actor."""

    identity: bytes   # ROUTER identity of the receiver
    message: Message  # what to send


@dataclass(frozen=True)
class EpochEvent:
    """An epoch finished: its metrics, as rank 0 measured them."""

    epoch: int               # 1-based
    epochs: int              # total epochs of the job
    train_loss: float        # mean loss over the epoch's training samples
    test_loss: float         # mean loss on the test split
    test_accuracy: float     # fraction correct on the test split
    seconds: float           # wall time of the epoch's training steps
    samples_per_s: float     # training samples per second in this epoch
    shares: tuple[float, ...]  # fraction of the global batch each rank trained


@dataclass(frozen=True)
class SplitChanged:
    """The planner moved rows between actors; the new split applies from ``step`` on."""

    step: int                  # first global step that uses the new split
    split: tuple[int, ...]     # rows per rank
    predicted_gain: float      # fraction of step time the planner expects to save


@dataclass(frozen=True)
class ActorLost:
    """An actor died or hung during the job; a replacement is being started."""

    rank: int
    how: str                   # "exit code 17", "killed by SIGKILL", "taken for hung, then killed by SIGKILL"
    committed: int             # the last committed step when it was lost

    def describe(self) -> str:
        return f"rank {self.rank} lost ({self.how}) after step {self.committed}; the rest go on, a replacement is starting"


@dataclass(frozen=True)
class Recovered:
    """The group re-formed; training goes on from ``rewind_step``: without a lost actor
    (the survivors replay what was not committed), or with a replacement that rejoins."""

    generation: int
    rewind_step: int
    replayed_steps: int        # steps some actor had done that are trained again (the job's total so far)
    members: tuple[int, ...] = ()   # ranks in the new group
    joined: tuple[int, ...] = ()    # ranks that (re)joined it at this boundary

    def describe(self) -> str:
        ranks = ",".join(map(str, self.members))
        if self.joined:
            return (f"rank {','.join(map(str, self.joined))} rejoined at step {self.rewind_step} "
                    f"(ranks {ranks} train)")
        return (f"regrouped as ranks {ranks}; replaying from step {self.rewind_step} "
                f"({self.replayed_steps} steps trained again in all)")


@dataclass
class _Slot:
    actor_id: str
    rank: int
    threads: int
    identity: bytes | None = None
    hello: Hello | None = None
    seen: Hello | None = None  # the last hello this rank ever sent (its device, when a replacement is still starting)
    last_step: int = -1
    finished: Finished | None = None
    last_heard: float = 0.0    # when this actor last sent anything
    compute: deque = field(default_factory=lambda: deque(maxlen=64))   # recent compute seconds per step
    restarts: int = 0
    fresh: bool = False        # a replacement that has not said hello yet
    has_state: bool = True     # holds the training state (a replacement: once it reported a step)
    joining: bool = False      # forming a group (blocking, silent) since it was welcomed or regrouped
    killing: bool = False      # taken for hung; the shell is killing it
    active: bool = True        # a member of the gradient group (a replacement: once it has rejoined)


@dataclass
class TrainingRun:
    """State of one job across its actors; ``handle`` is the only way in."""

    job: JobSpec
    data: DatasetInfo
    actor_ids: list[str]
    threads: list[int]
    split: list[int]
    steps_per_epoch: int
    n_train: int
    planner: Planner | None = None  # None: the split stays as given
    window_s: float = 0.03          # grant roughly this much time of work ahead of the slowest actor
    max_window: int = 256           # ...but never more steps than this, nor fewer than min_window
    min_window: int = 4
    plan_every_s: float = 0.02      # ask the planner for a better split at most this often
    probe_after: int = 16           # with a planner: after this many steps, vary the split for...
    probe_steps: int = 8            # ...this many steps each way, so a fixed per-step cost shows
    hang_timeout_s: float = 3.0     # an actor silent this long while running is taken for hung...
    hang_steps: float = 3.0         # ...or this many times its longest recent step, if that is longer
    save_path: str | None = None
    max_restarts: int = 3           # replacements allowed per actor within restart_window_s...
    restart_window_s: float = 60.0  # ...beyond that the job fails (exit code 70)
    snapshot_every: int = 8         # actors snapshot their state in memory this often
    start_step: int = 0             # first step to train (a resumed job)
    resume_from: str | None = None  # the checkpoint (its step directory) the actors load at start
    prior_epochs: list = field(default_factory=list)   # EpochResults of a resumed job
    state: str = "gathering"
    events: list = field(default_factory=list)
    bad_messages: int = 0
    interrupted: bool = False       # grant nothing more: the run is being stopped at a step boundary
    problems: list = field(default_factory=list)   # every failure seen: lost processes first, then in order
    lost: dict = field(default_factory=dict)       # rank -> how its process ended, if it did early

    def __post_init__(self) -> None:
        if len(self.split) != len(self.actor_ids) or sum(self.split) != self.job.job.batch_size:
            raise InternalError(f"split {self.split} does not fit {len(self.actor_ids)} actors and batch {self.job.job.batch_size}")
        self.total_steps = self.job.job.epochs * self.steps_per_epoch
        self._slots = {a: _Slot(a, r, t) for r, (a, t) in enumerate(zip(self.actor_ids, self.threads))}
        self._by_identity: dict[bytes, _Slot] = {}
        self._granted = self.start_step
        for slot in self._slots.values():
            slot.last_step = self.start_step - 1
        self.generation, self.group_start = 0, self.start_step
        self.replayed_steps = 0
        self.budget_exceeded = False
        self.respawn: list[str] = []   # actor ids the shell must start again
        self.kill: list[str] = []      # actor ids the shell must kill (taken for hung)
        self._restart_times: dict[int, list[float]] = {}
        self._group_failed: tuple | None = None   # (slot, message, when) of an unexplained collective failure
        self.checkpointed = None   # the leader's answer to checkpoint_now()
        self._high_water = self.start_step - 1
        # (first step, split, why, version): why is "start", "planner", "probe" (warm-up) or
        # "members" (a loss or a rejoin); every split the actors may see has a version, and a
        # planner's split may start before the grants it is in (see Resplit): when, the
        # actors' reports say
        self._version = 0
        self.split_history: list[tuple[int, list[int], str, int]] = [(self.start_step, list(self.split), "start", 0)]
        self._base_split = list(self.split)   # the shares a full group starts from (even, or the user's)
        self._join_at: int | None = None       # the boundary where waiting replacements rejoin
        self._planned_at = -math.inf
        self._planner_changes = 0
        self._probe: list[tuple[int, list[int]]] = []   # (first step, split) still to apply
        self._caps: list[int | None] = [None] * len(self.actor_ids)   # rows each device's memory holds (None: untracked)
        self._step_s: float | None = None   # smoothed wall time of one step, for the window
        self._longest_s = 0.0               # a decaying maximum of step times, for the hang bound
        self._epochs: list[EpochResult] = list(self.prior_epochs)
        self.started_at: float | None = None
        self.ended_at: float | None = None

    # -- input ---------------------------------------------------------------------

    def handle(self, identity: bytes, msg: Message, now: float) -> list[Out]:
        """React to one message from ``identity``; a message that does not fit is counted and dropped."""
        if self.started_at is None:
            self.started_at = now
        handler = getattr(self, f"_on_{type(msg).__name__.lower()}", None)
        if handler is None:
            return self._drop()
        if self.state in ("done", "failed") and not isinstance(msg, Failure):
            return []  # late traffic of a finished run is expected, not bad
        if not isinstance(msg, Hello) and not self._sender_matches(identity, msg):
            return self._drop()
        if identity in self._by_identity:
            self._by_identity[identity].last_heard = now
        return handler(self._by_identity.get(identity), identity, msg, now)

    def check_liveness(self, now: float) -> list[Out]:
        """Find actors that went silent (hung, stopped): have them killed and replaced.
        Also acts on a collective failure that no lost actor explains."""
        if self._group_failed is not None:
            if self.state != "running" or self._group_failed[0].fresh:
                self._group_failed = None   # a loss explained it; that recovery covers it
            elif now - self._group_failed[2] > self._group_failed_grace():
                return self._regroup_all(now)
        self._check_silence(now)
        return []

    def _group_failed_grace(self) -> float:
        """How long a collective failure waits for an explanation: a peer's exit shows within
        milliseconds; a hung peer is judged when its silence passes the hang bound, which is
        this much later than its peers' collectives time out."""
        return max(0.5, self.hang_bound() - self.collective_timeout_s() + 0.5)

    def _check_silence(self, now: float) -> None:
        if self.state not in ("running", "stopping"):
            return
        bound = self.hang_bound()
        # forming a group blocks an actor (it cannot speak): the store, then the group (each
        # with twice the collective timeout), then the state hand-over
        joining = bound + 5 * self.collective_timeout_s() + 1.0
        watched = [s for s in self._members() if s.finished is None and s.hello is not None and not s.killing]
        silent = [s for s in watched if now - s.last_heard > (joining if s.joining else bound)]
        if not silent:
            return
        # a hung actor keeps its peers waiting in the all-reduce too; they speak up again when
        # their collective times out (shorter than the bound), so only the hung one stays silent
        if len(silent) == len(watched) and now - min(s.last_heard for s in silent) < bound + self.collective_timeout_s() + 2:
            return
        if len(silent) == len(watched) or self.state == "stopping":
            names = ", ".join(f"{s.rank} ({now - s.last_heard:.1f} s)" for s in silent)
            self._fail(f"rank(s) {names} sent nothing for over {bound:.3g} s: taken for hung", now)
            return
        for slot in silent:
            slot.killing = True
            self.kill.append(slot.actor_id)
            self.problems.append(f"rank {slot.rank} sent nothing for {now - slot.last_heard:.1f} s: taken for hung")

    def collective_timeout_s(self) -> float:
        """How long a collective may wait before it fails: under the hang bound, so that the
        peers of a hung actor speak up again before it is judged; stretched for long steps."""
        return max(self.hang_timeout_s - 1.0, 1.0, self.hang_steps * self._longest_s)

    def hang_bound(self) -> float:
        """Seconds of silence after which a running actor is taken for hung: the configured
        bound, stretched only for steps that really take longer (a big model on a CPU)."""
        return max(self.hang_timeout_s, self.hang_steps * self._longest_s)

    def actor_exited(self, actor_id: str, how: str, now: float) -> list[Out]:
        """A supervised process ended: replace it and replay, or fail the run."""
        slot = self._slots.get(actor_id)
        if self.state == "done" or slot is None or slot.finished is not None:
            return []
        if slot.killing:
            how = f"taken for hung, then {how}"
        if self.state == "running" and self._may_restart(slot, now):
            return self._lose(slot, how, now)
        # a lost process is a root cause: it goes before the collective errors it provoked
        self.problems.insert(len(self.lost), f"rank {slot.rank} (actor {actor_id}) exited: {how}")
        self.lost[slot.rank] = how
        return self._fail(None, now)

    def _may_restart(self, slot: _Slot, now: float, lost: bool = True) -> bool:
        times = [t for t in self._restart_times.get(slot.rank, []) if now - t <= self.restart_window_s]
        times.append(now)
        self._restart_times[slot.rank] = times
        if len(times) > self.max_restarts:
            self.budget_exceeded = True
            self.problems.append(f"rank {slot.rank} was lost {len(times)} times within {self.restart_window_s:g} s "
                                 f"(--max-restarts {self.max_restarts})")
            return False
        survivors = [s for s in self._members() if (s is not slot or not lost) and s.hello is not None and s.has_state]
        if not survivors:
            self.problems.append("no actor with the training state survived; nothing to recover from")
            return False
        return True

    def _lose(self, slot: _Slot, how: str, now: float) -> list[Out]:
        """Start a replacement; if the lost actor was in the group, the rest re-form it now
        without it (and replay what it had not committed), taking over its share."""
        slot.restarts += 1
        committed = self.committed()   # of the group it was in: its pieces of later steps are lost
        self.events.append(ActorLost(slot.rank, how, committed))
        if slot.identity is not None:
            self._by_identity.pop(slot.identity, None)
        member = slot.active
        slot.identity, slot.hello, slot.killing, slot.fresh, slot.has_state = None, None, False, True, False
        slot.active = slot.joining = False
        slot.compute.clear()
        self.respawn.append(slot.actor_id)
        if not member:
            return []   # a replacement lost before it rejoined: the group is not affected
        return self._regroup(now, committed)

    def _regroup(self, now: float, committed: int | None = None) -> list[Out]:
        """Form the next generation of the group at the newest snapshot at or before the first
        uncommitted step, with every member that has state and every replacement that has
        said hello. The Regroup itself makes a member leave the broken group."""
        committed = self.committed() if committed is None else committed
        self._high_water = max([self._high_water] + [s.last_step for s in self._slots.values()])
        self.generation += 1
        # the new group answers any failure reported by the old one: a survivor's report of
        # a peer's death, seen before the exit itself, must not re-form a later group
        self._group_failed = None
        every = self.snapshot_every
        rewind = max((committed + 1) // every * every, self.group_start)
        self.replayed_steps += max(self._high_water + 1 - rewind, 0)
        joined = [s for s in self._ranked() if s.fresh and s.hello is not None]
        for slot in joined:
            slot.active = True
        members = self._members()
        source = next(s.rank for s in members if s.has_state)
        self.group_start, self._granted, self._join_at = rewind, rewind, None
        self._resplit(rewind)
        ranks = [s.rank for s in members]
        outs = []
        for slot in members:
            slot.last_step, slot.joining = rewind - 1, True
            if slot.fresh:
                slot.last_heard = now
                outs.append(Out(slot.identity, self._welcome(slot, source)))
                slot.fresh = False
            else:
                outs.append(Out(slot.identity, Regroup(job_id=self.job.job_id, generation=self.generation, rank=slot.rank,
                                                       world_size=len(self._slots), rewind_step=rewind,
                                                       source_rank=source, members=ranks,
                                                       gradient_sync=self._gradient_sync())))
        self.events.append(Recovered(self.generation, rewind, self.replayed_steps, tuple(ranks),
                                     tuple(s.rank for s in joined)))
        self.state = "running"
        return outs + self._grant_more(force=True)

    def _resplit(self, step: int) -> None:
        """The split for the current members, from ``step`` on: the planner's best guess when it
        has measured every member, else the starting shares renormalised over the members.
        The history keeps only splits of steps before ``step`` (later ones are replayed)."""
        members = {s.rank for s in self._members()}
        self._probe = []   # a regroup during the probe abandons it
        split = None
        if self.planner is not None:
            self.planner.caps = [cap if rank in members else 0 for rank, cap in enumerate(self._caps)]
            split = self.planner.best()
        if split is None:
            split = share_among(self._base_split, members, self.job.job.batch_size,
                                self.planner.cfg.align if self.planner is not None else 1)
        self.split_history = [entry for entry in self.split_history if entry[0] < step] or \
            [(step, list(split), "start", self._version)]
        self._version += 1   # the new group's grants start from it; no earlier split may be agreed on
        if self.split_at(step) != split:
            self.split_history.append((step, list(split), "members", self._version))
        self.split = split

    def _schedule_rejoin(self, now: float) -> list[Out]:
        """A replacement said hello: stop granting at the next snapshot boundary, where it rejoins."""
        if self.state != "running" or self._join_at is not None:
            return self._maybe_rejoin(now)
        every = self.snapshot_every
        at = max(-(-self._granted // every) * every, self.group_start)
        if at < self.total_steps:   # otherwise the job ends first and the replacement sits it out
            self._join_at = at
        return self._maybe_rejoin(now)

    def _maybe_rejoin(self, now: float) -> list[Out]:
        if self._join_at is None or self.state != "running" or self.committed() + 1 < self._join_at:
            return []
        return self._regroup(now)

    @property
    def failure(self) -> str | None:
        """Why the run failed, root causes (lost processes) first."""
        return "; ".join(self.problems) or None

    @property
    def rebalances(self) -> int:
        """How many splits the planner decided (not the warm-up probe, nor a change of members;
        the result counts those that took effect before the steps ran out)."""
        return self._planner_changes

    def _sender_matches(self, identity: bytes, msg: Message) -> bool:
        slot = self._by_identity.get(identity)
        if slot is None:
            return False
        rank = getattr(msg, "rank", slot.rank)
        job_id = getattr(msg, "job_id", self.job.job_id)
        return rank == slot.rank and job_id == self.job.job_id

    def _drop(self) -> list[Out]:
        self.bad_messages += 1
        return []

    # -- handlers --------------------------------------------------------------------

    def _on_hello(self, _slot, identity: bytes, msg: Hello, now: float) -> list[Out]:
        slot = self._slots.get(msg.actor_id)
        replacement = self.state in ("running", "stopping") and slot is not None and slot.fresh
        if (self.state != "gathering" and not replacement) or slot is None or slot.hello is not None \
                or identity in self._by_identity:
            return self._drop()
        slot.identity, slot.hello, slot.seen, slot.last_heard = identity, msg, msg, now
        self._by_identity[identity] = slot
        if replacement:
            return self._schedule_rejoin(now)
        if any(s.hello is None for s in self._slots.values()):
            return []
        self.state = "running"
        for other in self._slots.values():   # the clock of silence starts for everyone now
            other.last_heard, other.joining = now, True
        self._caps = [rows_that_fit(s.hello.memory_bytes, self.data.n_features, self.job.job.hidden, self.data.n_classes)
                      for s in self._ranked()]
        if self.planner is not None:
            self.planner.caps = list(self._caps)
            self._plan_probe()
        return [Out(s.identity, self._welcome(s)) for s in self._ranked()] + self._grant_more()

    def _plan_probe(self) -> None:
        """While every actor trains the same rows per step, a fixed cost per step cannot be
        told from a cost per row, and the planner would split by rows alone. So once warm,
        pairs of actors trade a few rows one way for ``probe_steps`` steps, then the other
        way, then go back: the mathematics is the same, and the fits see rows vary."""
        align, first = self.planner.cfg.align, self.group_start + self.probe_after
        d = align * max(1, round(0.15 * min(self.split) / align))
        if len(self.split) < 2 or d >= min(self.split) or first + 2 * self.probe_steps >= self.total_steps:
            return
        pairs = len(self.split) // 2 * 2   # an odd actor out keeps its rows
        one_way = [r + (d if i % 2 == 0 else -d) if i < pairs else r for i, r in enumerate(self.split)]
        other_way = [r - (d if i % 2 == 0 else -d) if i < pairs else r for i, r in enumerate(self.split)]
        self._probe = [(first, one_way), (first + self.probe_steps, other_way),
                       (first + 2 * self.probe_steps, list(self.split))]

    def _welcome(self, slot: _Slot, source: int | None = None) -> Welcome:
        return Welcome(rank=slot.rank, world_size=len(self._slots), save_path=self.save_path,
                       job=self.job, data=self.data, steps_per_epoch=self.steps_per_epoch,
                       threads=slot.threads, backend=self._backend(),
                       collective_timeout_s=self.collective_timeout_s(), generation=self.generation,
                       start_step=self.group_start, source_rank=source,
                       resume_from=self.resume_from if self.generation == 0 else None,
                       snapshot_every=self.snapshot_every, members=[s.rank for s in self._members()],
                       gradient_sync=self._gradient_sync())

    def _gradient_sync(self) -> str:
        """A group of 2 to 4 CPU actors exchanges gradients point to point (one round of
        messages; gloo's ring all-reduce takes two, and on a few local processes latency is
        what costs); anything else uses the backend's all-reduce."""
        devices = [s.hello.device for s in self._members() if s.hello is not None]
        return "exchange" if 2 <= len(devices) <= 4 and all(d == "cpu" for d in devices) else "allreduce"

    def _backend(self) -> str:
        """NCCL when every actor is a GPU; gloo (which also takes CUDA tensors) for mixed groups."""
        devices = [s.hello.device for s in self._slots.values() if s.hello is not None]
        return "nccl" if devices and all(d.startswith("cuda") for d in devices) else "gloo"

    def _on_reports(self, slot: _Slot, _identity, msg: Reports, now: float) -> list[Out]:
        if msg.generation != self.generation or not slot.active:
            return []   # steps of a group that broke; they will be replayed
        slot.has_state = slot.has_state or bool(msg.steps)
        slot.joining = slot.joining and not msg.steps
        for stat in msg.steps:
            slot.last_step = max(slot.last_step, stat.step)
            slot.compute.append(stat.compute_s)
            self._step_s = stat.step_s if self._step_s is None else 0.8 * self._step_s + 0.2 * stat.step_s
            self._longest_s = max(0.99 * self._longest_s, stat.step_s)
            if self.planner is not None:
                self.planner.observe(slot.rank, stat.rows, stat.compute_s, now, stat.step_s)
            self._in_use(stat.version, stat.step)
        return self._rebalance(now) + self._grant_more() + self._maybe_stop() + self._maybe_rejoin(now)

    def _on_epochresult(self, slot: _Slot, _identity, msg: EpochResult, now: float) -> list[Out]:
        leader = slot is self._leader()
        if leader and msg.epoch < len(self._epochs):
            return []   # evaluated again after a rewind or resume to an epoch boundary
        if not leader or msg.epoch != len(self._epochs) or msg.generation != self.generation:
            return self._drop()
        self._epochs.append(msg)
        last_step = (msg.epoch + 1) * self.steps_per_epoch - 1
        shares = tuple(b / self.job.job.batch_size for b in self.split_at(last_step))
        rate = self.n_train / msg.seconds if msg.seconds > 0 else 0.0
        self.events.append(EpochEvent(msg.epoch + 1, self.job.job.epochs, msg.train_loss, msg.test_loss,
                                      msg.test_accuracy, msg.seconds, rate, shares))
        return self._maybe_done(now)

    def _on_finished(self, slot: _Slot, _identity, msg: Finished, now: float) -> list[Out]:
        if self.state != "stopping" or slot.finished is not None or not slot.active:
            return self._drop()
        slot.finished = msg
        return self._maybe_done(now)

    def _on_failure(self, slot: _Slot, _identity, msg: Failure, now: float) -> list[Out]:
        return self._fail(f"rank {slot.rank} failed: {msg.message}", now)

    def _on_groupfailed(self, slot: _Slot, _identity, msg, now: float) -> list[Out]:
        """A collective failed. Usually a peer died and its exit is about to be seen; if every
        actor is still here after a short grace (a timeout, a network error), the same group
        re-forms from the last snapshot, which counts against the budget."""
        if self.state == "running" and msg.generation == self.generation and self._group_failed is None:
            self._group_failed = (slot, msg.message, now)
        return []

    def _regroup_all(self, now: float) -> list[Out]:
        slot, message, _at = self._group_failed
        self._group_failed = None
        self.problems.append(f"rank {slot.rank}: collective failed: {message}")
        if not self._may_restart(slot, now, lost=False):
            return self._fail(None, now)
        return self._regroup(now)

    def _on_checkpointed(self, slot: _Slot, _identity, msg, now: float) -> list[Out]:
        self.checkpointed = msg
        return []

    def checkpoint_now(self) -> list[Out]:
        """Ask the leader (the lowest member) for a checkpoint of the drained boundary (the
        answer lands in ``checkpointed``)."""
        self.checkpointed = None
        return [Out(self._leader().identity, CheckpointNow(job_id=self.job.job_id, step=self._granted))]

    def _on_heartbeat(self, slot: _Slot, _identity, msg, now: float) -> list[Out]:
        return []

    # -- decisions -------------------------------------------------------------------

    def committed(self) -> int:
        """The last step every member of the group has reported (-1 before the first)."""
        return min(s.last_step for s in self._members())

    def window(self) -> int:
        """Steps to grant ahead: enough to never starve an actor, few enough that a new split
        takes effect soon even if the members do not agree on it sooner (see Resplit): it
        applies from the end of what was already granted at the latest."""
        if self.planner is None and not any(s.fresh for s in self._slots.values()):
            return self.max_window   # the split never changes: grant far ahead
        # (a replacement on its way rejoins where the grants end: keep them short meanwhile)
        if self._step_s is None or self._step_s <= 0:
            return self.min_window
        return max(self.min_window, min(self.max_window, math.ceil(self.window_s / self._step_s)))

    def _rebalance(self, now: float) -> list[Out]:
        if self.planner is None or self.state != "running":
            return []   # (with every step granted, a new split still goes out as a Resplit)
        # reports arrive every few milliseconds; planning on each is wasted work, unless a
        # device just changed speed or a move just missed (then every step counts, and the
        # usual round still comes when it is due)
        news = self.planner.news
        if self._probe or (now - self._planned_at < self.plan_every_s and not news):
            return []
        if not news:
            self._planned_at = now
        proposal = self.planner.propose(self.split, now)
        if proposal is None:
            return []
        fixed = self.planner.overhead()
        before, after = max(self.planner.predict(self.split)) + fixed, max(self.planner.predict(proposal)) + fixed
        self.split = proposal
        self._planner_changes += 1
        self._version += 1
        # in effect from where the grants end at the latest; sooner if the members agree on it
        self.split_history.append((self._granted, list(proposal), "planner", self._version))
        self.events.append(SplitChanged(self._granted, tuple(proposal), 1.0 - after / before if before else 0.0))
        resplit = Resplit(job_id=self.job.job_id, generation=self.generation, version=self._version,
                          split=list(proposal))
        return [Out(s.identity, resplit) for s in self._members()] + self._grant_more(force=True)

    def _in_use(self, version: int, step: int) -> None:
        """An actor trained ``step`` with split ``version``: a planner's split the members
        agreed on early starts there in the history."""
        for i in range(len(self.split_history) - 1, 0, -1):
            first, split, why, v = self.split_history[i]
            if v < version:
                return
            if v == version:
                if step < first and self.split_history[i - 1][0] < step:
                    self.split_history[i] = (step, split, why, v)
                return

    def split_at(self, step: int) -> list[int]:
        """The split in effect at global ``step``."""
        return next(split for first, split, _why, _v in reversed(self.split_history) if first <= step)

    def interrupt(self) -> None:
        """Grant no further steps; the actors stop at the end of what they hold."""
        self.interrupted = True

    def drained(self) -> bool:
        """Every actor has trained every step it was granted (only meaningful once interrupted)."""
        return self.state == "running" and self.committed() + 1 >= self._granted

    def _grant_more(self, force: bool = False) -> list[Out]:
        if self.state != "running" or self.interrupted or self._granted >= self.total_steps:
            return []
        window = self.window()
        # with a planner the window is short (a new split waits behind it), so keep it topped
        # up; without one it is long, and half of it is plenty of slack
        slack = window - max(1, window // 4) if self.planner is not None else window // 2
        if not force and self._granted - (self.committed() + 1) > slack:
            return []
        first = self._granted
        end = min(self.total_steps, max(first + 1, self.committed() + 1 + window))
        while self._probe and self._probe[0][0] <= first:   # the probe's next split starts here
            self.split = self._probe.pop(0)[1]
            self._version += 1
            self.split_history.append((first, list(self.split), "probe", self._version))
        if self._probe:
            end = min(end, self._probe[0][0])
        if self._join_at is not None:   # replacements rejoin there: nothing past it yet
            end = min(end, self._join_at)
            if end <= first:
                return []
        self._granted = end
        grant = Grant(job_id=self.job.job_id, first_step=first, end_step=end, split=list(self.split),
                      committed=self.committed(), version=self._version)
        return [Out(s.identity, grant) for s in self._members()]

    def _maybe_stop(self) -> list[Out]:
        if self.state != "running" or self.committed() < self.total_steps - 1:
            return []
        self.state = "stopping"
        stop = Stop(job_id=self.job.job_id, save=self.save_path is not None)
        return [Out(s.identity, stop) for s in self._members()]

    def _maybe_done(self, now: float) -> list[Out]:
        finished = all(s.finished is not None for s in self._members())
        if self.state == "stopping" and finished and len(self._epochs) == self.job.job.epochs:
            self.state, self.ended_at = "done", now
        return []

    def fail(self, reason: str, now: float) -> None:
        """End the run as failed for a reason seen outside the messages (a timeout)."""
        if self.state not in ("done", "failed"):
            self._fail(reason, now)

    def _fail(self, reason: str | None, now: float) -> list[Out]:
        if reason is not None:
            self.problems.append(reason)
        if self.state != "failed":
            self.state, self.ended_at = "failed", now
        return []

    def samples_done(self) -> int:
        """Training samples in the committed steps."""
        epochs, steps = divmod(self.committed() + 1, self.steps_per_epoch)
        return epochs * self.n_train + min(steps * self.job.job.batch_size, self.n_train)

    @property
    def epochs_done(self) -> int:
        return len(self._epochs)

    @property
    def last_epoch(self) -> EpochResult | None:
        return self._epochs[-1] if self._epochs else None

    def actor_view(self) -> list[dict]:
        """Per rank: pid, device, share and median recent compute (for the live view)."""
        out = []
        for slot in self._ranked():
            out.append({"rank": slot.rank, "actor_id": slot.actor_id, "share": self.split[slot.rank] / self.job.job.batch_size,
                        "compute_ms": median(slot.compute) * 1000 if slot.compute else None,
                        "lost": slot.rank in self.lost, "restarting": slot.fresh or slot.joining and self.generation > 0,
                        "in_group": slot.active,
                        "finished": slot.finished is not None})
        return out

    def identities(self) -> list[bytes]:
        """ROUTER identities of every actor that said hello."""
        return list(self._by_identity)

    def _ranked(self) -> list[_Slot]:
        return sorted(self._slots.values(), key=lambda s: s.rank)

    def _members(self) -> list[_Slot]:
        """The gradient group, by rank (a lost actor leaves it; its replacement rejoins)."""
        return [s for s in self._ranked() if s.active]

    def _leader(self) -> _Slot:
        """The lowest member: it evaluates for the job, writes checkpoints and the weights."""
        return self._members()[0]

    # -- output ----------------------------------------------------------------------

    def result(self) -> dict:
        """The job's final figures (meaningful once ``state == 'done'``)."""
        last = self._epochs[-1] if self._epochs else None
        steady = self._epochs[1:] or self._epochs  # the first epoch pays for warm-up
        seconds = sum(e.seconds for e in steady)
        trained = self.committed() + 1
        # a split decided too late to be used (the steps ran out first) is no change
        changes = [(step, split, why) for step, split, why, _v in self.split_history[1:] if step < trained]
        return {
            "test_accuracy": last.test_accuracy if last else None,
            "test_loss": last.test_loss if last else None,
            "train_loss": last.train_loss if last else None,
            "epochs": len(self._epochs),
            "steps": trained,
            "wall_s": (self.ended_at or 0.0) - (self.started_at or 0.0),
            "samples_per_s": self.n_train * len(steady) / seconds if seconds > 0 else None,
            "rebalances": sum(why == "planner" for _step, _split, why in changes),
            "replayed_steps": self.replayed_steps,
            "split_changes": [{"step": step, "split": split, "why": why} for step, split, why in changes],
            "actors": [self._actor_result(s, self.split_at(max(trained - 1, self.start_step))) for s in self._ranked()],
        }

    def _actor_result(self, slot: _Slot, split: list[int]) -> dict:
        fin, hello, seen = slot.finished, slot.hello, slot.seen
        return {
            "rank": slot.rank,
            "device": seen.device if seen else None,
            "device_name": seen.device_name if seen else None,
            "pid": hello.pid if hello else None,   # None: its replacement never said hello
            "share": split[slot.rank] / self.job.job.batch_size,   # at the last step
            "samples_per_s": fin.samples / fin.seconds if fin and fin.seconds > 0 else None,
            "restarts": slot.restarts,
            "in_group": slot.active,
        }
