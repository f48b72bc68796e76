"""The asyncio shell around ``TrainingRun``: receive, decode, decide, encode, send.

Everything that waits lives here; every decision lives in ``run.py``. Nothing here
installs signal handlers or touches the event loop policy, so it runs inside any
asyncio (or uvloop) application.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import zmq

from ..actors.devices import Selection, allowed_cores, core_sets, select
from ..actors.spawn import Supervisor
from ..actors.tether import clean_stale_run_dirs, make_run_dir
from .. import messages as protocol
from ..data.background import run_in_daemon_thread
from ..data.cache import DatasetCache
from ..data.shm import clean_stale, new_run_id
from ..errors import ConfigError, Interrupted, JobFailed, ProtocolError, RestartBudgetExceeded
from ..messages import ACTOR_LIMITS, EpochResult, JobSpec, Release, Shutdown, StoreRequest, TrainJob
from ..nn import checkpoint
from .channel import Channel, PeerGone
from .plan import even_split, split_from_fractions, steps_per_epoch
from .planner import Planner, PlannerConfig
from .run import Out, TrainingRun
from .store import StoreCore

GATHER_TIMEOUT_S = 120.0   # every actor must have said hello by then
SETTLE_S = 1.0            # after a failure, how long to wait for its root cause to show
TICK_S = 0.1               # how often process exits are checked while the socket is quiet
PUMP_BATCH = 256           # actor messages handled before the loop is handed back


def job_spec(job: TrainJob, job_id: int) -> JobSpec:
    """The wire form of a job: what the actors need (never a client's path)."""
    return JobSpec(job_id=job_id, job=replace(job, save=None), fingerprint=job.fingerprint())


def initial_split(job: TrainJob, world: int) -> list[int]:
    """The user's fixed shares, or an even split."""
    job.check_world(world)
    if job.split is None:
        return even_split(job.batch_size, world, job.align if job.planned else 1)
    return split_from_fractions(job.batch_size, list(job.split))


class ActorPool:
    """The broker's long-lived half: one actor process per device, the socket they talk to,
    the store where they form gradient groups and the shared-memory dataset cache.

    Actors outlive jobs: after each job they say hello again and wait for the next one.
    An idle actor that dies is started again; after a failed job every actor is replaced
    (a survivor may still sit in a broken collective). With more than one CPU actor, one
    spare CPU process waits, started and warmed up: a lost CPU actor is replaced by
    adopting it (milliseconds) instead of starting a process (seconds).

    The spare's start-up takes over two seconds of CPU, and the CPU actors have every core
    between them, so it would come out of a running job: even at idle priority it cost a
    2-actor job on 2 cores about a tenth of its speed while it got ready. So it starts at
    idle priority, and only while the pool is idle (between jobs) or once a job has run
    ``SPARE_AFTER_S``. A job shorter than that has no spare: a lost actor is replaced by a
    new process (seconds).
    """

    SPARE = "spare"
    SPARE_AFTER_S = 20.0

    def __init__(self, gpus: str = "all", cpu_actors: int | None = None,
                 actor_env: dict[str, str] | None = None, pin: bool = True, cache_bytes: int | None = None) -> None:
        self.cache_bytes = cache_bytes   # the dataset cache's budget (None: from free memory)
        self.selection: Selection = select(gpus, cpu_actors)
        # each CPU actor on cores of its own (its replacements too); None: not pinned
        self.cores = core_sets(self.selection, allowed_cores()) if pin else [None] * len(self.selection.actors)
        self.actor_env = actor_env or {}
        self.ids = [f"a{rank}" for rank in range(len(self.selection.actors))]
        self.hellos: dict[str, tuple[bytes, protocol.Hello]] = {}   # idle actors: identity and hello
        self.known: dict[str, protocol.Hello] = {}                   # the last hello of every actor
        self.restarts = dict.fromkeys(self.ids, 0)
        self.exits: list[tuple[str, str]] = []                      # exits seen while idle, for the log
        self._job_ids = itertools.count(1)
        self.started = False
        self.channel: Channel | None = None
        cpu_plans = [p for p in self.selection.actors if p.device == "cpu"]
        self.spare_plan = cpu_plans[0] if len(self.selection.actors) > 1 and cpu_plans else None
        self.spare: tuple[bytes, protocol.Hello] | None = None   # the spare's identity and hello, once ready
        self._spare_process = False   # a spare process is running (ready or getting ready)
        self.outbox: list[tuple[bytes, protocol.Message]] = []   # messages the pool wants sent
        self._spare_starts: list[float] = []

    @property
    def world(self) -> int:
        return len(self.ids)

    def next_job_id(self) -> int:
        return next(self._job_ids)

    async def start(self) -> None:
        """Create the socket, the store and the cache, and start every actor."""
        clean_stale()
        clean_stale_run_dirs()
        self.run_id = new_run_id()
        self.run_dir = Path(make_run_dir())
        self.cache = DatasetCache(self.run_id, budget_bytes=self.cache_bytes)
        self.supervisor = Supervisor(self.run_dir, f"ipc://{self.run_dir}/broker.sock")
        self.started = True
        self.channel = Channel(self.supervisor.connect, ACTOR_LIMITS.frame_bytes)
        self.store = StoreCore()   # groups form through it, on this channel (nothing else listens)
        for actor_id, plan, cores in zip(self.ids, self.selection.actors, self.cores):
            self.supervisor.spawn(actor_id, plan, {**self.actor_env, "LEPTONRT_INCARNATION": "0"}, cores)

    def job_running(self, seconds: float) -> None:
        """A job has run for ``seconds``: long enough to give it a spare?"""
        if seconds >= self.SPARE_AFTER_S:
            self._start_spare()

    def _start_spare(self) -> None:
        """Start a spare if there is none (called while idle, or once a job has run long enough)."""
        if self._spare_process or self.spare_plan is None:
            return   # one is running, or this pool has none (called on every tick of a long job)
        now = time.monotonic()
        self._spare_starts = [t for t in self._spare_starts if now - t < 60.0]
        if len(self._spare_starts) >= 5:
            return   # it keeps dying: replacements start from scratch
        self._spare_starts.append(now)
        self._spare_process = True
        # a spare is never an actor's first process: injected faults (but `start`) stay off
        # it gets ready at idle priority (see leptonrt.actors.__main__): never at a job's expense
        self.supervisor.spawn(self.SPARE, self.spare_plan,
                              {**self.actor_env, "LEPTONRT_INCARNATION": "1", "LEPTONRT_SPARE": "1"})

    def exited(self, actor_id: str) -> bool:
        """Handle an exit if it was the spare's (True); other exits are the caller's."""
        if actor_id != self.SPARE:
            return False
        self.spare, self._spare_process = None, False
        return True

    def flush(self) -> None:
        """Send what the pool queued (adoptions)."""
        while self.outbox:
            identity, message = self.outbox.pop(0)
            self.send(identity, message)

    def send(self, identity: bytes, message: protocol.Message) -> bool:
        """Send one message to an actor; False if it is gone or not reading (its exit or
        its silence is what the job then acts on)."""
        try:
            return self.channel.send_nowait(identity, protocol.encode(message))
        except PeerGone:
            return False

    def store_request(self, identity: bytes, message: StoreRequest) -> None:
        for to, reply in self.store.handle(identity, message):
            self.send(to, reply)

    async def idle(self, wait_ms: int) -> None:
        """Between jobs: take hellos, drop late traffic of past jobs, restart dead actors."""
        if await self.channel.wait_readable(wait_ms):
            while (frames := self.channel.recv_nowait()) is not None:
                self.note(frames)
        for actor_id, how in self.supervisor.exited():
            if not self.exited(actor_id):
                self.exits.append((actor_id, how))
                self.respawn(actor_id)
        self._start_spare()
        self.flush()

    def note(self, frames: list[bytes]) -> None:
        """A message for the pool rather than a job (a hello while idle, the spare's hello)."""
        try:
            message = protocol.decode(frames[1], ACTOR_LIMITS) if len(frames) == 2 else None
        except ProtocolError:
            return
        if isinstance(message, StoreRequest):
            self.store_request(frames[0], message)
        elif isinstance(message, protocol.Hello) and message.actor_id == self.SPARE:
            self.spare = (frames[0], message)
        elif isinstance(message, protocol.Hello) and message.actor_id in self.restarts:
            self.hellos[message.actor_id] = (frames[0], message)
            self.known[message.actor_id] = message

    def respawn(self, actor_id: str) -> None:
        """Start ``actor_id`` again: adopt the warm spare if it fits, else a new process."""
        plan, cores = self.selection.actors[self.ids.index(actor_id)], self.cores[self.ids.index(actor_id)]
        self.hellos.pop(actor_id, None)
        self.restarts[actor_id] += 1
        if self.spare is not None and plan == self.spare_plan:
            identity, _hello = self.spare
            self.spare, self._spare_process = None, False
            self.supervisor.rename(self.SPARE, actor_id)
            self.supervisor.pin(actor_id, cores)   # the spare floats until it takes a place
            self.outbox.append((identity, protocol.Adopt(actor_id=actor_id)))
            return
        # faults injected by tests fire in an actor's first process only
        self.supervisor.spawn(actor_id, plan, {**self.actor_env, "LEPTONRT_INCARNATION": str(self.restarts[actor_id])},
                              cores)

    def replace_all(self) -> None:
        """Stop every actor and start a fresh one in its place (after a failed job)."""
        self.supervisor.close()
        self.supervisor.exited()   # the exits we caused are not news
        self.hellos.clear()
        self.spare, self._spare_process = None, False
        for actor_id in self.ids:
            self.respawn(actor_id)

    def take_hellos(self) -> list[tuple[bytes, protocol.Hello]]:
        """The idle actors' hellos, for a starting job; they are its actors now."""
        out, self.hellos = list(self.hellos.values()), {}
        return out

    async def close(self) -> None:
        """Tell every actor to exit, then make sure of it; unlink every segment and file."""
        if not self.started:
            return
        self.started = False
        bye = protocol.encode(Shutdown(reason="broker closing"))
        try:
            idle = list(self.hellos.values()) + ([self.spare] if self.spare else [])
            for identity, _hello in idle:   # idle actors; busy ones get SIGTERM
                try:
                    self.channel.send_nowait(identity, bye)
                except (zmq.ZMQError, PeerGone):
                    pass
        finally:
            self.supervisor.close()
            if self.channel is not None:
                self.channel.close()
            self.cache.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)


