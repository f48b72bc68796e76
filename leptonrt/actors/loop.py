"""One job on one device: the actor's loop, top to bottom (``JobLoop.run``).

The control plane is never waited on per step: the broker grants a window of upcoming
steps, and the actor only blocks on its socket when it has run out of granted work. What
to do next is the schedule's (``schedule.ActorSchedule``, pure); the torch side is the
trainer's and the group's.

    form the group -> train granted steps (gather, compute, sum, step; snapshot; report)
      -> the group broke? wait for the broker's new place, restore, form it again
      -> on standby? wait, alive, until taken back or released
      -> released while waiting for steps (the job was cancelled at a step boundary)? leave
    -> all steps done: wait for Stop, save, say Finished (with the lineage), wait for Release
"""

from __future__ import annotations

import os
import sys
import time

import torch

from ..messages import (Checkpointed, EpochResult, Finished, GroupFailed, Heartbeat, Regroup, Reports, StepStat,
                        Welcome)
from .faults import Injector
from .group import Group
from .link import Link
from .rows import Rows
from .schedule import ActorSchedule
from .spawn import pin
from .tether import Tether
from .trainer import Piece, Trainer

IDLE_POLL_MS = 200           # how often a waiting actor checks its broker and says it is alive


class BrokerGone(Exception):
    """The broker stopped talking to us, or told us to shut down."""


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}", file=sys.stderr, flush=True)


