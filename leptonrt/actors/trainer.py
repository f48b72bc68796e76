"""The torch side of an actor in one job: its data, model, step, snapshots and the lineage.

The lineage is the digest of the history its weights have trained (``batches.fold`` over
every step applied, in order). It lives with the weights: a snapshot keeps it and a
restore brings it back, a checkpoint stores it, a hand-over copies it. At the end it goes
to the broker, which checks it against the committed history: exactly-once, shown.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..batches import batch_rows, fold, history_start, piece
from ..data.shm import SegmentReader
from ..messages import Welcome
from ..nn.model import build_model, load_loss
from ..nn.order import epoch_permutation
from ..nn.step import FusedStep, LossScale, StepTimer, evaluate
from .group import Group


@dataclass
class Piece:
    """One step's rows for this actor (gathered ahead, during the previous step's sum)."""

    step: int
    split: list[int]        # the split it was gathered for (a split agreed meanwhile makes it stale)
    x: torch.Tensor         # (b, D)
    y: torch.Tensor         # (b,)
    start: int              # its positions in the global batch: [start, stop)
    stop: int
    gather_s: float


@dataclass
class Snapshot:
    """Everything a step changes, kept in memory so lost steps can be replayed exactly."""

    step: int                     # the next step to train from this state
    params: list[torch.Tensor]
    optimizer: list[dict]         # per parameter, its optimizer state (tensors cloned)
    loss_sum: torch.Tensor
    loss_scale: LossScale
    lineage: bytes


class Trainer:
    """Model, fused step, data and snapshots of one actor in one job."""

    def __init__(self, welcome: Welcome, device: torch.device, group: Group) -> None:
        job = welcome.job.job
        self.job, self.welcome, self.device, self.group = job, welcome, device, group
        self.reader = SegmentReader()
        self._map_data(welcome)
        self.model = build_model(welcome.data.n_features, welcome.data.n_classes, hidden=list(job.hidden),
                                 seed=job.seed, model=job.model, device=device)
        self.loss = load_loss(job.loss)
        self.step = FusedStep(self.model, optimizer=job.optimizer, lr=job.lr, momentum=job.momentum,
                              weight_decay=job.weight_decay, precision=job.precision, allreduce=group.sum,
                              loss=self.loss)
        self.timer = StepTimer(device)
        self.snapshots: dict[int, Snapshot] = {}
        self.lineage = bytes.fromhex(welcome.history) if welcome.history else history_start(
            job.seed, self.n_train, job.batch_size)
        self._perm: tuple[int, torch.Tensor] | None = None

    def _map_data(self, welcome: Welcome) -> None:
        """Map the arrays the Welcome names; an actor that takes its training rows by value
        (``rows_by_value``) maps the test split alone."""
        d = welcome.data
        names = ("x_test", "y_test") if welcome.rows_by_value else ("x_train", "y_train", "x_test", "y_test")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the mapping is read-only; we never write to it
            arrays = {name: torch.from_numpy(self.reader.attach(getattr(d, name).segment, getattr(d, name).dtype,
                                                                getattr(d, name).shape))
                      for name in names}
        self.x_test, self.y_test = arrays["x_test"], arrays["y_test"]
        if welcome.rows_by_value:
            self.x_train = self.y_train = None
            self.n_train = welcome.rows_by_value
            return
        self.x_train, self.y_train = arrays["x_train"], arrays["y_train"]
        self.n_train = self.x_train.shape[0]
        if self.device.type == "cuda":
            # one copy to device memory, then rows are gathered there
            self.x_train, self.y_train = self.x_train.to(self.device), self.y_train.to(self.device)

    def close(self) -> None:
        self.reader.close()

    # -- rows -------------------------------------------------------------------------------

    def piece_of(self, g: int, split: list[int], rank: int) -> tuple[int, int]:
        """Positions [start, stop) of ``rank``'s rows in global batch ``g``."""
        return piece(split, self.batch_rows(g), rank)

    def gather(self, g: int, split: list[int], rank: int) -> Piece:
        """This actor's rows of global step ``g``, gathered from the shared cache."""
        started = time.perf_counter()
        batch, spe = self.job.batch_size, self.welcome.steps_per_epoch
        epoch, t = divmod(g, spe)
        start, stop = self.piece_of(g, split, rank)
        idx = self._permutation(epoch)[t * batch + start: t * batch + stop]
        x = self.x_train.index_select(0, idx).to(self.device, non_blocking=True)   # (b, D)
        y = self.y_train.index_select(0, idx).to(self.device, non_blocking=True)   # (b,)
        return Piece(g, split, x, y, start, stop, time.perf_counter() - started)

    def received(self, g: int, split: list[int], start: int, stop: int, x, y, waited_s: float) -> Piece:
        """Rows that came by value (numpy, from the agent) as this step's piece."""
        x = torch.from_numpy(x.copy()).to(self.device, non_blocking=True)   # (b, D)
        y = torch.from_numpy(y.copy()).to(self.device, non_blocking=True)   # (b,)
        return Piece(g, split, x, y, start, stop, waited_s)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.n_train, self.job.seed, epoch).to(self.device))
        return self._perm[1]

    def batch_rows(self, g: int) -> int:
        return batch_rows(self.n_train, self.job.batch_size, g % self.welcome.steps_per_epoch)

    def applied(self, g: int) -> None:
        """Step ``g`` is in the weights now: so it is in their lineage."""
        self.lineage = fold(self.lineage, g, self.n_train, self.job.batch_size)

    # -- snapshots --------------------------------------------------------------------------

    def snapshot(self, step: int) -> None:
        s = self.step
        state = [{k: v.clone() if torch.is_tensor(v) else copy.copy(v) for k, v in s.optimizer.state[p].items()}
                 for p in s.params]
        self.snapshots[step] = Snapshot(step, [p.detach().clone() for p in s.params], state, s.loss_sum.clone(),
                                        s.loss_scale, self.lineage)

    def restore(self, step: int) -> bool:
        """Go back to the snapshot before ``step``; False if there is none (then the state
        comes from the group's source)."""
        snap = self.snapshots.get(step)
        if snap is None:
            return False
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
        s.loss_scale, self.lineage = snap.loss_scale, snap.lineage
        self.forget_after(step)
        return True

    def forget_after(self, step: int) -> None:
        for later in [k for k in self.snapshots if k > step]:
            del self.snapshots[later]

    def forget_before(self, step: int) -> None:
        for old in [k for k in self.snapshots if k < step]:
            del self.snapshots[old]

    def take_state_from(self, source: int, lineage: bytes) -> bool:
        """Everybody takes ``source``'s weights, optimizer state, loss sum and loss scale (a
        group with a joiner); the lineage is the broker's record of that state's history."""
        opt = self.step.optimizer
        has_state = torch.tensor([float(len(opt.state) > 0)], device=self.device)
        if not self.group.broadcast([has_state], source):
            return False
        if has_state.item() == 0:   # host sync: what follows depends on it
            opt.state.clear()
        elif not opt.state:   # a fresh actor: create the state's tensors, then overwrite them
            self.step.flat.zero_()
            opt.step()
        tensors = [p.data for p in self.step.params]
        if has_state.item():
            for p in self.step.params:
                tensors += [v for _k, v in sorted(opt.state[p].items()) if torch.is_tensor(v)]
        scale = torch.tensor(self.step.loss_scale.as_list(), dtype=torch.float64, device=self.device)
        if not self.group.broadcast(tensors + [self.step.loss_sum, scale], source):
            return False
        self.step.loss_scale = LossScale.from_list(scale.tolist())
        self.lineage = lineage
        return True

    # -- evaluation and files ---------------------------------------------------------------

    def evaluate_shard(self, heartbeat) -> tuple[float, float] | None:
        """(loss sum, correct) over the whole test split, each member evaluating its shard;
        None if the group failed meanwhile."""
        n_test, place = self.x_test.shape[0], self.group.place
        world, position = len(place.members), place.position
        lo, hi = n_test * position // world, n_test * (position + 1) // world   # this member's shard
        loss, correct = evaluate(self.model, self.x_test[lo:hi], self.y_test[lo:hi], self.step.precision,
                                 between=heartbeat, loss_fn=self.loss)
        totals = torch.tensor([loss, float(correct)], dtype=torch.float64, device=self.device)   # NCCL: device tensors
        if not self.group.all_reduce(totals):
            return None
        return float(totals[0]), float(totals[1])

    def write_checkpoint(self, directory: str, step: int, epochs: list[dict], fault=None):
        from ..nn import checkpoint
        s = self.step
        meta = {"loss_sum": float(s.loss_sum.item()), "scaler": s.loss_scale.as_list(), "epochs": epochs,
                "history": self.lineage.hex()}
        return checkpoint.save(directory, step=step, epoch=step // self.welcome.steps_per_epoch,
                               fingerprint=self.welcome.job.fingerprint, model=self.model, optimizer=s.optimizer,
                               meta=meta, fault=fault)

    def resume(self, path: str) -> list[dict]:
        """Load the checkpoint the broker chose and verified (it must still be that one);
        returns the epoch results it recorded."""
        from ..nn import checkpoint
        start = self.welcome.start_step
        expected = checkpoint.Checkpoint(path=Path(path), step=start, epoch=start // self.welcome.steps_per_epoch,
                                         fingerprint=self.welcome.job.fingerprint, meta={})
        found = checkpoint.load(expected, self.model, self.step.optimizer)
        self.step.loss_sum.fill_(found.meta["loss_sum"])
        self.step.loss_scale = LossScale.from_list(found.meta["scaler"])
        return list(found.meta.get("epochs", []))

    def save_weights(self, path: str) -> None:
        """Final weights as safetensors, written to a temp file and renamed into place."""
        import os
        from safetensors.torch import save_file
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        tmp = f"{path}.tmp-{os.getpid()}"
        model = self.job.model or "mlp:" + ",".join(map(str, self.job.hidden))
        save_file(tensors, tmp, metadata={"model": model, "hidden": ",".join(map(str, self.job.hidden)),
                                          "dataset": self.job.dataset})
        os.replace(tmp, path)
