"""An actor process: says hello, joins the gradient group, trains the steps it is granted.

The control plane is never waited on per step: the broker grants a window of upcoming
steps, and the actor only blocks on its socket when it has run out of granted work. A new
split need not wait for the granted steps to run out: the broker also sends it at once
(``Resplit``), and the members switch to it together, from the step after the one whose
gradient sum shows that every member has it.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from ..broker.plan import batch_rows, epoch_permutation, piece
from ..messages import (EpochResult, Failure, Finished, Grant, Hello, Heartbeat, Reports,
                               Adopt, CheckpointNow, Checkpointed, GroupFailed, Regroup, Release, Resplit,
                               Shutdown, StepStat, Stop, Welcome)
from ..data.shm import SegmentReader
from ..nn.model import build_mlp
from ..nn.step import FusedStep, StepTimer, evaluate, make_optimizer
from .faults import Injector
from .heap import keep_heap
from .link import Link
from .tether import clean_after, die_with_parent, parse_args

IDLE_POLL_MS = 200           # how often an idle actor checks that its broker is alive
FLUSH_EVERY_STEPS = 64       # batch step reports so the control plane stays cheap...
FLUSH_EVERY_S = 0.01        # ...yet fresh enough for the broker to plan and grant ahead
FLUSH_ALONE_S = 0.05        # a lone actor has nothing to rebalance: report less often


@dataclass
class _Piece:
    """One step's rows for this actor, gathered (possibly ahead of time, during the previous all-reduce)."""

    step: int
    split: list[int]   # the split it was gathered for (a split agreed meanwhile makes it stale)
    x: torch.Tensor
    y: torch.Tensor
    gather_s: float


class BrokerGone(Exception):
    """The broker stopped talking to us, or told us to shut down."""


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {text}", file=sys.stderr, flush=True)


class GroupBroken(Exception):
    """The gradient group failed (a peer died or hung) or the broker called a regroup."""


@dataclass
class _Snapshot:
    """Everything a step changes, kept in memory so lost steps can be replayed exactly."""

    step: int                     # the next step to train from this state
    params: list[torch.Tensor]
    optimizer: list[dict]         # per parameter, its optimizer state (tensors cloned)
    loss_sum: torch.Tensor
    scaler: tuple[float, int, int]   # fp16 loss scale, clean steps, skipped steps


