"""``leptonrt.Broker``: the broker inside any asyncio application.

    async with leptonrt.Broker(gpus="none", cpu_actors=2) as broker:
        job = await broker.submit(leptonrt.TrainJob(dataset="digits", hidden=[128], epochs=10))
        async for event in job.events():
            ...
        result = await job.result()

It runs on the caller's running loop (asyncio or uvloop), installs no signal handlers and
no loop policy, runs submitted jobs one at a time in submission order, and leaves no
task, socket, process or shared-memory segment behind when the block exits — also when
the host cancels it. Every job still pending then gets an answer: ``BrokerClosed``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Iterable
from typing import Callable

import logging

from ..config import TrainJob
from ..errors import ConfigError, InternalError, Interrupted, JobCancelled, LeptonError
from ..imports import check_allowed
from .handle import BrokerClosed, JobHandle
from .events import ActorLost, Benched, Recovered, SplitChanged
from .pool import ActorPool
from .runner import JobRunner
from .snapshots import Snapshots
from .stats import Event, FinishedJob
from .tally import Tally
from .usage import Usage


log = logging.getLogger("leptonrt.broker")

CANCELLED = "cancelled (`leptonrt jobs cancel`)"


class Job(JobHandle):
    """A job submitted to this broker: follow its events, await its result."""

    def __init__(self, job_id: int, spec: TrainJob, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.id, self.spec = job_id, spec
        self.state = "queued"            # queued -> running -> done | failed | cancelled
        self.submitted_at, self.started_at = time.time(), 0.0
        self.keep_weights = False        # keep the final weights in the broker for the caller...
        self.weights_path = None         # ...here (in the broker's private run directory)
        # asked to stop at a step boundary for this reason, ending with this error (None: it ends
        # Interrupted, as on a Ctrl-C of `up`)
        self.ending: tuple[type[LeptonError], str] | None = None
        self.steps, self.total_steps = 0, None   # progress, once it has started (at its end, once ended)

    def _finish(self, state: str, result: dict | None = None, error: BaseException | None = None) -> None:
        self.state = state
        self._end(result, error)


class Broker(Snapshots):
    """Runs training jobs on local actors, inside the caller's event loop.

    Entering the block starts one actor per selected device; they stay up, idle between
    jobs, until the block exits.

    ``allow_imports``: the modules whose code a job's ``--dataset py:MODULE:function``,
    ``--model MODULE:FACTORY`` or ``--loss MODULE:FUNCTION`` may run here (a module and its
    submodules; the data in this process, the model and loss in the actors). The default is none, because whoever can
    submit a job would otherwise run code in this process, and a ``Service`` (as
    ``leptonrt up`` builds) lets other clients submit; pass ``leptonrt.imports.ANY`` only
    when every job comes from your own code.
    """

    def __init__(self, gpus: str = "all", cpu_actors: int | None = None,
                 actor_env: dict[str, str] | None = None,
                 address: str = "embedded", pin: bool = True, runner: type[JobRunner] = JobRunner,
                 cache_bytes: int | None = None, allow_imports: Iterable[str] | None = (),
                 listen: str | None = None, keys: str | None = None, hosts_refused: str | None = None) -> None:
        # device selection errors surface here; pin=False leaves CPU actors to the scheduler.
        # listen (tcp://HOST:PORT) and keys: other hosts may join, their actors reach ours over
        # CURVE there (hosts_refused: why none may, e.g. no interface for cross-host gradients)
        self.pool = ActorPool(gpus, cpu_actors, actor_env, pin, cache_bytes=cache_bytes, allow_imports=allow_imports,
                              listen=listen, keys=keys, hosts_refused=hosts_refused)
        self.address = address
        self._runner_type = runner   # what runs each job (a test may give one that fails on purpose)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._worker: asyncio.Task | None = None
        self._jobs: list[Job] = []
        self._runner: JobRunner | None = None
        self._running: Job | None = None
        self.closed = False
        self.accepting = True
        self.started_at = time.time()
        self.log: deque[Event] = deque(maxlen=50)
        self.counters: Callable[[], dict[str, int]] = dict   # more counters for the snapshot (the service's)
        self.broken: BaseException | None = None   # the worker died of a bug of ours: nothing runs any more
        self.on_broken: Callable[[BaseException], None] = lambda exc: None   # told when it does
        self._rate: deque[tuple[float, float]] = deque(maxlen=240)   # (unix time, samples/s)
        self._last_sample: tuple[float, int] | None = None
        self.tally = Tally()              # what every job's committed steps added up to
        self._bad_before = 0              # actor messages dropped in the jobs that ended
        self._usage: dict[int, Usage] = {}            # pid -> what the sampler measured last
        self._sampling: asyncio.Task | None = None
        self.last_job: FinishedJob | None = None      # the job that ended last

    @property
    def notes(self) -> list[str]:
        """Remarks about the device selection, for the user."""
        return [self.pool.selection.note] if self.pool.selection.note else []

    async def __aenter__(self) -> "Broker":
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._serve(), name="leptonrt-broker")
        self._sampling = loop.create_task(self._sample_usage(), name="leptonrt-usage")
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def submit(self, spec: TrainJob, *, keep_weights: bool = False) -> Job:
        """Queue a job; it starts when the jobs before it have ended."""
        return self.submit_nowait(spec, keep_weights=keep_weights)

    def submit_nowait(self, spec: TrainJob, *, keep_weights: bool = False) -> Job:
        """Queue a job (the same as ``submit``; for callers that are not coroutines). With
        ``keep_weights`` the final weights stay in the broker, at ``job.weights_path``."""
        if self.broken is not None:
            raise InternalError(f"the broker is broken ({self.broken}); restart it")
        if self.closed or self._worker is None or not self.accepting:
            raise BrokerClosed("the broker is not taking jobs" if self._worker is not None and not self.closed
                               else "the broker is not running (use `async with Broker(...)`)")
        spec.check_world(self.pool.world)
        for ref, option in spec.named_code():   # refused now, never imported (here, or by the actors)
            check_allowed(ref, option, self.pool.allow_imports)
        job = Job(next(self._ids), spec, asyncio.get_running_loop())
        job.keep_weights = keep_weights
        self._jobs.append(job)
        self._queue.put_nowait(job)
        self._log(f"job {job.id} queued ({spec.dataset})")
        return job

    def jobs(self) -> list[Job]:
        """Every job submitted so far, oldest first."""
        return list(self._jobs)

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job now, or stop the running one at its next step boundary (its
        actors then wait for the next job); either ends with ``JobCancelled``. Returns what
        happens, for the user; a ConfigError for an unknown or ended job."""
        job = next((j for j in self._jobs if j.id == job_id), None)
        if job is None:
            raise ConfigError(f"there is no job {job_id} on this broker (`leptonrt jobs` lists them)")
        if job.done():
            raise ConfigError(f"job {job_id} has already ended ({job.state})")
        if job is not self._running:
            job._finish("cancelled", error=JobCancelled(f"job {job_id}: {CANCELLED} before it started"))
            self._log(f"job {job_id} cancelled before it started")
            return f"job {job_id} cancelled before it started"
        if job.ending is None:
            job.ending = (JobCancelled, CANCELLED)
            self._runner.interrupt()
            self._log(f"job {job_id}: cancelled, stopping at a step boundary")
        return f"job {job_id} stops at its next step boundary"

    def _log(self, text: str) -> None:
        self.log.append(Event(at=time.time(), text=text))

    async def _serve(self) -> None:
        try:
            await self._serve_jobs()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:   # a bug of ours: nothing can run any more, and everyone must hear it
            log.exception("leptonrt broker worker died")
            self.broken = exc
            self._fail_pending(InternalError(f"the broker stopped working: {exc!r}"))
            self.on_broken(exc)
            raise

    async def _serve_jobs(self) -> None:
        try:
            await self.pool.start()
            self._log(f"{self.pool.world} actor(s) starting: "
                      + ", ".join(p.device for p in self.pool.selection.actors))
            while True:
                while self._queue.empty() or not self.accepting:   # stopping: the queued stay queued
                    await self.pool.idle(100)
                    self._log_exits()
                job = self._queue.get_nowait()
                if job.done():
                    continue
                await self._run(job)
        finally:
            await self.pool.close()

    def _log_exits(self) -> None:
        for actor_id, how in self.pool.exits:
            self._log(f"actor {actor_id} exited while idle ({how}); restarted")
        for text in self.pool.host_events:
            self._log(text)
        self.pool.exits.clear()
        self.pool.host_events.clear()

    async def _run(self, job: Job) -> None:
        job.state = "running"
        job.started_at = time.time()
        self._running = job
        self._log(f"job {job.id} started")

        def on_event(event: object) -> None:
            if isinstance(event, SplitChanged):
                shares = "/".join(f"{b / job.spec.batch_size:.2f}" for b in event.split)
                why = f" ({event.reason})" if event.reason else ""
                self._log(f"job {job.id}: split {shares} from step {event.step}{why}")
            elif isinstance(event, (ActorLost, Recovered, Benched)):
                self._log(f"job {job.id}: {event.describe()}")
            job._emit(event)

        try:
            self._runner = self._runner_type(job.spec, pool=self.pool, on_event=on_event, keep_weights=job.keep_weights,
                                             tally=self.tally)
            result = await self._runner.run()
            job.weights_path = self._runner.weights_path
            result.update(job_id=job.id, started_at=job.started_at, finished_at=time.time())
            job._finish("done", result)
            self._ended(job, result=result)
            self._log(f"job {job.id} finished: test_acc {result['test_accuracy']:.4f}")
        except asyncio.CancelledError:
            job._finish("cancelled", error=BrokerClosed(f"job {job.id} was cancelled: the broker closed"))
            raise
        except Interrupted as exc:
            if job.ending is None:
                job._finish("failed", error=exc)
            else:   # stopped at a boundary because somebody asked: not a failure of the job
                kind, why = job.ending
                job._finish("cancelled", error=kind(f"job {job.id}: {why}: {str(exc).removeprefix('interrupted: ')}"))
            self._log(f"job {job.id} {job.state}: {str(exc).splitlines()[0][:120]}")
        except LeptonError as exc:
            job._finish("failed", error=exc)
            self._ended(job, error=str(exc))
            self._log(f"job {job.id} failed: {self.last_job.error[:120]}")
        except Exception as exc:   # a bug of ours: this job fails loudly, the next one gets fresh actors
            log.exception("leptonrt: job %d failed on a bug", job.id)
            job._finish("failed", error=InternalError(f"job {job.id} failed on an internal error: {exc!r}"))
            self._ended(job, error=f"internal error {type(exc).__name__}")
            self._log(f"job {job.id} failed: internal error {type(exc).__name__}")
            self.pool.replace_all()
        finally:
            if self._runner is not None and self._runner.core is not None:
                core = self._runner.core
                self._bad_before += core.bad_messages
                job.steps, job.total_steps = core.committed() + 1, core.total_steps
            self._running, self._runner = None, None

    def _ended(self, job: Job, *, result: dict | None = None, error: str = "") -> None:
        """Keep the summary of ``job``, which just ended (the view shows it until the next starts)."""
        result = result or {}
        self.last_job = FinishedJob(
            id=job.id, dataset=job.spec.dataset, state=job.state, finished_at=time.time(),
            wall_s=result.get("wall_s", time.time() - job.started_at), test_accuracy=result.get("test_accuracy"),
            samples_per_s=result.get("samples_per_s"), history_digest=result.get("history_digest", ""),
            error=(error.splitlines() or [""])[0])

    def _fail_pending(self, error: LeptonError | None) -> None:
        """Answer every job that has not ended (``BrokerClosed`` unless ``error`` says more)."""
        for job in self._jobs:
            if not job.done():
                job._finish("cancelled", error=error or BrokerClosed(f"job {job.id} did not finish: the broker closed"))

    def stop_accepting(self) -> None:
        """Refuse new jobs from now on (the first Ctrl-C of `up`)."""
        self.accepting = False
        self._log("stopping: no new jobs")

    async def drain(self, timeout_s: float = 15.0, reason: str | None = None) -> None:
        """End the running job at a step boundary and wait for it, at most ``timeout_s``;
        queued jobs stay queued until ``aclose``. The job fails with ``Interrupted``, or,
        given a ``reason``, is cancelled with ``BrokerClosed`` (its client may submit it again)."""
        job, runner = self._running, self._runner
        if job is None or runner is None:
            return
        if reason is not None:
            job.ending = (BrokerClosed, reason)
        runner.interrupt()
        self._log(f"job {job.id}: stopping at a step boundary")
        try:
            await asyncio.wait_for(asyncio.shield(job._result), timeout_s)
        except (asyncio.TimeoutError, LeptonError):
            pass

    async def aclose(self) -> None:
        """Stop: the running job is cancelled (its actors stopped, its memory freed), queued
        jobs get ``BrokerClosed``. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        interrupted = False
        for task in (self._sampling, self._worker):
            if task is None:
                continue
            task.cancel()
            while not task.done():
                try:
                    # asyncio.wait, unlike awaiting the task, lets the worker finish its cleanup
                    # even if the host cancels us meanwhile
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    interrupted = True
        self._fail_pending(None)
        if interrupted:
            raise asyncio.CancelledError  # the host cancelled *us*: pass it on, now that all is clean
