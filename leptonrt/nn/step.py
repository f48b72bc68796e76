"""One fused mixed-precision data-parallel training step, written out plainly.

Every actor computes the gradient of ``sum(per-sample loss on its piece) / B`` where B
is the *global* batch, so a SUM all-reduce of the gradients yields exactly the gradient
of the mean loss over the whole batch. The gradients live in one flat buffer (each
parameter's ``.grad`` is a view into it), so backward writes straight into the buffer
and the whole sync is a single collective. Extra slots ride along in that buffer: the
loss sum (for reporting, no extra collective), the fp16 overflow flag (so every actor
skips the same steps), and a vote and its square (so every actor can tell, from the sums,
whether all of them voted the same: the actors agree on a new split that way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from .model import Loss, batch_loss
from .optim import FusedOptimizer, fused_kernels_work

AllReduce = Callable[[torch.Tensor], object]   # may return a handle with .wait() (an async collective)
_VOTE, _VOTE2, _LOSS, _FLAG = -4, -3, -2, -1  # slots after the gradients in the flat buffer


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` means bf16 on a GPU that has it, fp16 on one that doesn't, fp32 on CPU.

    CPU autocast works but only pays off on CPUs with bf16 matrix units, and it costs
    accuracy for nothing elsewhere, so ``auto`` keeps CPUs in fp32; ask for bf16 explicitly.
    """
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def make_optimizer(params: list[nn.Parameter], name: str, lr: float, momentum: float,
                   weight_decay: float) -> FusedOptimizer | torch.optim.Optimizer:
    """PyTorch's fused kernels called directly (``optim.py``: no torch._dynamo import) where
    this torch has them for the parameters' device and dtypes, else torch.optim's foreach
    implementation."""
    if all(fused_kernels_work(name, params[0].device, dtype) for dtype in {p.dtype for p in params}):
        return FusedOptimizer(params, name, lr=lr, momentum=momentum, weight_decay=weight_decay)
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    kwargs: dict = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        kwargs["momentum"] = momentum
    return kinds[name](params, foreach=True, **kwargs)


@dataclass(frozen=True)
class LossScale:
    """fp16's dynamic loss scale: one record, so a snapshot, a checkpoint or a hand-over
    copies all of it at once."""

    scale: float = 1.0         # the loss is multiplied by this before backward
    clean_steps: int = 0       # steps since the last overflow (the scale doubles after 2,000)
    skipped: int = 0           # steps skipped for overflow, in all

    GROW_AFTER = 2000

    def overflowed(self) -> "LossScale":
        return LossScale(max(self.scale / 2.0, 1.0), 0, self.skipped + 1)

    def clean(self) -> "LossScale":
        if self.clean_steps + 1 >= self.GROW_AFTER:
            return replace(self, scale=self.scale * 2.0, clean_steps=0)
        return replace(self, clean_steps=self.clean_steps + 1)

    def as_list(self) -> list[float]:
        return [self.scale, float(self.clean_steps), float(self.skipped)]

    @classmethod
    def from_list(cls, values) -> "LossScale":
        scale, clean, skipped = values
        return cls(float(scale), int(clean), int(skipped))


