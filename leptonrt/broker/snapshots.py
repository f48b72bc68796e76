"""What the live view, `status` and the metrics see of a ``Broker``: one immutable
``Snapshot`` built from the running job's statistics, the pool and the queue, plus the
histories it keeps (throughput, the actors' CPU, memory and GPU use, sampled in a thread)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import asdict

from .lifecycle import JobState
from .stats import ActorStats, JobEntry, JobStats, QueuedJob, Snapshot
from .usage import Target, Usage, UsageSampler

JOBS_LISTED = 100   # ended jobs a snapshot lists, the newest (it lists every other job too)
USAGE_EVERY_S = 1.0   # the actors' CPU%, memory and GPU figures are this old at most


class Snapshots:
    """The ``Broker``'s pictures of itself (a mixin: it reads the broker's pool, jobs and runner)."""

    def snapshot(self) -> Snapshot:
        """One immutable picture of the broker now (what the live view and `status` show)."""
        now = time.time()
        runner, job = self._runner, self._running
        core = runner.core if runner is not None else None
        training = job is not None and core is not None and core.state != JobState.GATHERING
        rate = None
        if training:
            self._sample_throughput(now, core.samples_done())
            rate = self._rate[-1][1] if self._rate else None
        else:
            self._sample_idle(now)
        job_stats = self._job_stats(job, core, rate, now) if training else None
        starting = QueuedJob(id=job.id, dataset=job.spec.dataset, submitted_at=job.submitted_at) \
            if job is not None and not training else None
        actors = self._actor_stats(core, rate)
        queued = tuple(QueuedJob(id=j.id, dataset=j.spec.dataset, submitted_at=j.submitted_at)
                       for j in self._jobs if j.state == "queued")
        snap = Snapshot(address=self.address, started_at=self.started_at, now=now,
                        state="serving" if self.accepting and not self.closed else "stopping",
                        job=job_stats, queued=queued, actors=actors,
                        throughput=tuple(p for p in self._rate if now - p[0] <= 60.0), events=tuple(self.log)[-20:],
                        jobs_done=sum(j.state == "done" for j in self._jobs),
                        jobs_failed=sum(j.state == "failed" for j in self._jobs),
                        jobs_cancelled=sum(j.state == "cancelled" for j in self._jobs),
                        jobs=self._job_entries(core),
                        totals=self.tally.statistics(), pid=os.getpid(),
                        counters={"actor_bad_messages": self._bad_messages(core), **self.counters()},
                        cache=asdict(self.pool.cache.statistics()) if self.pool.started else {},
                        last_job=self.last_job, starting=starting)
        return snap

    def _bad_messages(self, core) -> int:
        """Actor messages dropped as not fitting, over every job so far."""
        return self._bad_before + (core.bad_messages if core is not None else 0)

    def _job_entries(self, core) -> tuple[JobEntry, ...]:
        ended = [j for j in self._jobs if j.done()][-JOBS_LISTED:]
        listed = sorted(ended + [j for j in self._jobs if not j.done()], key=lambda j: j.id)
        entries = []
        for j in listed:
            step, total = j.steps, j.total_steps
            if j is self._running and core is not None:
                step, total = core.committed() + 1, core.total_steps
            entries.append(JobEntry(id=j.id, state=j.state, dataset=j.spec.dataset, submitted_at=j.submitted_at,
                                    step=step, total_steps=total))
        return tuple(entries)

    def _job_stats(self, job, core, rate: float | None, now: float) -> JobStats:
        """The job that is training (past its start: data loaded, every actor joined)."""
        spec = job.spec
        simulated = ", ".join(f"rank {s.rank} x{s.factor:g}" for s in spec.slowdowns)
        model = spec.model or "-".join(map(str, [core.data.n_features, *spec.hidden, core.data.n_classes]))
        last, total, step = core.last_epoch, core.total_steps, core.committed() + 1
        elapsed = now - job.started_at
        stats = core.statistics()
        change = stats.last_change
        return JobStats(
            id=job.id, dataset=spec.dataset, model=model, epoch=core.epochs_done, epochs=spec.epochs, step=step,
            total_steps=total, samples_per_s=rate, train_loss=last.train_loss if last else None,
            test_accuracy=last.test_accuracy if last else None,
            eta_s=elapsed / step * (total - step) if step > 0 else None, started_at=job.started_at,
            simulated=simulated, state="stopping" if core.state == JobState.STOPPING or core.interrupted else "running",
            current_epoch=min(step // core.steps_per_epoch + 1, spec.epochs), step_ms=stats.step_ms,
            step_ms_every=stats.step_ms_every, losses=stats.losses,
            change="" if change is None else
            f"{'/'.join(f'{b / spec.batch_size:.2f}' for b in change.split)} from step {change.step}: {change.reason}")

    def _sample_throughput(self, now: float, done: int) -> None:
        """Add a point to the throughput history, at most one every half second."""
        if self._last_sample is None:
            self._last_sample = (now, done)
            return
        t0, s0 = self._last_sample
        if now - t0 >= 0.5:
            self._rate.append((now, max(done - s0, 0) / (now - t0)))
            self._last_sample = (now, done)

    def _sample_idle(self, now: float) -> None:
        """Nothing trains: the throughput history falls to zero rather than keep its last figure."""
        self._last_sample = None
        if self._rate and now - self._rate[-1][0] >= 0.5:
            self._rate.append((now, 0.0))

    async def _sample_usage(self) -> None:
        """Measure the actors' processes and GPUs every USAGE_EVERY_S, in a worker thread."""
        sampler = UsageSampler()
        try:
            while True:
                if self.pool.started:
                    pids = self.pool.supervisor.pids()
                    targets = [Target(pids[a], self.pool.plans[a].visible or None)
                               for a in self.pool.local_ids if a in pids]
                    self._usage = await asyncio.to_thread(sampler.sample, targets)
                await asyncio.sleep(USAGE_EVERY_S)
        finally:
            sampler.close()

    def _actor_stats(self, core, rate: float | None) -> tuple[ActorStats, ...]:
        pool = self.pool
        pids = pool.supervisor.pids() if pool.started else {}
        view = {s.actor_id: s for s in core.statistics().slots} if core is not None else {}
        out = []
        for rank, actor_id in enumerate(pool.ids):
            plan, hello = pool.plans[actor_id], pool.known.get(actor_id)
            v = view.get(actor_id)
            if v is not None:   # in the job: its slot's state ("training", "standby", "joining", ...)
                state = {"starting": "restarting", "ready": "restarting"}.get(v.state, v.state)
            else:
                state = "idle" if actor_id in pool.hellos else "starting"
            share = v.share if v is not None and v.member else 0.0
            remote = actor_id in pool.remote
            pid = hello.pid if remote and hello else pids.get(actor_id)   # a remote pid is its host's
            usage = self._usage.get(pid, Usage()) if pid is not None and not remote else Usage()
            out.append(ActorStats(
                rank=rank, device=plan.device, device_name=hello.device_name if hello and hello.device != "cpu" else None,
                pid=pid, state=state, share=share, compute_ms=v.compute_ms if v else None,
                samples_per_s=rate * share if rate is not None and v else None,
                memory_bytes=None if plan.device == "cpu" else (hello.memory_bytes if hello else None),
                restarts=pool.restarts.get(actor_id, 0), host=pool.host_of(actor_id), **asdict(usage)))
        return tuple(out)