class JobRunner:
    """Runs one job on a pool's actors. Without a pool it brings up its own for the job,
    and removes every trace of it afterwards."""

    def __init__(self, job: TrainJob, *, gpus: str = "all", cpu_actors: int | None = None,
                 on_event: Callable[[object], None] | None = None, actor_env: dict[str, str] | None = None,
                 pool: ActorPool | None = None, pin: bool = True, keep_weights: bool = False) -> None:
        self.job, self.on_event = job, on_event or (lambda _e: None)
        self.pool = pool
        self._own_pool = pool is None
        if pool is None:
            self.pool = ActorPool(gpus, cpu_actors, actor_env, pin)
        self.selection = self.pool.selection
        self.notes: list[str] = [self.selection.note] if self.selection.note else []
        self.core: TrainingRun | None = None
        self._namespace: str | None = None   # the store's open namespace (the group's generation)
        self._data: protocol.DatasetInfo | None = None   # the dataset this job holds pinned in the cache
        # the leader writes the weights into the broker's private run directory; from there
        # they go to job.save (the caller's own path: this process is the client) or stay for
        # the caller to take (weights_path), e.g. to stream them back to a remote client
        self.keep_weights = keep_weights
        self.weights_path: Path | None = None

    async def run(self) -> dict:
        """Train; return the result dict, or raise JobFailed / DataError / ConfigError."""
        pool = self.pool
        failed = True
        try:
            self.job.check_world(pool.world)   # before any actor starts: a mistake costs nothing
            if self._own_pool:
                await pool.start()
            self.core = await self._start()
            await self._serve(self.core)
            result = self.core.result()
            if self.job.slowdowns:
                result["simulated_slowdowns"] = [{"rank": s.rank, "factor": s.factor, "from_step": s.from_step,
                                                  "to_step": s.to_step} for s in self.job.slowdowns]
            failed = False   # the actors did their part: a weights file we cannot place is not theirs
            self._deliver_weights()
            return result
        finally:
            if pool.started:
                for identity, reply in pool.store.close():
                    pool.send(identity, reply)
                if self._data is not None:
                    pool.cache.release(self._data)
                    self._data = None
            if self._own_pool:
                await pool.close()
            elif self.core is not None:
                if failed or self.core.state != "done":
                    pool.replace_all()
                else:
                    self._release(self.core)

    def _wants_weights(self) -> bool:
        return self.job.save is not None or self.keep_weights

    def _deliver_weights(self) -> None:
        """Move the weights the leader wrote to the caller's ``save`` path (atomically, in its
        directory), or leave them in ``weights_path`` for the caller."""
        written = self.pool.run_dir / f"weights-job{self.core.job.job_id}.safetensors"
        if not self._wants_weights():
            return
        if not written.exists():
            raise JobFailed("the job finished but its weights were not written")
        if self.job.save is None:
            self.weights_path = written
            return
        target = Path(self.job.save)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(written, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write the weights to {target}: {exc.strerror or exc}") from None
        finally:
            written.unlink(missing_ok=True)

    async def _stopped_at_boundary(self, core: TrainingRun) -> str:
        """The job stopped on request; keep its progress in a checkpoint if it has a directory."""
        text = f"interrupted: stopped after step {core.committed()} of {core.total_steps} (at a step boundary)"
        if not self.job.checkpoint_dir:
            return text
        self._send(core.checkpoint_now())
        deadline = time.monotonic() + 60.0
        while core.checkpointed is None and time.monotonic() < deadline and core.state == "running":
            await self._pump(core, 50)
        done = core.checkpointed
        if done is not None and done.path:
            return f"{text}; checkpoint written to {done.path} (--resume continues from it)"
        why = done.message if done else "the lowest member of the group did not answer"
        return f"{text}; no checkpoint written: {why}"

    def interrupt(self) -> None:
        """Stop the job at the next step boundary every actor reaches (run() then raises Interrupted)."""
        if self.core is not None:
            self.core.interrupt()

    async def _start(self) -> TrainingRun:
        job, pool = self.job, self.pool
        # pinned while the job runs: the cache never evicts it meanwhile
        self._data = data = await pool.cache.acquire(job.dataset, seed=job.seed, test_fraction=job.test_fraction)
        world = pool.world
        split = initial_split(job, world)
        n_train = data.x_train.shape[0]   # never 0: the loaders refuse an empty training split
        planner = Planner(world, job.batch_size, PlannerConfig(align=job.align)) if job.planned and world > 1 else None
        start_step, prior, resume_from = 0, [], None
        if job.resume:
            found = await run_in_daemon_thread(partial(checkpoint.latest, job.checkpoint_dir),
                                               name="leptonrt-checkpoint")
            if found is not None:
                checkpoint.check_fingerprint(found, job.fingerprint())
                start_step, resume_from = found.step, str(found.path)
                prior = [EpochResult(job_id=0, rank=0, **e) for e in found.meta.get("epochs", [])]
                self.notes.append(f"resuming from {found.path} (step {found.step})")
            else:
                self.notes.append(f"no checkpoint in {job.checkpoint_dir} yet: starting from the beginning")
        job_id = pool.next_job_id()
        weights = pool.run_dir / f"weights-job{job_id}.safetensors"
        core = TrainingRun(job=job_spec(job, job_id), data=data, actor_ids=list(pool.ids),
                           threads=[p.threads for p in self.selection.actors],
                           split=split, steps_per_epoch=steps_per_epoch(n_train, job.batch_size),
                           n_train=n_train, save_path=str(weights) if self._wants_weights() else None,
                           hang_timeout_s=job.hang_timeout_s, planner=planner,
                           max_restarts=job.max_restarts, restart_window_s=job.restart_window_s,
                           start_step=start_step, resume_from=resume_from, prior_epochs=prior)
        now = time.monotonic()
        self._sync_store(core)
        for identity, hello in pool.take_hellos():
            self._send(core.handle(identity, hello, now))
        return core

    async def _serve(self, core: TrainingRun) -> None:
        started = time.monotonic()
        while core.state not in ("done", "failed"):
            await self._pump(core, int(TICK_S * 1000))
            self.pool.job_running(time.monotonic() - started)
            self._send(core.check_liveness(time.monotonic()))
            if core.state == "gathering" and time.monotonic() - started > GATHER_TIMEOUT_S:
                core.fail(f"not every actor said hello within {GATHER_TIMEOUT_S:.0f} s", time.monotonic())
            self._emit(core)
            if core.interrupted and core.drained():
                raise Interrupted(await self._stopped_at_boundary(core))
        if core.state == "failed":
            await self._settle(core)
            error = RestartBudgetExceeded if core.budget_exceeded else JobFailed
            raise error(self._failure_report(core))

    async def _settle(self, core: TrainingRun) -> None:
        """Give a root cause a moment to surface: a crash elsewhere often shows first as a
        peer's collective error, and the process exit follows a few milliseconds later."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and not core.lost:
            await self._pump(core, 20)

    async def _pump(self, core: TrainingRun, wait_ms: int) -> None:
        """Feed the core every process exit and the messages queued (at most PUMP_BATCH,
        waiting up to ``wait_ms`` for the first)."""
        channel, supervisor = self.pool.channel, self.pool.supervisor
        for actor_id, how in supervisor.exited():   # exits first: they explain the errors that follow them
            if not self.pool.exited(actor_id):
                self._send(core.actor_exited(actor_id, how, time.monotonic()))
        if await channel.wait_readable(wait_ms):
            for _ in range(PUMP_BATCH):
                frames = channel.recv_nowait()
                if frames is None:
                    break
                self._take(core, frames)
        for actor_id in core.kill:
            supervisor.kill(actor_id)
        for actor_id in core.respawn:
            self.pool.respawn(actor_id)
        core.kill, core.respawn = [], []
        self.pool.flush()

    def _take(self, core: TrainingRun, frames: list[bytes]) -> None:
        """One message from the actors' channel: for the store, the pool or the job."""
        try:
            if len(frames) != 2:
                raise ProtocolError(f"expected 2 frames (identity, payload), got {len(frames)}")
            message = protocol.decode(frames[1], ACTOR_LIMITS)
        except ProtocolError:
            core.bad_messages += 1   # dropped; it changes nothing
            return
        if isinstance(message, StoreRequest):
            self.pool.store_request(frames[0], message)
        elif isinstance(message, protocol.Hello) and message.actor_id == ActorPool.SPARE:
            self.pool.note(frames)
        else:
            self._send(core.handle(frames[0], message, time.monotonic()))
        self._sync_store(core)

    def _sync_store(self, core: TrainingRun) -> None:
        """Keep the store's one open namespace the current group's (an older group's keys go)."""
        namespace = f"job{core.job.job_id}/gen{core.generation}/"
        if self._namespace != namespace:
            self._namespace = namespace
            for identity, reply in self.pool.store.open_only(namespace):
                self.pool.send(identity, reply)

    def _send(self, outs: list[Out]) -> None:
        for out in outs:
            self.pool.send(out.identity, out.message)

    def _emit(self, core: TrainingRun) -> None:
        events, core.events = core.events, []
        for event in events:
            self.on_event(event)

    def _release(self, core: TrainingRun) -> None:
        """The job is over: its actors go back to the pool, and say hello when they are ready.
        (One that is gone already is not news: the pool restarts it.)"""
        bye = Release(job_id=core.job.job_id)
        for identity in core.identities():
            self.pool.send(identity, bye)

    def _failure_report(self, core: TrainingRun) -> str:
        lines = [core.failure or "job failed"]
        pids = self.pool.supervisor.pids()
        for rank, (actor_id, plan) in enumerate(zip(core.actor_ids, self.selection.actors)):
            how = core.lost.get(rank, "running")
            lines.append(f"  rank {rank}  {plan.device}  pid {pids.get(actor_id)}  {how}")
            lines.extend(f"    | {line[:200]}" for line in self.pool.supervisor.log_tail(actor_id, 4))
        return "\n".join(lines)
