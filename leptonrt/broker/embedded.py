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
from typing import AsyncIterator

from ..config import TrainJob
from ..errors import LeptonError
from .server import JobRunner

_DONE = object()  # ends a job's event stream


class BrokerClosed(LeptonError):
    """The broker was shut down before this job could finish (we closed it, nothing broke)."""

    exit_code = 1


class Job:
    """A submitted job: follow its events, await its result."""

    def __init__(self, job_id: int, spec: TrainJob, loop: asyncio.AbstractEventLoop) -> None:
        self.id, self.spec = job_id, spec
        self.state = "queued"            # queued -> running -> done | failed | cancelled
        self._events: asyncio.Queue = asyncio.Queue()
        self._result: asyncio.Future = loop.create_future()

    def _emit(self, event: object) -> None:
        self._events.put_nowait(event)

    def _finish(self, state: str, result: dict | None = None, error: BaseException | None = None) -> None:
        self.state = state
        if not self._result.done():
            if error is not None:
                self._result.set_exception(error)
            else:
                self._result.set_result(result)
        self._events.put_nowait(_DONE)

    async def events(self) -> AsyncIterator[object]:
        """Epoch results and split changes as they happen; ends when the job does."""
        while (event := await self._events.get()) is not _DONE:
            yield event

    async def result(self) -> dict:
        """The result dict (as ``--json-out`` writes it); raises if the job failed."""
        return await asyncio.shield(self._result)

    def done(self) -> bool:
        return self._result.done()


class Broker:
    """Runs training jobs on local actors, inside the caller's event loop."""

    def __init__(self, gpus: str = "all", cpu_actors: int | None = None,
                 actor_env: dict[str, str] | None = None) -> None:
        self.gpus, self.cpu_actors, self.actor_env = gpus, cpu_actors, actor_env
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._worker: asyncio.Task | None = None
        self._jobs: list[Job] = []
        self.closed = False

    async def __aenter__(self) -> "Broker":
        self._worker = asyncio.get_running_loop().create_task(self._serve(), name="leptonrt-broker")
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def submit(self, spec: TrainJob) -> Job:
        """Queue a job; it starts when the jobs before it have ended."""
        if self.closed or self._worker is None:
            raise BrokerClosed("the broker is not running (use `async with Broker(...)`)")
        job = Job(next(self._ids), spec, asyncio.get_running_loop())
        self._jobs.append(job)
        self._queue.put_nowait(job)
        return job

    def jobs(self) -> list[Job]:
        """Every job submitted so far, oldest first."""
        return list(self._jobs)

    async def _serve(self) -> None:
        while True:
            job = await self._queue.get()
            if job.done():
                continue
            job.state = "running"
            try:
                runner = JobRunner(job.spec, gpus=self.gpus, cpu_actors=self.cpu_actors,
                                   on_event=job._emit, actor_env=self.actor_env)
                job._finish("done", await runner.run())
            except asyncio.CancelledError:
                job._finish("cancelled", error=BrokerClosed(f"job {job.id} was cancelled: the broker closed"))
                raise
            except LeptonError as exc:
                job._finish("failed", error=exc)

    async def aclose(self) -> None:
        """Stop: the running job is cancelled (its actors stopped, its memory freed), queued
        jobs get ``BrokerClosed``. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        interrupted = False
        if self._worker is not None:
            self._worker.cancel()
            while not self._worker.done():
                try:
                    # asyncio.wait, unlike awaiting the task, lets the worker finish its cleanup
                    # even if the host cancels us meanwhile
                    await asyncio.wait({self._worker})
                except asyncio.CancelledError:
                    interrupted = True
        for job in self._jobs:
            if not job.done():
                job._finish("cancelled", error=BrokerClosed(f"job {job.id} never ran: the broker closed"))
        if interrupted:
            raise asyncio.CancelledError  # the host cancelled *us*: pass it on, now that all is clean
