"""FusedOptimizer: torch.optim's fused arithmetic and state, without its import of torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from leptonrt.nn.optim import FusedOptimizer
from leptonrt.nn.step import make_optimizer

TORCH = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
CASES = [("adam", 0.0, 0.0), ("adam", 0.0, 0.01), ("adamw", 0.0, 0.01), ("sgd", 0.9, 0.0), ("sgd", 0.9, 0.01),
         ("sgd", 0.0, 0.0)]


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]


def _theirs(kind, params, momentum, decay):
    kwargs = {"lr": 0.05, "weight_decay": decay, "fused": True}
    if kind == "sgd":
        kwargs["momentum"] = momentum
    return TORCH[kind](params, **kwargs)


def _steps(optimizer, params, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()


@pytest.mark.parametrize("kind,momentum,decay", CASES)
def test_the_same_bits_and_the_same_state_as_torch_optims_fused_path(kind, momentum, decay):
    ours, theirs = _params(), _params()
    mine = FusedOptimizer(ours, kind, lr=0.05, momentum=momentum, weight_decay=decay)
    ref = _theirs(kind, theirs, momentum, decay)
    _steps(mine, ours, 5)
    _steps(ref, theirs, 5)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    for a, b in zip(ours, theirs):
        assert mine.state.get(a, {}).keys() == ref.state.get(b, {}).keys()
        assert all(torch.equal(mine.state[a][k], ref.state[b][k]) for k in mine.state.get(a, {}))


@pytest.mark.parametrize("kind,momentum,decay", CASES)
def test_a_state_dict_moves_both_ways_between_it_and_torch_optim(kind, momentum, decay):
    ours, theirs = _params(), _params()
    mine = FusedOptimizer(ours, kind, lr=0.05, momentum=momentum, weight_decay=decay)
    _steps(mine, ours, 3)
    ref = _theirs(kind, theirs, momentum, decay)
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.copy_(a)
    ref.load_state_dict(copy.deepcopy(mine.state_dict()))   # ours -> torch.optim (which keeps what it is given)
    back = FusedOptimizer(_params(2), kind, lr=0.05, momentum=momentum, weight_decay=decay)
    back.load_state_dict(ref.state_dict())          # torch.optim -> ours
    assert back.state_dict()["state"].keys() == mine.state_dict()["state"].keys()
    _steps(mine, ours, 2, seed=7)
    _steps(ref, theirs, 2, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_a_state_that_does_not_fit_is_refused_with_what_differs():
    mine = FusedOptimizer(_params(), "adam", lr=0.05, momentum=0.0, weight_decay=0.0)
    other = FusedOptimizer(_params()[:1], "adam", lr=0.05, momentum=0.0, weight_decay=0.0)
    with pytest.raises(ValueError, match="parameters"):
        mine.load_state_dict(other.state_dict())
    sgd = FusedOptimizer(_params(), "sgd", lr=0.05, momentum=0.9, weight_decay=0.0)
    _steps(sgd, sgd.params, 1)
    with pytest.raises(KeyError, match="momentum_buffer"):
        mine.load_state_dict(sgd.state_dict())


def test_training_takes_no_import_of_torch_dynamo():
    code = textwrap.dedent("""
        import sys, torch
        from leptonrt.nn.model import build_mlp
        from leptonrt.nn.step import FusedStep
        for kind in ("adam", "adamw", "sgd"):
            step = FusedStep(build_mlp(8, [16], 3, seed=0), optimizer=kind, lr=0.01)
            for _ in range(3):
                step.compute(torch.randn(4, 8), torch.randint(0, 3, (4,)), 4)
                step.apply()
            step.optimizer.load_state_dict(step.optimizer.state_dict())
        print(type(step.optimizer).__name__, "torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FusedOptimizer", "False"]


def test_make_optimizer_uses_the_fused_kernels_on_this_cpu():
    assert isinstance(make_optimizer(_params(), "adam", 0.1, 0.9, 0.0), FusedOptimizer)


def test_zero_grad_drops_or_zeroes_the_gradients_as_torch_optim_does():
    params = _params()
    mine = FusedOptimizer(params, "sgd", lr=0.1, momentum=0.0, weight_decay=0.0)
    for p in params:
        p.grad = torch.ones_like(p)
    mine.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    mine.zero_grad()
    assert all(p.grad is None for p in params)