class Actor:
    """Runs one job's steps on one device; survives the loss of a peer by regrouping."""

    def __init__(self, link: Link, welcome: Welcome, device: torch.device, parent_pid: int) -> None:
        _log(f"welcomed as rank {welcome.rank} of {welcome.world_size} for job {welcome.job.job_id}")
        self.link, self.w, self.device, self.parent_pid = link, welcome, device, parent_pid
        self.spec, self.job = welcome.job, welcome.job.job   # the wire's record, and the job's settings
        self._take_place(welcome)
        self._peer_grads: list[torch.Tensor] | None = None   # receive buffers of the exchange
        self.group_start = welcome.start_step
        self.source: int | None = welcome.source_rank
        self.grants: list[Grant] = []
        self.resplits: dict[int, list[int]] = {}   # newer splits received, by version, not yet in use
        self.agreed: tuple[int, int, list[int]] | None = None   # (version, first step, split) the group switched to
        self.stop: Stop | None = None
        self.released = False
        self.regroup: Regroup | None = None
        self.pending: list[tuple] = []  # (step, rows, compute_s, step_s, simulated_s, version) since the last report
        self.last_flush = time.perf_counter()
        self.next_piece: _Piece | None = None
        self.snapshots: dict[int, _Snapshot] = {}
        self.steps_done = welcome.start_step
        self.epoch_t0: float | None = None
        self._perm_cache: tuple[int, torch.Tensor] | None = None
        self.epoch_results: list[dict] = []   # rank 0 keeps them for checkpoint manifests
        self.dist = None
        self.store = None   # the rendezvous store of the current group, if it has more than one member
        self.reader = SegmentReader()
        self._load_data()
        self.model = build_mlp(welcome.data.n_features, list(self.job.hidden), welcome.data.n_classes,
                               self.job.seed).to(device)
        self.step = FusedStep(self.model, optimizer=self.job.optimizer, lr=self.job.lr,
                              momentum=self.job.momentum, weight_decay=self.job.weight_decay,
                              precision=self.job.precision, allreduce=self._allreduce)
        self.timer = StepTimer(device)
        self.faults = Injector(self.rank)
        self.faults.at_start()
        if welcome.resume_from:
            self._resume(welcome.resume_from)

    def _load_data(self) -> None:
        d = self.w.data
        arrays = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the mapping is read-only; we never write to it
            for name in ("x_train", "y_train", "x_test", "y_test"):
                ref = getattr(d, name)
                arrays[name] = torch.from_numpy(self.reader.attach(ref.segment, ref.dtype, ref.shape))
        self.x_train, self.y_train = arrays["x_train"], arrays["y_train"]
        self.x_test, self.y_test = arrays["x_test"], arrays["y_test"]
        self.n_train = self.x_train.shape[0]
        if self.device.type == "cuda":
            # one copy to device memory, then rows are gathered there
            self.x_train, self.y_train = self.x_train.to(self.device), self.y_train.to(self.device)

    # -- the gradient group --------------------------------------------------------

    def _take_place(self, msg: Welcome | Regroup) -> None:
        """This actor's rank, the group it belongs to and how that group sums gradients."""
        self.generation, self.rank, self.world = msg.generation, msg.rank, msg.world_size
        self.members = list(msg.members) if msg.members is not None else list(range(self.world))
        self.sync = msg.gradient_sync

    @property
    def leader(self) -> bool:
        """The lowest member of the group evaluates for the job and writes checkpoints and weights."""
        return self.rank == self.members[0]

    def _join_group(self) -> None:
        if len(self.members) == 1:
            return
        import torch.distributed as dist
        from .store import BrokerStore
        # leptonrt's bound, never torch's defaults (up to 30 minutes): a dead peer must not
        # keep the survivors waiting longer than the broker takes to notice it
        # forming the group may wait for a replacement that is still starting: twice as long
        forming = timedelta(seconds=2 * self.w.collective_timeout_s)
        # the broker keeps the store, on its private channel: nothing of ours listens for it
        self.store = BrokerStore(self.link.address, f"job{self.spec.job_id}/gen{self.generation}/", forming)
        # ranks in the group are positions among its members (a lost actor leaves a gap in the split's order only)
        dist.init_process_group(self.w.backend, store=self.store, rank=self.members.index(self.rank),
                                world_size=len(self.members), timeout=forming)
        # every collective after that gets the short bound (the group's default timeout)
        from torch.distributed import distributed_c10d
        distributed_c10d._set_pg_timeout(timedelta(seconds=self.w.collective_timeout_s))
        self.dist = dist

    def _leave_group(self) -> None:
        if self.dist is not None:
            try:
                if self.dist.is_initialized():
                    self.dist.destroy_process_group()
            except Exception:   # a broken group may not tear down cleanly; it is gone either way
                pass
            self.dist = None
        if self.store is not None:
            self.store.close()
            self.store = None

    def _allreduce(self, flat: torch.Tensor):
        if self.dist is None:
            return None
        if self.sync == "exchange":
            return self._exchange(flat)
        # synchronous: on a CPU box an async collective's worker thread competes with the
        # step for the same cores (measured slower); the next batch is gathered right after
        return self.dist.all_reduce(flat, op=self.dist.ReduceOp.SUM)

    def _exchange(self, flat: torch.Tensor) -> None:
        """Sum ``flat`` over the group by sending it to every other member and adding up all
        of them in rank order, so every member gets the same bits."""
        dist, me, size = self.dist, self.members.index(self.rank), len(self.members)
        if self._peer_grads is None or len(self._peer_grads) != size:
            self._peer_grads = [torch.empty_like(flat) for _ in range(size)]
        ops = []
        for peer in range(size):
            if peer != me:
                ops += [dist.P2POp(dist.isend, flat, peer), dist.P2POp(dist.irecv, self._peer_grads[peer], peer)]
        timeout = timedelta(seconds=self.w.collective_timeout_s)   # point-to-point waits ignore the group's
        for work in dist.batch_isend_irecv(ops):
            work.wait(timeout=timeout)
        if size == 2:
            flat.add_(self._peer_grads[1 - me])   # a + b and b + a are the same bits
            return None
        total = (flat if me == 0 else self._peer_grads[0]).clone()
        for k in range(1, size):
            total.add_(flat if k == me else self._peer_grads[k])
        flat.copy_(total)
        return None

    def _collective(self, fn) -> None:
        """Run a collective; a failure of the group becomes GroupBroken (recoverable)."""
        try:
            fn()
        except RuntimeError as exc:
            raise GroupBroken(str(exc).splitlines()[0][:200]) from None

    def _sync_state(self, source: int) -> None:
        """Everybody takes ``source``'s weights, optimizer state, loss sum and loss scale."""
        if self.dist is None:
            return
        dist, opt = self.dist, self.step.optimizer
        source = self.members.index(source)   # its place in the group
        has_state = torch.tensor([float(len(opt.state) > 0)], device=self.device)
        dist.broadcast(has_state, src=source)
        if has_state.item() == 0:
            opt.state.clear()
        elif not opt.state:   # a fresh actor: create the state's tensors, then overwrite them
            self.step.flat.zero_()
            opt.step()
        tensors = [p.data for p in self.step.params]
        if has_state.item():
            for p in self.step.params:
                tensors += [v for _k, v in sorted(opt.state[p].items()) if torch.is_tensor(v)]
        tensors.append(self.step.loss_sum)
        scaler = torch.tensor([self.step.scale, self.step._clean_steps, self.step.skipped],
                              dtype=torch.float64, device=self.device)
        tensors.append(scaler)
        for tensor in tensors:
            staged = tensor if tensor.device == self.device else tensor.to(self.device)
            dist.broadcast(staged, src=source)
            if staged is not tensor:
                tensor.copy_(staged)
        self.step.scale, self.step._clean_steps, self.step.skipped = float(scaler[0]), int(scaler[1]), int(scaler[2])

    # -- snapshots and checkpoints ---------------------------------------------------

    def _snapshot(self, step: int) -> None:
        s = self.step
        state = [{k: v.clone() if torch.is_tensor(v) else copy.copy(v) for k, v in s.optimizer.state[p].items()}
                 for p in s.params]
        self.snapshots[step] = _Snapshot(step, [p.detach().clone() for p in s.params], state, s.loss_sum.clone(),
                                         (s.scale, s._clean_steps, s.skipped))

    def _restore(self, step: int) -> None:
        snap = self.snapshots.get(step)
        if snap is None:
            raise RuntimeError(f"no in-memory snapshot at step {step} (have {sorted(self.snapshots)})")
        s = self.step
        with torch.no_grad():
            for p, saved, state in zip(s.params, snap.params, snap.optimizer):
                p.copy_(saved)
                live = s.optimizer.state.get(p)
                if live is not None and live.keys() == state.keys() and all(torch.is_tensor(v) for v in live.values()):
                    for k, v in state.items():
                        live[k].copy_(v)
                elif state:
                    s.optimizer.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                else:
                    s.optimizer.state.pop(p, None)
        s.loss_sum.copy_(snap.loss_sum)
        s.scale, s._clean_steps, s.skipped = snap.scaler
        for later in [k for k in self.snapshots if k > step]:
            del self.snapshots[later]

    def _prune_snapshots(self, committed: int) -> None:
        """Keep what a rewind may still need: the newest snapshot at or before committed+1."""
        every = self.w.snapshot_every
        floor = max((committed + 1) // every * every, self.group_start)
        for old in [k for k in self.snapshots if k < floor]:
            del self.snapshots[old]

    def _after_step(self, g: int) -> None:
        """``g`` steps are done: snapshot and checkpoint on schedule."""
        if g % self.w.snapshot_every == 0:
            self._snapshot(g)
        self.steps_done = g
        job = self.job
        if self.leader and job.checkpoint_dir and job.checkpoint_every and g % job.checkpoint_every == 0:
            self._write_checkpoint(g)

    def _write_checkpoint(self, g: int):
        from ..nn import checkpoint
        s = self.step
        meta = {"loss_sum": float(s.loss_sum.item()), "scaler": [s.scale, s._clean_steps, s.skipped],
                "epochs": self.epoch_results}
        return checkpoint.save(self.job.checkpoint_dir, step=g, epoch=g // self.w.steps_per_epoch,
                               fingerprint=self.spec.fingerprint, model=self.model, optimizer=s.optimizer, meta=meta,
                               fault=self.faults.in_checkpoint(g))

    def _checkpoint_now(self, msg: CheckpointNow) -> None:
        """The broker stopped the job at a boundary (Ctrl-C on `up`): keep what was trained."""
        path, problem = "", ""
        if not self.job.checkpoint_dir:
            problem = "no --checkpoint-dir"
        elif self.steps_done != msg.step:
            problem = f"not at the boundary (at step {self.steps_done}, asked for {msg.step})"
        else:
            try:
                path = str(self._write_checkpoint(msg.step).path)
            except Exception as exc:   # reported; the job is ending anyway
                problem = f"{type(exc).__name__}: {exc}"[:4000]
        self.link.send(Checkpointed(job_id=self.spec.job_id, rank=self.rank, step=msg.step, path=path, message=problem))

    def _resume(self, path: str) -> None:
        """Load the checkpoint the broker chose and verified (it must still be that one)."""
        from ..nn import checkpoint
        start = self.w.start_step
        expected = checkpoint.Checkpoint(path=Path(path), step=start, epoch=start // self.w.steps_per_epoch,
                                         fingerprint=self.spec.fingerprint, meta={})
        found = checkpoint.load(expected, self.model, self.step.optimizer)
        self.step.loss_sum.fill_(found.meta["loss_sum"])
        scale, clean, skipped = found.meta["scaler"]
        self.step.scale, self.step._clean_steps, self.step.skipped = float(scale), int(clean), int(skipped)
        self.epoch_results = list(found.meta.get("epochs", []))

    # -- control plane -------------------------------------------------------------

    def _absorb(self, msg) -> None:
        if isinstance(msg, Grant) and msg.job_id == self.spec.job_id:
            self.grants.append(msg)
            self._prune_snapshots(msg.committed)
        elif isinstance(msg, Resplit) and msg.job_id == self.spec.job_id and msg.generation == self.generation:
            self.resplits[msg.version] = list(msg.split)
            while len(self.resplits) > 64:   # a member that never votes with the rest: the grants still carry every split
                del self.resplits[min(self.resplits)]
        elif isinstance(msg, Stop) and msg.job_id == self.spec.job_id:
            self.stop = msg
        elif isinstance(msg, Release) and msg.job_id == self.spec.job_id:
            self.released = True
        elif isinstance(msg, CheckpointNow) and msg.job_id == self.spec.job_id:
            self._checkpoint_now(msg)
        elif isinstance(msg, Regroup) and msg.job_id == self.spec.job_id and msg.generation > self.generation:
            self.regroup = msg
            self._forget_grants()   # of the broken group; the new ones follow this message
            raise GroupBroken(f"the broker re-forms the group (generation {msg.generation})")
        elif isinstance(msg, Shutdown):
            raise BrokerGone(msg.reason or "shutdown")

    def _poll(self, timeout_ms: int) -> None:
        msg = self.link.recv(timeout_ms)
        while msg is not None:
            self._absorb(msg)
            msg = self.link.recv(0)
        if os.getppid() != self.parent_pid:
            raise BrokerGone("broker process exited")

    def _forget_grants(self) -> None:
        self.grants.clear()
        self.resplits.clear()
        self.agreed = None

    def _plan_for(self, step: int) -> tuple[int, list[int]] | None:
        """(version, split) of ``step``: its grant's, or a newer one the group agreed on
        before it; None while the step is not granted."""
        # grants arrive in step order, each starting where the previous one ended
        while self.grants and self.grants[0].end_step <= step:
            self.grants.pop(0)
        if not self.grants or self.grants[0].first_step > step:
            return None
        grant = self.grants[0]
        if self.agreed is not None and self.agreed[0] > grant.version and step >= self.agreed[1]:
            return self.agreed[0], self.agreed[2]
        return grant.version, grant.split

    def _split_for(self, step: int) -> list[int] | None:
        plan = self._plan_for(step)
        return None if plan is None else plan[1]

    def _vote(self, version: int) -> int:
        """How many versions ahead of ``version`` (the current step's) the next split this
        actor holds is, or 0: the group switches to it only if every member votes the same."""
        newer = [v for v in self.resplits if v > version]
        return min(newer) - version if newer else 0

    def _agree(self, step: int, version: int) -> None:
        """Every member holds split ``version``: it applies from the step after ``step``."""
        self.agreed = (version, step + 1, self.resplits[version])
        for old in [v for v in self.resplits if v <= version]:
            del self.resplits[old]

    def _wait_granted(self, step: int) -> list[int]:
        split = self._split_for(step)
        while split is None:
            self._flush(force=True)   # the broker grants on news of progress...
            split = self._split_for(step)   # ...and its answer may be in already (the flush polls)
            if split is None:
                self._poll(IDLE_POLL_MS)
                self.link.send(Heartbeat(rank=self.rank, step=max(step - 1, 0)))
                split = self._split_for(step)
        return split

    def _flush(self, force: bool = False) -> None:
        now = time.perf_counter()
        period = FLUSH_EVERY_S if self.world > 1 else FLUSH_ALONE_S
        due = len(self.pending) >= FLUSH_EVERY_STEPS or now - self.last_flush >= period
        if not self.pending or not (due or force):
            self._poll(0)   # a new split is worth taking in at every step
            return
        resolved = iter(self.timer.resolve())  # CUDA intervals, read once the device is done with them
        stats = [StepStat(step=g, rows=rows, compute_s=(next(resolved) if c is None else c) + sim, step_s=s,
                          simulated_s=sim, version=v) for g, rows, c, s, sim, v in self.pending]
        queued = (self.grants[-1].end_step if self.grants else 0) - (self.pending[-1][0] + 1)
        memory = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        self.link.send(Reports(job_id=self.spec.job_id, rank=self.rank, steps=stats, memory_bytes=memory,
                               queued=max(queued, 0), generation=self.generation))
        self.pending, self.last_flush = [], now
        self._poll(0)

    def _heartbeat(self) -> None:
        """Proof of life from the step loop while it does long work that sends nothing else."""
        self.link.send(Heartbeat(rank=self.rank, step=max(self.pending[-1][0] if self.pending else 0, 0)))

    # -- training ------------------------------------------------------------------

    def run(self) -> None:
        g, joining = self.w.start_step, True
        self.rows_done, self.steady_t0 = 0, None
        while True:
            try:
                if joining:
                    _log(f"rank {self.rank}: joining generation {self.generation} at step {g}")
                    if self.source is None:
                        self._snapshot(g)   # the state every rank starts from (seeded init, or a checkpoint)
                    self._collective(self._join_group)
                    if self.source is not None:
                        self._collective(lambda: self._sync_state(self.source))
                        self._snapshot(g)
                    joining = False
                    _log(f"rank {self.rank}: joined")
                g = self._train(g)
                break
            except GroupBroken as exc:
                g, joining = self._recover(str(exc)), True
        self._flush(force=True)
        self._finish(self.rows_done, time.perf_counter() - (self.steady_t0 or time.perf_counter()))

    def _recover(self, why: str) -> int:
        """Leave the broken group, wait for the broker's regroup, restore the snapshot it names."""
        _log(f"rank {self.rank}: {why}; waiting to regroup")
        if self.regroup is None:   # the broker may not know yet (a timeout with every peer alive)
            self.link.send(GroupFailed(job_id=self.spec.job_id, rank=self.rank, generation=self.generation,
                                       message=why[:4000]))
        self.pending.clear()   # steps past the failure are not committed; they will be replayed
        self._leave_group()
        if self.regroup is None:
            self._forget_grants()
        self.next_piece = None
        while self.regroup is None:
            try:
                self._poll(IDLE_POLL_MS)
            except GroupBroken:
                continue
            if self.released or self.stop is not None:
                raise BrokerGone("the job ended while regrouping")
            self.link.send(Heartbeat(rank=self.rank, step=0))
        msg, self.regroup = self.regroup, None
        self._take_place(msg)
        self.group_start, self.source = msg.rewind_step, msg.source_rank
        if msg.rewind_step in self.snapshots or self.rank == msg.source_rank:
            self._restore(msg.rewind_step)
        # otherwise (a replacement lost before it had state) the source's state arrives in the sync
        return msg.rewind_step

    def _train(self, g: int) -> int:
        spe, total = self.w.steps_per_epoch, self.w.steps_per_epoch * self.job.epochs
        if g % spe == 0 and 0 < g:
            # a rewind or resume to an epoch boundary: that epoch's evaluation may not have
            # reached the broker; the state is the one it saw, so doing it again is exact
            self._end_epoch(g // spe - 1, self._epoch_seconds())
        while g < total:
            epoch, t = divmod(g, spe)
            if t == 0 or self.epoch_t0 is None:
                self.epoch_t0 = time.perf_counter()
            if self.steady_t0 is None and (epoch >= 1 or self.job.epochs == 1):
                self.steady_t0, self.rows_done = time.perf_counter(), 0
            self._wait_granted(g)
            self.rows_done += self._train_step(g, self._perm(epoch), t, last=t + 1 == spe)
            g += 1
            self._after_step(g)
            # only now may the step be reported: once the broker counts it committed it may
            # rewind the group to the snapshot _after_step just took
            self._flush()
            if t + 1 == spe:
                self._end_epoch(epoch, self._epoch_seconds())
        return g

    def _epoch_seconds(self) -> float:
        return time.perf_counter() - self.epoch_t0 if self.epoch_t0 is not None else 0.0

    def _perm(self, epoch: int) -> torch.Tensor:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, epoch_permutation(self.n_train, self.job.seed, epoch).to(self.device))
        return self._perm_cache[1]

    def _gather(self, g: int, perm: torch.Tensor, t: int, split: list[int]) -> _Piece:
        """This actor's rows of step ``g`` (epoch-local step ``t``), gathered from the shared cache."""
        started = time.perf_counter()
        batch = self.job.batch_size
        start, stop = piece(split, batch_rows(self.n_train, batch, t), self.rank)
        idx = perm[t * batch + start: t * batch + stop]
        x = self.x_train.index_select(0, idx).to(self.device, non_blocking=True)   # (b, D)
        y = self.y_train.index_select(0, idx).to(self.device, non_blocking=True)   # (b,)
        return _Piece(g, split, x, y, time.perf_counter() - started)

    def _train_step(self, g: int, perm: torch.Tensor, t: int, last: bool) -> int:
        self.faults.before_step(g)
        version, split = self._plan_for(g)
        batch, self.next_piece = self.next_piece, None
        if batch is None or batch.step != g or batch.split != split:
            batch = self._gather(g, perm, t, split)
        rows = batch_rows(self.n_train, self.job.batch_size, t)
        factor = self._slowdown(g)
        t0 = time.perf_counter()
        mark = self.timer.start()
        self.step.compute(batch.x, batch.y, rows)
        compute_s = self.timer.stop(mark, sync=factor > 1.0)
        simulated = (factor - 1.0) * compute_s if factor > 1.0 else 0.0
        if simulated:
            time.sleep(simulated)   # SIMULATED straggler: before the all-reduce, so it looks like slow compute

        def prefetch() -> None:   # gather the next step's rows while the gradients are in flight
            self.faults.inside_allreduce(g)
            following = None if last else self._split_for(g + 1)
            if following is not None:
                self.next_piece = self._gather(g + 1, perm, t + 1, following)

        vote = self._vote(version)
        self._collective(lambda: self.step.apply(meanwhile=prefetch, vote=vote))
        if vote and self.step.unanimous(len(self.members)):
            self._agree(g, version + vote)
        # the gather is the actor's own per-row work before the collective, so it counts as compute
        if compute_s is not None:
            compute_s += batch.gather_s
        self.pending.append((g, batch.x.shape[0], compute_s, time.perf_counter() - t0, simulated, version))
        return batch.x.shape[0]

    def _slowdown(self, g: int) -> float:
        """The SIMULATED slowdown factor of this rank at step ``g`` (1.0: none)."""
        return next((s.factor for s in self.job.slowdowns if s.rank == self.rank and s.from_step <= g
                     and (s.to_step is None or g < s.to_step)), 1.0)

    def _end_epoch(self, epoch: int, seconds: float) -> None:
        train_loss = self.step.take_loss_sum() / self.n_train
        n_test, world, place = self.x_test.shape[0], len(self.members), self.members.index(self.rank)
        lo, hi = n_test * place // world, n_test * (place + 1) // world   # this member's shard
        loss, correct = evaluate(self.model, self.x_test[lo:hi], self.y_test[lo:hi], self.step.precision,
                                 between=self._heartbeat)
        # on the actor's device: NCCL reduces device tensors only
        totals = torch.tensor([loss, float(correct)], dtype=torch.float64, device=self.device)
        if self.dist is not None:
            self._collective(lambda: self.dist.all_reduce(totals))
        if self.leader:
            result = dict(epoch=epoch, train_loss=train_loss, test_loss=float(totals[0]) / n_test,
                          test_accuracy=float(totals[1]) / n_test, seconds=seconds)
            self.epoch_results = [r for r in self.epoch_results if r["epoch"] < epoch] + [result]
            self.link.send(EpochResult(job_id=self.spec.job_id, rank=self.rank, generation=self.generation, **result))

    def _finish(self, rows: int, seconds: float) -> None:
        while self.stop is None:
            self._poll(IDLE_POLL_MS)
        saved = False
        if self.leader and self.stop.save and self.w.save_path:
            save_weights(self.model, self.w.save_path, self.job)
            saved = True
        self.link.send(Finished(job_id=self.spec.job_id, rank=self.rank, samples=rows, seconds=seconds, saved=saved))
        while not self.released:   # back to the pool only once the broker has counted us as done
            self._poll(IDLE_POLL_MS)

    def close(self) -> None:
        """Leave the gradient group and unmap the dataset, ready for the next job."""
        self._leave_group()
        self.reader.close()


def save_weights(model: torch.nn.Module, path: str, job) -> None:
    """Final weights as safetensors, written to a temp file and renamed into place."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata={"hidden": ",".join(map(str, job.hidden)), "dataset": job.dataset})
    os.replace(tmp, path)


def _warm_up(device: torch.device) -> None:
    """Pay the optimizers' one-time imports (over a second) before saying hello, so a
    job — or a replacement joining a running one — does not wait for them."""
    probe = [torch.nn.Parameter(torch.zeros(1, device=device))]
    for name in ("adam", "adamw", "sgd"):
        make_optimizer(probe, name, 1e-3, 0.9, 0.0)


def _hello(link: Link, args: argparse.Namespace, device: torch.device) -> None:
    name, memory, bf16 = "cpu", 0, False
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, memory, bf16 = props.name, props.total_memory, torch.cuda.is_bf16_supported()
    link.send(Hello(actor_id=args.actor_id, pid=os.getpid(), device=str(device), device_name=name,
                    threads=args.threads, memory_bytes=memory, bf16=bf16))


def _await_welcome(link: Link, parent_pid: int, args: argparse.Namespace, device: torch.device) -> Welcome:
    """Wait, idle, for the next job, for as long as the broker lives. A spare that is
    adopted takes the lost actor's name and says hello as it."""
    while True:
        msg = link.recv(IDLE_POLL_MS)
        if isinstance(msg, Welcome):
            return msg
        if isinstance(msg, Adopt):
            _log(f"{args.actor_id}: adopted as {msg.actor_id}")
            args.actor_id = msg.actor_id
            _hello(link, args, device)
            continue
        if isinstance(msg, Release):   # the job ended before this replacement rejoined it: back to the pool
            _hello(link, args, device)
            continue
        if isinstance(msg, Shutdown) or os.getppid() != parent_pid:
            raise BrokerGone("shut down while idle")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    die_with_parent(args.parent_pid, args.connect)   # again: harmless, and main() may be called directly
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the broker decides when we stop
    keep_heap()   # before the first batch: steps reuse their buffers' pages instead of refaulting them
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    _warm_up(device)
    link, actor = Link(args.connect), None
    try:
        while True:   # one job after another, until the broker says goodbye
            _hello(link, args, device)
            welcome = _await_welcome(link, args.parent_pid, args, device)
            actor = Actor(link, welcome, device, args.parent_pid)
            actor.run()
            actor.close()
            actor = None
    except BrokerGone as exc:
        print(f"actor {args.actor_id}: {exc}", file=sys.stderr)
        if os.getppid() != args.parent_pid:   # the broker died rather than said goodbye
            clean_after(args.parent_pid, args.connect)
        return 0
    except Exception as exc:  # report, then fail: the broker decides what happens next
        traceback.print_exc()
        job_id, rank = (actor.job.job_id, actor.rank) if actor else (0, 0)
        link.send(Failure(job_id=job_id, rank=rank, message=f"{type(exc).__name__}: {exc}"[:60000]))
        return 1
    finally:
        if actor is not None:
            actor.close()
        link.close()