class JobLoop:
    """One job on one device."""

    def __init__(self, link: Link, welcome: Welcome, device: torch.device, tether: Tether) -> None:
        _log(f"welcomed as rank {welcome.rank} of {welcome.world_size} for job {welcome.job.job_id}")
        self.link, self.welcome, self.device, self.tether = link, welcome, device, tether
        self.job, self.job_id = welcome.job.job, welcome.job.job_id
        self.plan = ActorSchedule.from_welcome(welcome)
        _use_threads(welcome.threads)   # its own cores' worth (another job may have lent it more)
        self.group = Group(link.address, self.job_id, welcome.backend, welcome.collective_timeout_s, device)
        self.trainer = Trainer(welcome, device, self.group)
        # a streaming host's actor takes its training rows from its agent, piece by piece
        self.rows = (Rows(self.job_id, welcome.data.n_features, self.job.batch_size) if welcome.rows_by_value
                     else None)
        self.faults = Injector(welcome.rank)
        self.faults.at_start()
        self.epochs: list[dict] = self.trainer.resume(welcome.resume_from) if welcome.resume_from else []
        self.spe, self.total = welcome.steps_per_epoch, welcome.steps_per_epoch * self.job.epochs
        self.pending: list[tuple] = []   # (step, rows, compute_s or None, step_s, simulated_s, version, collective_s, piece)
        self.next_piece: Piece | None = None
        self.rows_done, self.steady_t0, self.epoch_t0 = 0, None, None
        self.steps_done = welcome.start_step

    @property
    def rank(self) -> int:
        return self.plan.place.rank

    # -- the job, top to bottom ---------------------------------------------------------

    def run(self) -> None:
        g = self.plan.place.start
        formed = self._form(g, restored=False)
        while True:
            if formed:
                g = self._train(g)
                if g >= self.total and not self.plan.released and self._wait_for_stop():
                    break
                if self.plan.released:   # the broker ended the job at a step boundary
                    return
            place = self._next_place()
            if place is None:      # released while on standby: the job is over for us
                return
            g = place.rewind_step
            _use_cores(place.threads, tuple(place.cores or ()))   # the new group's cores and threads
            formed = self._form(g, restored=self.trainer.restore(g), history=place.history)
        self._finish()

    def close(self) -> None:
        self.group.leave()
        self.trainer.close()
        if self.rows is not None:
            self.rows.close()

    def _form(self, g: int, restored: bool, history: str = "") -> bool:
        """Form the group the schedule's place names, from step ``g``."""
        place = self.plan.place
        _log(f"rank {self.rank}: joining generation {place.generation} at step {g}")
        if restored and history and self.trainer.lineage.hex() != history:
            raise RuntimeError(f"the snapshot at step {g} trained another history than the group's")
        if place.source is None:
            self.trainer.snapshot(g)   # the state every rank starts from (seeded init, or a checkpoint)
        if not self.group.join(place):
            return False
        if place.source is not None:
            if not self.trainer.take_state_from(place.source, bytes.fromhex(history) if history else
                                                self.trainer.lineage):
                return False
            self.trainer.snapshot(g)
        self.steps_done = g
        _log(f"rank {self.rank}: joined")
        return True

    def _train(self, g: int) -> int:
        """Train granted steps from ``g`` until the last, or until the group breaks."""
        if g % self.spe == 0 and 0 < g and not self._end_epoch(g // self.spe - 1, self._epoch_seconds()):
            return g   # a rewind or resume to an epoch boundary: evaluating again is exact
        while g < self.total:
            epoch, t = divmod(g, self.spe)
            if t == 0 or self.epoch_t0 is None:
                self.epoch_t0 = time.perf_counter()
            if self.steady_t0 is None and (epoch >= 1 or self.job.epochs == 1):
                self.steady_t0, self.rows_done = time.perf_counter(), 0
            if not self._wait_granted(g) or not self._step(g):
                return g
            g += 1
            self._after_step(g)
            # only now may the step be reported: once the broker counts it committed it may
            # rewind the group to the snapshot just taken
            self._report()
            if t + 1 == self.spe and not self._end_epoch(epoch, self._epoch_seconds()):
                return g
            if self.plan.broken:
                return g
        return g

    def _step(self, g: int) -> bool:
        """One step: forward and backward of this actor's rows, the gradient sum, the
        optimizer. False when the group broke during it."""
        self.faults.before_step(g)
        moved = self.plan.cores_for(g)
        if moved is not None:   # onto other cores from this step (lent, or given back)
            _use_cores(moved.threads, tuple(moved.cores))
        version, split = self.plan.plan_for(g)
        batch, self.next_piece = self.next_piece, None
        if batch is None or batch.step != g or batch.split != split:
            batch = self._gather(g, split)
            if batch is None:   # the group broke, or the job ended, while its rows were on their way
                return False
        factor = self._slowdown(g)
        t0 = time.perf_counter()
        mark = self.trainer.timer.start()
        self.trainer.step.compute(batch.x, batch.y, self.trainer.batch_rows(g))
        # host sync only when a SIMULATED slowdown needs the compute time now
        compute_s = self.trainer.timer.stop(mark, sync=factor > 1.0)
        simulated = (factor - 1.0) * compute_s if factor > 1.0 else 0.0
        if simulated:
            time.sleep(simulated)   # SIMULATED straggler: before the sum, so it looks like slow compute
        # rows by value follow the grants' splits: an actor that streams never votes to switch early
        vote = self.plan.vote(version) if self.rows is None else 0
        try:
            self.trainer.step.apply(meanwhile=lambda: self._prefetch(g, split), vote=vote)
        except RuntimeError as exc:   # the group broke under the sum
            self.group.error = str(exc).splitlines()[0][:200]
            return False
        if vote and self.trainer.step.unanimous(len(self.plan.place.members)):   # host sync (one read)
            self.plan.agree(g, version + vote)
        if compute_s is not None:
            compute_s += batch.gather_s   # the gather is per-row work before the sum: compute
        self.pending.append((g, batch.x.shape[0], compute_s, time.perf_counter() - t0, simulated, version,
                             self.trainer.step.collective_s, batch.start, batch.stop))
        self.rows_done += batch.x.shape[0]
        self.trainer.applied(g)
        return True

    def _prefetch(self, g: int, split: list[int]) -> None:
        """Gather the next step's rows while the gradients are being summed."""
        self.faults.inside_allreduce(g)
        plan = None if (g + 1) % self.spe == 0 else self.plan.plan_for(g + 1)
        if plan is not None and self.rows is not None:   # ask for it now; it is taken when it is trained
            start, stop = self.trainer.piece_of(g + 1, plan[1], self.rank)
            self.rows.ask(self.rank, self.plan.place.generation, g + 1, start, stop)
        elif plan is not None:
            self.next_piece = self.trainer.gather(g + 1, plan[1], self.rank)

    def _gather(self, g: int, split: list[int]) -> Piece | None:
        """This actor's rows of step ``g``: from the shared cache, or by value from its agent
        (None if the group broke or the job ended meanwhile)."""
        if self.rows is None:
            return self.trainer.gather(g, split, self.rank)
        started = time.perf_counter()
        start, stop = self.trainer.piece_of(g, split, self.rank)

        def meanwhile() -> bool:   # alive while it waits, and listening for a regroup
            self._poll(0)
            self.link.send(Heartbeat(rank=self.rank, step=max(g - 1, 0)))
            return not self.plan.broken and not self.plan.released
        got = self.rows.wait(self.rank, self.plan.place.generation, g, start, stop, IDLE_POLL_MS, meanwhile)
        return None if got is None else self.trainer.received(g, split, start, stop, *got,
                                                               waited_s=time.perf_counter() - started)

    def _after_step(self, g: int) -> None:
        """``g`` steps are done: snapshot and checkpoint on schedule."""
        if self.plan.snapshot_due(g):
            self.trainer.snapshot(g)
        self.trainer.forget_before(self.plan.snapshot_floor())
        self.steps_done = g
        if self.plan.checkpoint_due(g, bool(self.job.checkpoint_dir)):
            self.trainer.write_checkpoint(self.job.checkpoint_dir, g, self.epochs, self.faults.in_checkpoint(g))

    def _end_epoch(self, epoch: int, seconds: float) -> bool:
        train_loss = self.trainer.step.take_loss_sum() / self.trainer.n_train   # host sync, once an epoch
        totals = self.trainer.evaluate_shard(heartbeat=self._heartbeat)
        if totals is None:
            return False
        if self.plan.place.leader:
            n_test = self.trainer.x_test.shape[0]
            result = dict(epoch=epoch, train_loss=train_loss, test_loss=totals[0] / n_test,
                          test_accuracy=totals[1] / n_test, seconds=seconds)
            self.epochs = [r for r in self.epochs if r["epoch"] < epoch] + [result]
            self.link.send(EpochResult(job_id=self.job_id, rank=self.rank, generation=self.plan.place.generation,
                                       **result))
        return True

    # -- waiting on the broker ----------------------------------------------------------

    def _wait_granted(self, g: int) -> bool:
        """Until step ``g`` is granted (True), or the group breaks or the job is ended (False)."""
        while self.plan.plan_for(g) is None:
            self._report(force=True)   # the broker grants on news of progress...
            if self.plan.plan_for(g) is not None or self.plan.broken or self.plan.released:   # ...its answer may be in
                break
            self._poll(IDLE_POLL_MS)
            self.link.send(Heartbeat(rank=self.rank, step=max(g - 1, 0)))
        return not self.plan.broken and not self.plan.released

    def _wait_for_stop(self) -> bool:
        """Every step is trained: wait for Stop (True), or a re-forming group or the job's end (False)."""
        self._report(force=True)
        while self.plan.stop is None and not self.plan.broken and not self.plan.released:
            self._poll(IDLE_POLL_MS)
        return self.plan.stop is not None and not self.plan.broken

    def _next_place(self) -> Regroup | None:
        """The group broke: leave it and wait for the broker's new place (a Regroup); on
        standby, wait alive until one comes, or None once the job is over."""
        if not self.plan.broken:   # our collective failed and nobody has told us why yet
            _log(f"rank {self.rank}: {self.group.error or 'the group failed'}; waiting to regroup")
            self.link.send(GroupFailed(job_id=self.job_id, rank=self.rank, generation=self.plan.place.generation,
                                       message=(self.group.error or "the group failed")[:4000]))
            self.plan.group_failed()
        self.pending.clear()   # steps past the failure are not committed; they will be replayed
        self.group.leave()
        self.next_piece = None
        while True:
            while not self.plan.broken:
                if self.plan.released:
                    return None
                self._poll(IDLE_POLL_MS)
                self.link.send(Heartbeat(rank=self.rank, step=0))
            place = self.plan.take_place()
            if isinstance(place, Regroup):
                return place
            _log(f"rank {self.rank}: on standby from generation {place.generation}")

    def _finish(self) -> None:
        seconds = time.perf_counter() - (self.steady_t0 or time.perf_counter())
        saved = bool(self.plan.place.leader and self.plan.stop.save and self.welcome.save_path)
        if saved:
            self.trainer.save_weights(self.welcome.save_path)
        self.link.send(Finished(job_id=self.job_id, rank=self.rank, samples=self.rows_done, seconds=seconds,
                                saved=saved, digest=self.trainer.lineage.hex()))
        while not self.plan.released:   # back to the pool only once the broker has counted us as done
            self._poll(IDLE_POLL_MS)

    def _poll(self, timeout_ms: int) -> None:
        """Take in what the broker sent (waiting up to ``timeout_ms`` for the first)."""
        msg = self.link.recv(timeout_ms)
        while msg is not None:
            self.plan.receive(msg)
            msg = self.link.recv(0)
        if self.plan.shutdown is not None:
            raise BrokerGone(self.plan.shutdown)
        if self.tether.cut():
            raise BrokerGone("broker process exited")
        if self.plan.checkpoint_asked is not None:
            self._checkpoint_now()

    def _report(self, force: bool = False) -> None:
        """Send the steps trained since the last report, when due (or ``force``d); the
        socket is polled either way, so a new split is taken in at every step."""
        now = time.perf_counter()
        if self.pending and (force or self.plan.report_due(len(self.pending), now)):
            resolved = iter(self.trainer.timer.resolve())   # CUDA intervals: waits for the device (host sync)
            stats = [StepStat(step=g, rows=rows, compute_s=(next(resolved) if c is None else c) + sim, step_s=s,
                              simulated_s=sim, version=v, collective_s=coll, start=lo, stop=hi)
                     for g, rows, c, s, sim, v, coll, lo, hi in self.pending]
            queued = self.plan.granted_end() - (self.pending[-1][0] + 1)
            memory = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
            self.link.send(Reports(job_id=self.job_id, rank=self.rank, steps=stats, memory_bytes=memory,
                                   queued=max(queued, 0), generation=self.plan.place.generation))
            self.pending = []
            self.plan.reported(now)
        self._poll(0)

    def _heartbeat(self) -> None:
        """Proof of life from the step loop while it does long work that sends nothing else."""
        self.link.send(Heartbeat(rank=self.rank, step=max(self.pending[-1][0] if self.pending else 0, 0)))

    def _checkpoint_now(self) -> None:
        """The broker stopped the job at a boundary (Ctrl-C on `up`): keep what was trained."""
        msg, self.plan.checkpoint_asked = self.plan.checkpoint_asked, None
        path, problem = "", ""
        if not self.job.checkpoint_dir:
            problem = "no checkpoint directory"
        elif self.steps_done != msg.step:
            problem = f"not at the boundary (at step {self.steps_done}, asked for {msg.step})"
        else:
            try:
                path = str(self.trainer.write_checkpoint(self.job.checkpoint_dir, msg.step, self.epochs).path)
            except Exception as exc:   # reported; the job is ending anyway
                problem = f"{type(exc).__name__}: {exc}"[:4000]
        self.link.send(Checkpointed(job_id=self.job_id, rank=self.rank, step=msg.step, path=path, message=problem))

    def _epoch_seconds(self) -> float:
        return time.perf_counter() - self.epoch_t0 if self.epoch_t0 is not None else 0.0

    def _slowdown(self, g: int) -> float:
        """The SIMULATED slowdown factor of this rank at step ``g`` (1.0: none)."""
        return next((s.factor for s in self.job.slowdowns if s.rank == self.rank and s.from_step <= g
                     and (s.to_step is None or g < s.to_step)), 1.0)


def _use_cores(threads: int, cores: tuple[int, ...]) -> None:
    """Run ``threads`` CPU threads (0: as now) on ``cores`` (empty: where we are). Fewer
    threads before fewer cores, more cores before more threads: never more threads than
    cores, not even for a moment (a thread pool squeezed onto fewer cores spins against
    itself, and a step then takes tens of times longer)."""
    if threads and threads < torch.get_num_threads():
        _use_threads(threads)
        pin(os.getpid(), cores)
    else:
        pin(os.getpid(), cores)
        _use_threads(threads)


def _use_threads(threads: int) -> None:
    """Run ``threads`` CPU threads from the next operation on (0: as now)."""
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        _log(f"now {threads} thread(s)")
