"""The asyncio shell around ``TrainingRun``: receive, decode, decide, encode, send.

Everything that waits lives here; every decision lives in ``run.py``. Nothing here
installs signal handlers or touches the event loop policy, so it runs inside any
asyncio (or uvloop) application.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import zmq
import zmq.asyncio

from ..actors.devices import Selection, select
from ..actors.spawn import Supervisor
from ..config import TrainJob
from ..data.cache import DatasetCache
from ..data.shm import clean_stale, new_run_id
from ..errors import ConfigError, JobFailed, ProtocolError
from . import protocol
from .plan import even_split, split_from_fractions, steps_per_epoch
from .planner import Planner, PlannerConfig
from .protocol import JobSpec, Shutdown, Slowdown
from .run import Out, TrainingRun

GATHER_TIMEOUT_S = 120.0   # every actor must have said hello by then
SETTLE_S = 1.0            # after a failure, how long to wait for its root cause to show
TICK_S = 0.1               # how often process exits are checked while the socket is quiet


def job_spec(job: TrainJob, job_id: int) -> JobSpec:
    """The wire form of a job."""
    return JobSpec(job_id=job_id, dataset=job.dataset, hidden=list(job.hidden), epochs=job.epochs,
                   batch_size=job.batch_size, lr=job.lr, optimizer=job.optimizer, momentum=job.momentum,
                   weight_decay=job.weight_decay, precision=job.precision, seed=job.seed,
                   slowdowns=[Slowdown(rank=r, factor=f, from_step=a, to_step=b) for r, f, a, b in job.slowdowns])


def initial_split(job: TrainJob, world: int) -> list[int]:
    """The user's fixed shares, or an even split."""
    if job.split is None:
        return even_split(job.batch_size, world, job.align if job.planned else 1)
    if len(job.split) != world:
        raise ConfigError(f"--split gives {len(job.split)} shares but there are {world} actors")
    return split_from_fractions(job.batch_size, list(job.split))


class _Rendezvous:
    """The TCP store torch.distributed uses to form the gradient group; the broker hosts it."""

    def __init__(self) -> None:
        import torch.distributed as dist
        self.store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        self.address = f"tcp://127.0.0.1:{self.store.port}"


