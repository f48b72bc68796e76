"""SGD, Adam and AdamW through PyTorch's own fused kernels, without ``torch.optim``'s wrapper.

``torch.optim.Optimizer.step`` imports ``torch._dynamo`` on its first call (for a graph
break that matters only under ``torch.compile``, which actors do not use): 2-3 s on a
2-core box, more than importing torch itself, paid by every actor before its first step.
``FusedOptimizer`` calls the kernels that ``torch.optim``'s ``fused=True`` path calls
(``torch._fused_sgd_``, ``torch._fused_adam_``, ``torch._fused_adamw_``) with the same
state under the same keys, so its arithmetic is that path's, bit for bit, and its
``state_dict`` has ``torch.optim``'s layout (a checkpoint moves between the two).

Where a device or dtype has no fused kernel, ``make_optimizer`` (``step.py``) falls back to
``torch.optim``'s foreach implementation; ``fused_kernels_work`` is the probe.
"""

from __future__ import annotations

import functools
from collections import defaultdict

import torch
from torch import nn

KINDS = ("adam", "adamw", "sgd")
BETAS, EPS = (0.9, 0.999), 1e-8   # torch.optim's defaults


@functools.lru_cache(maxsize=None)
def fused_kernels_work(kind: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this torch has the fused kernel of ``kind`` for ``device`` and ``dtype``
    (one step on a scratch tensor says, once per process)."""
    try:
        scratch = nn.Parameter(torch.zeros(2, device=device, dtype=dtype))
        scratch.grad = torch.ones_like(scratch)
        FusedOptimizer([scratch], kind, lr=0.0, momentum=0.9, weight_decay=0.0).step()
        return True
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return False


class FusedOptimizer:
    """One parameter group trained by a fused kernel. ``state[p]`` and ``state_dict()`` are
    ``torch.optim``'s: SGD keeps ``momentum_buffer`` (none without momentum), Adam and AdamW
    keep ``step`` (a float32 scalar on the device, as fused ``torch.optim`` keeps it),
    ``exp_avg`` and ``exp_avg_sq``."""

    def __init__(self, params, kind: str, *, lr: float, momentum: float, weight_decay: float) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind, self.params = kind, list(params)
        if kind == "sgd":
            group = dict(lr=lr, momentum=momentum, dampening=0, weight_decay=weight_decay, nesterov=False,
                         maximize=False, foreach=None, differentiable=False, fused=True)
        else:
            group = dict(lr=lr, betas=BETAS, eps=EPS, weight_decay=weight_decay, amsgrad=False, maximize=False,
                         foreach=None, capturable=False, differentiable=False, fused=True,
                         decoupled_weight_decay=kind == "adamw")
        self.param_groups = [dict(group, params=self.params)]
        # as torch.optim's: a parameter not stepped yet reads as an empty state
        self.state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)

    @torch.no_grad()
    def step(self) -> None:
        live = [p for p in self.params if p.grad is not None]
        if live:
            (self._sgd if self.kind == "sgd" else self._adam)(live, [p.grad for p in live], self.param_groups[0])

    def _sgd(self, params, grads, group) -> None:
        momentum = group["momentum"]
        buffers = [] if momentum == 0 else [self.state.get(p, {}).get("momentum_buffer") for p in params]
        first = bool(buffers) and all(b is None for b in buffers)
        if first:
            buffers = [torch.empty_like(g) for g in grads]
        elif any(b is None for b in buffers):
            raise RuntimeError("SGD momentum buffers exist for some parameters only")
        torch._fused_sgd_(params, grads, buffers, weight_decay=group["weight_decay"], momentum=momentum,
                          lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
                          maximize=group["maximize"], is_first_step=first)
        for p, buffer in zip(params, buffers):
            self.state.setdefault(p, {})["momentum_buffer"] = buffer

    def _adam(self, params, grads, group) -> None:
        for p in params:
            if not self.state.get(p):
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = group["betas"]
        kernel(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [], steps,
               amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
               eps=group["eps"], maximize=False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's: drop the gradients, or with ``set_to_none=False`` zero them in place."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[p]: dict(s) for p, s in self.state.items() if s},
                "param_groups": [dict(group, params=list(range(len(self.params))))]}

    def load_state_dict(self, saved: dict) -> None:
        """Take the state of ``saved`` (this class's or ``torch.optim``'s of the same kind),
        copied onto each parameter's device; the hyper-parameters stay the job's."""
        groups, state = saved["param_groups"], saved["state"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"saved state has {sum(len(g['params']) for g in groups)} parameters in "
                             f"{len(groups)} group(s); this optimizer has {len(self.params)} in one")
        wanted = {"momentum_buffer"} if self.kind == "sgd" else {"step", "exp_avg", "exp_avg_sq"}
        loaded: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)
        for i, p in enumerate(self.params):
            entry = state.get(groups[0]["params"][i])
            if not entry:
                continue
            if set(entry) != wanted:
                raise KeyError(f"parameter {i}: saved state has {sorted(entry)}, {self.kind} keeps {sorted(wanted)}")
            loaded[p] = {}
            for key, value in entry.items():
                like = p if key != "step" else torch.zeros((), dtype=torch.float32)
                if tuple(value.shape) != tuple(like.shape):
                    raise ValueError(f"parameter {i}: {key} has shape {tuple(value.shape)}, "
                                     f"expected {tuple(like.shape)}")
                dtype = torch.float32 if key == "step" else p.dtype
                loaded[p][key] = value.detach().to(device=p.device, dtype=dtype).clone()
        self.state = loaded
