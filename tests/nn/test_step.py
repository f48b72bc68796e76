"""The fused step against a plain PyTorch fp32 step, and the exactness of uneven splits."""

import copy

import pytest
import torch
from torch.nn import functional as F

from leptonrt.batches import piece
from leptonrt.nn.model import build_mlp
from leptonrt.nn.step import LossScale, FusedStep, evaluate, resolve_precision


def data(n=96, d=12, c=5, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), torch.randint(0, c, (n,), generator=gen)


def plain_steps(model, x, y, batch, steps, lr, opt_name="adam"):
    """The textbook loop: mean cross-entropy, default (non-fused) optimizer."""
    opt = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[opt_name](model.parameters(), lr=lr)
    for s in range(steps):
        xb, yb = x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model


def test_builds_are_identical_for_the_same_seed_and_differ_across_seeds():
    a, b, c = build_mlp(12, [16, 8], 5, seed=1), build_mlp(12, [16, 8], 5, seed=1), build_mlp(12, [16, 8], 5, seed=2)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_fused_fp32_step_matches_a_plain_pytorch_loop(opt_name):
    x, y = data()
    ref = plain_steps(build_mlp(12, [16], 5, seed=0), x, y, batch=32, steps=3, lr=0.01, opt_name=opt_name)
    model = build_mlp(12, [16], 5, seed=0)
    step = FusedStep(model, optimizer=opt_name, lr=0.01, momentum=0.0, precision="fp32")
    for s in range(3):
        step.compute(x[s * 32:(s + 1) * 32], y[s * 32:(s + 1) * 32], global_rows=32)
        assert step.apply()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_gradients_live_in_one_flat_buffer():
    model = build_mlp(12, [16], 5, seed=0)
    step = FusedStep(model, optimizer="sgd", lr=0.1, precision="fp32")
    x, y = data(8)
    step.compute(x, y, global_rows=8)
    total = sum(p.numel() for p in model.parameters())
    assert step.flat.numel() == total + 4
    assert all(p.grad.untyped_storage().data_ptr() == step.flat.untyped_storage().data_ptr() for p in model.parameters())


@pytest.mark.parametrize("split", [[32], [20, 12], [32, 0], [0, 32], [5, 0, 27]])
def test_any_split_with_a_sum_all_reduce_equals_one_actor_on_the_whole_batch(split):
    """Virtual actors in one process; the 'all-reduce' sums their flat buffers."""
    x, y = data(64)
    actors = [FusedStep(build_mlp(12, [16], 5, seed=0), optimizer="adam", lr=0.01, precision="fp32")
              for _ in split]
    single = FusedStep(build_mlp(12, [16], 5, seed=0), optimizer="adam", lr=0.01, precision="fp32")
    for s in range(2):
        xb, yb = x[s * 32:(s + 1) * 32], y[s * 32:(s + 1) * 32]
        for rank, actor in enumerate(actors):
            lo, hi = piece(split, 32, rank)
            actor.compute(xb[lo:hi], yb[lo:hi], global_rows=32)
        total = sum(a.flat for a in actors)
        for actor in actors:
            actor.flat.copy_(total)
            actor.apply()
        single.compute(xb, yb, global_rows=32)
        single.apply()
    for actor in actors:
        for p, q in zip(actor.model.parameters(), single.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert actors[0].take_loss_sum() == pytest.approx(single.take_loss_sum(), rel=1e-6)


def test_bf16_autocast_step_stays_close_to_fp32():
    x, y = data(64)
    fp32 = FusedStep(build_mlp(12, [16], 5, seed=0), optimizer="sgd", lr=0.1, precision="fp32")
    bf16 = FusedStep(build_mlp(12, [16], 5, seed=0), optimizer="sgd", lr=0.1, precision="bf16")
    for step in (fp32, bf16):
        step.compute(x, y, global_rows=64)
        step.apply()
    for p, q in zip(fp32.model.parameters(), bf16.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0.05, atol=0.01)
    assert bf16.precision == "bf16"


def test_fp16_overflow_skips_the_step_halves_the_scale_and_leaves_weights_alone():
    model = build_mlp(12, [16], 5, seed=0)
    step = FusedStep(model, optimizer="sgd", lr=0.1, precision="fp16")
    before = copy.deepcopy(model.state_dict())
    x, y = data(16)
    scale = step.loss_scale.scale

    def poison(flat):  # another actor overflowed: its flag arrives through the all-reduce
        flat[-1] += 1.0

    step.allreduce = poison
    step.compute(x, y, global_rows=16)
    assert step.apply() is False
    assert step.loss_scale.scale == scale / 2 and step.loss_scale.skipped == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_fp16_step_without_overflow_unscales_gradients_before_the_update():
    x, y = data(16)
    ref = FusedStep(build_mlp(12, [16], 5, seed=0), optimizer="sgd", lr=0.1, precision="fp32")
    fp16 = FusedStep(build_mlp(12, [16], 5, seed=0), optimizer="sgd", lr=0.1, precision="fp16")
    fp16.loss_scale = LossScale(1024.0)
    for step in (ref, fp16):
        step.compute(x, y, global_rows=16)
        assert step.apply()
    for p, q in zip(ref.model.parameters(), fp16.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0.05, atol=0.01)



@pytest.mark.parametrize(("mine", "others", "outcome"), [
    (1, [1], 1), (2, [2, 2], 2),     # every member holds the same next split
    (1, [0], 0), (1, [2], 0),        # one holds none, or another one
    (1, [0, 2], 0),                  # the sum alone (1 + 0 + 2 = 3 x 1) would say yes; the squares say no
    (0, [1], 0),                     # voting nothing agrees to nothing
])
def test_a_vote_is_unanimous_only_if_every_member_voted_the_same(mine, others, outcome):
    model = build_mlp(12, [16], 5, seed=0)
    step = FusedStep(model, optimizer="sgd", lr=0.1, precision="fp32")
    x, y = data(8)

    def allreduce(flat):   # the other members' votes arrive through the sum, with their gradients
        flat[-4] += float(sum(others))
        flat[-3] += float(sum(v * v for v in others))

    step.allreduce = allreduce
    for _ in range(2):   # and the next step's vote starts from nothing
        step.compute(x, y, global_rows=8)
        step.apply(vote=mine)
        assert step.unanimous(1 + len(others)) == outcome

def test_auto_precision_is_fp32_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_evaluate_counts_correct_predictions_and_sums_losses():
    model = build_mlp(12, [16], 5, seed=0)
    x, y = data(40)
    loss, correct = evaluate(model, x, y, "fp32", chunk=7)
    with torch.no_grad():
        logits = model(x)
    assert correct == int((logits.argmax(1) == y).sum())
    assert loss == pytest.approx(float(F.cross_entropy(logits, y, reduction="sum")), rel=1e-5)