class JobRunner:
    """Runs one job end to end on freshly started local actors, then removes every trace."""

    def __init__(self, job: TrainJob, *, gpus: str = "all", cpu_actors: int | None = None,
                 on_event: Callable[[object], None] | None = None, actor_env: dict[str, str] | None = None,
                 hang_timeout_s: float = 30.0) -> None:
        self.job, self.on_event = job, on_event or (lambda _e: None)
        self.selection: Selection = select(gpus, cpu_actors)
        self.actor_env = actor_env or {}
        self.hang_timeout_s = hang_timeout_s
        self.run_id = new_run_id()
        self.notes: list[str] = [self.selection.note] if self.selection.note else []

    async def run(self) -> dict:
        """Train; return the result dict, or raise JobFailed / DataError / ConfigError."""
        clean_stale()
        run_dir = Path(tempfile.mkdtemp(prefix="leptonrt-run-"))
        os.chmod(run_dir, 0o700)
        cache, ctx = DatasetCache(self.run_id), zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        supervisor = Supervisor(run_dir, f"ipc://{run_dir}/broker.sock")
        core: TrainingRun | None = None
        try:
            router.bind(supervisor.connect)
            core = await self._start(cache, supervisor)
            await self._serve(router, core, supervisor)
            result = core.result()
            if self.job.slowdowns:
                result["simulated_slowdowns"] = [{"rank": r, "factor": f, "from_step": a, "to_step": b}
                                                 for r, f, a, b in self.job.slowdowns]
            return result
        finally:
            if core is not None:
                await self._shutdown(router, core)
            supervisor.close()
            router.close(linger=0)
            ctx.term()
            cache.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    async def _start(self, cache: DatasetCache, supervisor: Supervisor) -> TrainingRun:
        job = self.job
        data = await asyncio.to_thread(cache.get, job.dataset, seed=job.seed, test_fraction=job.test_fraction)
        world = len(self.selection.actors)
        split = initial_split(job, world)
        self._rendezvous = _Rendezvous() if world > 1 else None
        n_train = data.x_train.shape[0]   # never 0: the loaders refuse an empty training split
        planner = Planner(world, job.batch_size, PlannerConfig(align=job.align)) if job.planned and world > 1 else None
        ids = [f"a{rank}" for rank in range(world)]
        core = TrainingRun(job=job_spec(job, 0), data=data, actor_ids=ids,
                           threads=[p.threads for p in self.selection.actors],
                           rendezvous=self._rendezvous.address if self._rendezvous else "tcp://127.0.0.1:0",
                           split=split, steps_per_epoch=steps_per_epoch(n_train, job.batch_size),
                           n_train=n_train, save_path=job.save, hang_timeout_s=self.hang_timeout_s, planner=planner)
        for actor_id, plan in zip(ids, self.selection.actors):
            supervisor.spawn(actor_id, plan, self.actor_env)
        return core

    async def _serve(self, router: zmq.asyncio.Socket, core: TrainingRun, supervisor: Supervisor) -> None:
        started = time.monotonic()
        while core.state not in ("done", "failed"):
            await self._pump(router, core, supervisor, int(TICK_S * 1000))
            core.check_liveness(time.monotonic())
            if core.state == "gathering" and time.monotonic() - started > GATHER_TIMEOUT_S:
                core.fail(f"not every actor said hello within {GATHER_TIMEOUT_S:.0f} s", time.monotonic())
            self._emit(core)
        if core.state == "failed":
            await self._settle(router, core, supervisor)
            raise JobFailed(self._failure_report(core, supervisor))

    async def _settle(self, router, core: TrainingRun, supervisor: Supervisor) -> None:
        """Give a root cause a moment to surface: a crash elsewhere often shows first as a
        peer's collective error, and the process exit follows a few milliseconds later."""
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and not core.lost:
            await self._pump(router, core, supervisor, 20)

    async def _pump(self, router: zmq.asyncio.Socket, core: TrainingRun, supervisor: Supervisor,
                    wait_ms: int) -> None:
        """Feed the core at most one message (waiting up to ``wait_ms``) and every process exit."""
        if await router.poll(wait_ms):
            frames = await router.recv_multipart()
            try:
                if len(frames) != 2:
                    raise ProtocolError(f"expected 2 frames (identity, payload), got {len(frames)}")
                message = protocol.decode(frames[1])
            except ProtocolError:
                core.bad_messages += 1   # dropped; it changes nothing
            else:
                await self._send(router, core.handle(frames[0], message, time.monotonic()))
        for actor_id, how in supervisor.exited():
            await self._send(router, core.actor_exited(actor_id, how, time.monotonic()))

    async def _send(self, router: zmq.asyncio.Socket, outs: list[Out]) -> None:
        for out in outs:
            await router.send_multipart([out.identity, protocol.encode(out.message)])

    def _emit(self, core: TrainingRun) -> None:
        events, core.events = core.events, []
        for event in events:
            self.on_event(event)

    async def _shutdown(self, router: zmq.asyncio.Socket, core: TrainingRun) -> None:
        bye = protocol.encode(Shutdown(reason="job over"))
        for identity in core.identities():
            try:
                await router.send_multipart([identity, bye], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the actor is gone already; the supervisor reaps it

    def _failure_report(self, core: TrainingRun, supervisor: Supervisor) -> str:
        lines = [core.failure or "job failed"]
        pids = supervisor.pids()
        for rank, (actor_id, plan) in enumerate(zip(core.actor_ids, self.selection.actors)):
            how = core.lost.get(rank, "running")
            lines.append(f"  rank {rank}  {plan.device}  pid {pids.get(actor_id)}  {how}")
            lines.extend(f"    | {line[:200]}" for line in supervisor.log_tail(actor_id, 4))
        return "\n".join(lines)