class FusedStep:
    """Owns the flat gradient buffer, the optimizer and the fp16 loss scale of one model."""

    def __init__(self, model: nn.Module, *, optimizer: str, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, precision: str = "fp32", allreduce: AllReduce | None = None,
                 loss: Loss | None = None) -> None:
        self.model, self.loss = model, loss
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.precision = resolve_precision(precision, self.device)
        self.allreduce = allreduce
        self.n_grads = sum(p.numel() for p in self.params)
        self.flat = torch.zeros(self.n_grads + 4, device=self.device, dtype=torch.float32)
        self._vote = 0
        self._bind_grad_views()
        self.optimizer = make_optimizer(self.params, optimizer, lr, momentum, weight_decay)
        self.loss_sum = torch.zeros((), device=self.device)  # global loss sum since last take
        self.loss_scale = LossScale(2.0 ** 16 if self.precision == "fp16" else 1.0)
        self.collective_s = 0.0   # wall time of the last step's gradient sum (waiting for the others included)

    def _bind_grad_views(self) -> None:
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = self.flat[offset:offset + n].view_as(p)
            offset += n

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def compute(self, x: torch.Tensor, y: torch.Tensor, global_rows: int) -> None:
        """Forward + backward of this actor's piece into the flat buffer (no sync)."""
        self.flat.zero_()
        if x.shape[0] == 0:
            return  # an empty piece still joins the all-reduce, with zeros
        with self._autocast():
            logits = self.model(x)                                            # (b, C)
        loss_sum = batch_loss(self.loss, logits, y)                           # fp32 scalar
        (loss_sum * (self.loss_scale.scale / global_rows)).backward()
        self.flat[_LOSS] = loss_sum.detach()
        if self.precision == "fp16":
            self.flat[_FLAG] = (~torch.isfinite(self.flat[:self.n_grads])).any().float()

    def apply(self, meanwhile: Callable[[], None] | None = None, vote: int = 0) -> bool:
        """All-reduce the buffer and take the optimizer step; False if fp16 overflow skipped it.

        ``meanwhile`` runs while the collective is in flight (the actor gathers its next
        batch there), so host work overlaps the communication instead of following it.
        ``vote`` (a small whole number) is summed with the others' in the same collective;
        ``unanimous`` reads the outcome.
        """
        self._vote = vote
        if vote:
            self.flat[_VOTE], self.flat[_VOTE2] = float(vote), float(vote * vote)
        started = time.perf_counter()
        pending = self.allreduce(self.flat) if self.allreduce is not None else None
        self.collective_s = time.perf_counter() - started
        if meanwhile is not None:
            meanwhile()
        if pending is not None and hasattr(pending, "wait"):
            pending.wait()
        self.loss_sum += self.flat[_LOSS]
        if self.precision == "fp16":
            return self._apply_scaled()
        self.optimizer.step()
        return True

    def unanimous(self, world: int) -> int:
        """The vote of the last step, if all ``world`` actors voted it (sums n*v and n*v*v,
        exact in float32 for small votes); else 0. An actor that voted 0 knows without a
        host sync that the vote was not unanimous for anything."""
        if not self._vote:
            return 0
        total, squares = self.flat[_VOTE:_LOSS].tolist()   # one host read for both sums
        return self._vote if total == world * self._vote and squares == world * self._vote ** 2 else 0

    def _apply_scaled(self) -> bool:
        # host sync: every actor reads the same all-reduced flag, so all skip together
        if self.flat[_FLAG].item() > 0:
            self.loss_scale = self.loss_scale.overflowed()
            return False
        self.flat[:self.n_grads].div_(self.loss_scale.scale)
        self.optimizer.step()
        self.loss_scale = self.loss_scale.clean()
        return True

    def take_loss_sum(self) -> float:
        """The global loss sum accumulated since the last call (host sync)."""
        value = float(self.loss_sum.item())
        self.loss_sum.zero_()
        return value


class StepTimer:
    """Measures compute time per step without forcing a device sync on the hot path."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._pending: list = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started, sync: bool = False) -> float | None:
        """Seconds for CPU (or with ``sync``, which waits for the device); otherwise None on
        CUDA, where the interval is resolved later by ``resolve`` without stalling the step."""
        if not self.cuda:
            return time.perf_counter() - started
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        if sync:
            end.synchronize()
            return started.elapsed_time(end) / 1000.0
        self._pending.append((started, end))
        return None

    def resolve(self) -> list[float]:
        """Seconds of every CUDA interval recorded since the last call (waits for them)."""
        out = []
        for start, end in self._pending:
            end.synchronize()
            out.append(start.elapsed_time(end) / 1000.0)
        self._pending.clear()
        return out


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, chunk: int = 8192,
             between: Callable[[], None] | None = None, loss_fn: Loss | None = None) -> tuple[float, int]:
    """(sum of per-sample losses, number correct) over ``x``; the caller averages globally.
    ``between`` runs after each chunk (the actor's heartbeat)."""
    device = next(model.parameters()).device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for i in range(0, x.shape[0], chunk):
        xb, yb = x[i:i + chunk].to(device, non_blocking=True), y[i:i + chunk].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(xb)
        loss += batch_loss(loss_fn, logits, yb)
        correct += (logits.argmax(dim=1) == yb).sum()
        if between is not None:
            between()
    return float(loss.item()), int(correct.item())  # host sync, once per evaluation
