"""The asyncio shell around one job's core: receive, decode, decide, carry out, send.

Everything that waits lives here; every decision lives in ``job.JobCore``. Nothing here
installs signal handlers or touches the event loop policy, so it runs inside any asyncio
(or uvloop) application.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

from .. import messages as protocol
from ..batches import even_split, split_from_fractions, steps_per_epoch
from ..data.background import run_in_daemon_thread
from ..errors import ConfigError, Interrupted, JobFailed, ProtocolError, RestartBudgetExceeded
from ..actors.spawn import Supervisor
from ..imports import ANY
from ..messages import EpochResult, JobSpec, Release
from ..config import TrainJob
from ..nn import checkpoint
from .events import Effect, Emit, Kill, Pin, Respawn, Send
from .job import JobConfig, JobCore
from .lifecycle import JobState
from .pool import ActorPool
from .rebalance import Rebalancer
from .tally import Tally

GATHER_TIMEOUT_S = 120.0   # every actor must have said hello by then
SETTLE_S = 1.0             # after a failure, how long to wait for its root cause to show
TICK_S = 0.1               # how often process exits and silences are checked while the socket is quiet
PROGRESS_S = 0.25          # how often the job's owner hears how far it is (when it moved)
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


class JobRunner:
    """Runs one job on a pool's actors. Without a pool it brings up its own for the job,
    and removes every trace of it afterwards; that is a local run, in the user's own
    process, so its ``py:`` dataset may name any module."""

    def __init__(self, job: TrainJob, *, gpus: str = "all", cpu_actors: int | None = None,
                 on_event: Callable[[object], None] | None = None, actor_env: dict[str, str] | None = None,
                 pool: ActorPool | None = None, pin: bool = True, keep_weights: bool = False,
                 core_config: JobConfig = JobConfig(), tally: Tally | None = None,
                 supervisor: Supervisor | None = None) -> None:
        self.job, self.on_event = job, on_event or (lambda _e: None)
        self.tally = tally   # the totals the job's committed steps add to (a broker's, across jobs)
        self.core_config = core_config   # how the core grants and plans (the job sets its own bounds on top)
        self._own_pool = pool is None
        # supervisor: one started early for this run's own pool (see ActorPool)
        self.pool = pool if pool is not None else ActorPool(gpus, cpu_actors, actor_env, pin, allow_imports=ANY,
                                                             supervisor=supervisor)
        self.selection = self.pool.selection
        self.notes: list[str] = [self.selection.note] if self.selection.note else []
        self.core: JobCore | None = None
        self._namespace: str | None = None   # the store's open namespace (the group's generation)
        self._data: protocol.DatasetInfo | None = None   # the dataset this job holds pinned in the cache
        # the leader writes the weights into the broker's private run directory; from there
        # they go to job.save (the caller's own path: this process is the client) or stay for
        # the caller to take (weights_path), e.g. to stream them back to a remote client
        self.keep_weights = keep_weights
        self.weights_path: Path | None = None
        self.interrupted = False   # asked to stop at a step boundary (perhaps before the core exists)
        self._idle_at_boundary = False   # it stopped there: every member waits for steps, none is in a collective

    async def run(self) -> dict:
        """Train; return the result dict, or raise JobFailed / DataError / ConfigError / Interrupted."""
        pool, failed = self.pool, True
        try:
            self.job.check_world(pool.world)   # before any actor starts: a mistake costs nothing
            if self._own_pool:
                await pool.start()
            self.core = await self._start()
            await self._serve(self.core)
            result = self.core.result()
            for entry, slot in zip(result["actors"], self.core.roster.ranked()):
                entry["host"] = pool.host_of(slot.actor_id)
            if self.job.slowdowns:
                result["simulated_slowdowns"] = [{"rank": s.rank, "factor": s.factor, "from_step": s.from_step,
                                                  "to_step": s.to_step} for s in self.job.slowdowns]
            failed = False   # the actors did their part: a weights file we cannot place is not theirs
            self._deliver_weights()
            return result
        finally:
            self._end(failed)
            if self._own_pool:
                await pool.close()

    def interrupt(self) -> None:
        """Stop the job at the next step boundary every actor reaches (run() then raises Interrupted)."""
        self.interrupted = True
        if self.core is not None:
            self.core.interrupt()

    def _end(self, failed: bool) -> None:
        pool = self.pool
        pool.job_ended()
        if pool.started:
            for identity, reply in pool.store.close():
                pool.send(identity, reply)
            if self._data is not None:
                pool.cache.release(self._data)
                self._data = None
        if not self._own_pool and self.core is not None:
            if not self._idle_at_boundary and (failed or self.core.state != JobState.DONE):
                pool.replace_all()   # a survivor may still sit in a broken collective
            else:   # done, or stopped at a step boundary: the actors leave the job and wait for the next
                bye = Release(job_id=self.core.job.job_id)
                for identity in self.core.identities():
                    pool.send(identity, bye)

    # -- starting -----------------------------------------------------------------------------

    async def _start(self) -> JobCore:
        job, pool = self.job, self.pool
        # pinned while the job runs: the cache never evicts it meanwhile
        self._data = data = await pool.cache.acquire(job.dataset, seed=job.seed, test_fraction=job.test_fraction,
                                                     label_column=job.label_column)
        pool.check_streamable(data, job.batch_size)
        data_of = await pool.fill_hosts(data)   # joined hosts' own copies, for their actors' Welcome
        world, n_train = pool.world, data.x_train.shape[0]   # never 0: the loaders refuse an empty training split
        split = initial_split(job, world)
        lending = pool.lending()   # the cores of actors on standby go to the members
        rebalancer = Rebalancer(world, job.batch_size, align=job.align, lending=lending,
                                hosts=[pool.host_of(a) for a in pool.ids]) if job.planned and world > 1 else None
        start_step, prior, resume_from, history = await self._resume_point()
        job_id = pool.next_job_id()
        weights = pool.run_dir / f"weights-job{job_id}.safetensors"
        config = replace(self.core_config, hang_timeout_s=job.hang_timeout_s, max_restarts=job.max_restarts,
                         restart_window_s=job.restart_window_s)
        core = JobCore(job=job_spec(job, job_id), data=data, actor_ids=list(pool.ids),
                       threads=[pool.plans[a].threads for a in pool.ids], split=split, n_train=n_train,
                       steps_per_epoch=steps_per_epoch(n_train, job.batch_size), config=config, rebalancer=rebalancer,
                       save_path=str(weights) if self._wants_weights() else None, start_step=start_step,
                       resume_from=resume_from, prior_epochs=tuple(prior), history=history, tally=self.tally,
                       data_of=data_of, lending=lending)
        await pool.open_streams(data, job_id, job.batch_size, job.seed, list(pool.ids))
        if self.interrupted:   # asked while the data was loading: no step will be granted
            core.interrupt()
        self._sync_store(core)
        now = time.monotonic()
        for identity, hello in pool.take_hellos():
            self._apply(core, core.handle(identity, hello, now))
        return core

    async def _resume_point(self) -> tuple[int, list[EpochResult], str | None, bytes | None]:
        """(start step, epoch results so far, checkpoint path, history digest) of a resumed job."""
        job = self.job
        if not job.resume:
            return 0, [], None, None
        found = await run_in_daemon_thread(partial(checkpoint.latest, job.checkpoint_dir), name="leptonrt-checkpoint")
        if found is None:
            self.notes.append(f"no checkpoint in {job.checkpoint_dir} yet: starting from the beginning")
            return 0, [], None, None
        checkpoint.check_fingerprint(found, job.fingerprint())
        self.notes.append(f"resuming from {found.path} (step {found.step})")
        prior = [EpochResult(job_id=0, rank=0, **e) for e in found.meta.get("epochs", [])]
        history = found.meta.get("history")
        return found.step, prior, str(found.path), bytes.fromhex(history) if isinstance(history, str) else None

    # -- serving ------------------------------------------------------------------------------

    async def _serve(self, core: JobCore) -> None:
        started = reported = time.monotonic()
        last = None
        while core.state not in (JobState.DONE, JobState.FAILED):
            await self._pump(core, int(TICK_S * 1000))
            now = time.monotonic()
            if now - reported >= PROGRESS_S and core.state == JobState.RUNNING:
                reported, progress = now, core.progress()
                if progress != last:
                    last = progress
                    self.on_event(progress)
            self.pool.job_running(now - started)
            self._apply(core, core.tick(now))
            if core.state == JobState.GATHERING and now - started > GATHER_TIMEOUT_S:
                core.fail(f"not every actor said hello within {GATHER_TIMEOUT_S:.0f} s", now)
            if core.interrupted and core.drained():
                text = await self._stopped_at_boundary(core)
                self._idle_at_boundary = core.state == JobState.RUNNING
                raise Interrupted(text)
        if core.state == JobState.FAILED:
            if core.unusable is not None:
                raise ConfigError(core.unusable)
            await self._settle(core)
            error = RestartBudgetExceeded if core.budget_exceeded else JobFailed
            raise error(self._failure_report(core))

    async def _settle(self, core: JobCore) -> None:
        """Give a root cause a moment to surface: a crash elsewhere often shows first as a
        peer's collective error, and the process exit follows a few milliseconds later."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and not core.lost:
            await self._pump(core, 20)

    async def _pump(self, core: JobCore, wait_ms: int) -> None:
        """Feed the core every process exit and the messages queued (at most PUMP_BATCH,
        waiting up to ``wait_ms`` for the first)."""
        channel = self.pool.channel
        self.pool.tick()
        for actor_ids, how, host in self.pool.take_exits():   # exits first: they explain the errors that follow
            if host is not None:   # a host lost: all its actors at once
                self._apply(core, core.host_lost(host, list(actor_ids), how, time.monotonic()))
            elif not self.pool.exited(actor_ids[0]):
                self._apply(core, core.exited(actor_ids[0], how, time.monotonic()))
        if await channel.wait_readable(wait_ms):
            for _ in range(PUMP_BATCH):
                frames = channel.recv_nowait(copy=False)
                if frames is None:
                    break
                self._take(core, frames)
        released, self.pool.released = self.pool.released, []
        for identity, hello in released:   # a host that came back holds the data now: its actors join
            self._apply(core, core.handle(identity, hello, time.monotonic()))
        self.pool.flush()

    def _take(self, core: JobCore, frames: list) -> None:
        """One message from the actors' channel: for the pool (the store's, the spare's, a
        host agent's) or the job."""
        try:
            taken = self.pool.take(frames)
        except ProtocolError:
            core.bad_messages += 1   # dropped; it changes nothing
            return
        if taken is not None:
            self._apply(core, core.handle(*taken, time.monotonic()))

    def _apply(self, core: JobCore, effects: list[Effect]) -> None:
        """Carry out the core's effects, in order."""
        for effect in effects:
            if isinstance(effect, Send):
                self.pool.stream_ahead(effect.identity, effect.message)
                if not self.pool.send(effect.identity, effect.message):
                    self._apply(core, core.unreachable(effect.identity, time.monotonic()))
            elif isinstance(effect, Kill):
                self.pool.kill(effect.actor_id)
            elif isinstance(effect, Respawn):
                self.pool.respawn(effect.actor_id)
            elif isinstance(effect, Pin):
                self.pool.pin(effect.actor_id, effect.cores)
            elif isinstance(effect, Emit):
                self.on_event(effect.event)
        self._sync_store(core)

    def _sync_store(self, core: JobCore) -> None:
        """Keep the store's one open namespace the current group's (an older group's keys go)."""
        namespace = f"job{core.job.job_id}/gen{core.generation}/"
        if self._namespace != namespace:
            self._namespace = namespace
            for identity, reply in self.pool.store.open_only(namespace):
                self.pool.send(identity, reply)

    # -- ending -------------------------------------------------------------------------------

    async def _stopped_at_boundary(self, core: JobCore) -> str:
        """The job stopped on request; keep its progress in a checkpoint if it has a directory."""
        text = f"interrupted: stopped after step {core.committed()} of {core.total_steps} (at a step boundary)"
        if not self.job.checkpoint_dir:
            return text
        self._apply(core, core.checkpoint_now())
        deadline = time.monotonic() + 60.0
        while core.checkpointed is None and time.monotonic() < deadline and core.state == JobState.RUNNING:
            await self._pump(core, 50)
        done = core.checkpointed
        if done is not None and done.path:
            return f"{text}; checkpoint written to {done.path} (--resume continues from it)"
        why = done.message if done else "the lowest member of the group did not answer"
        return f"{text}; no checkpoint written: {why}"

    def _wants_weights(self) -> bool:
        return self.job.save is not None or self.keep_weights

    def _deliver_weights(self) -> None:
        """Move the weights the leader wrote to the caller's ``save`` path (atomically, in its
        directory), or leave them in ``weights_path`` for the caller."""
        if not self._wants_weights():
            return
        written = self.pool.run_dir / f"weights-job{self.core.job.job_id}.safetensors"
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

    def _failure_report(self, core: JobCore) -> str:
        lines = [core.failure or "job failed"]
        pids = self.pool.supervisor.pids()
        for slot in core.statistics().slots:
            how, plan = core.lost.get(slot.rank, "running"), self.pool.plans.get(slot.actor_id)
            where = f"{plan.device if plan else '?'} on {self.pool.host_of(slot.actor_id)}"
            lines.append(f"  rank {slot.rank}  {where}  pid {pids.get(slot.actor_id)}  {how}")
            lines.extend(f"    | {line[:200]}" for line in self.pool.supervisor.log_tail(slot.actor_id, 4))
        return "\n".join(lines)

