"""A job's model and loss: the built-in MLP by default, a user's factory and loss by
reference, and each unusable one refused in one line before a step is trained."""

import sys
import textwrap

import pytest
import torch

from leptonrt.errors import ConfigError
from leptonrt.nn.model import batch_loss, build_mlp, build_model, load_loss

CPU = torch.device("cpu")

USER_CODE = """
import torch
from torch import nn

def build(n_features, n_classes):
    return nn.Sequential(nn.Linear(n_features, 16), nn.Tanh(), nn.Linear(16, n_classes))

def wide(n_features, n_classes):
    return nn.Linear(n_features, n_classes + 1)

def integer(n_features, n_classes):
    return 3

def frozen(n_features, n_classes):
    m = nn.Linear(n_features, n_classes)
    m.requires_grad_(False)
    return m

def fails(n_features, n_classes):
    raise RuntimeError("needs a GPU")

class Crashes(nn.Module):
    def __init__(self, n_features, n_classes):
        super().__init__()
        self.lin = nn.Linear(n_features + 1, n_classes)
    def forward(self, x):
        return self.lin(x)

def squared(logits, targets):
    return (logits - nn.functional.one_hot(targets, logits.shape[1])).pow(2).sum(1)

def mean(logits, targets):
    return nn.functional.cross_entropy(logits, targets)
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    (tmp_path / "user_models_t.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_models_t"
    sys.modules.pop("user_models_t", None)


def test_the_default_is_the_seeded_mlp_bit_for_bit():
    built = build_model(8, 3, hidden=[5], seed=4, model=None, device=CPU)
    for a, b in zip(built.parameters(), build_mlp(8, [5], 3, 4).parameters()):
        assert torch.equal(a, b)


def test_a_factory_builds_the_model_from_the_jobs_seed(user_models):
    first = build_model(8, 3, hidden=[5], seed=4, model=f"{user_models}:build", device=CPU)
    again = build_model(8, 3, hidden=[5], seed=4, model=f"{user_models}:build", device=CPU)
    other = build_model(8, 3, hidden=[5], seed=5, model=f"{user_models}:build", device=CPU)
    assert first(torch.zeros(2, 8)).shape == (2, 3)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))


@pytest.mark.parametrize("name, says", [
    ("wide", "maps a (2, 8) batch to (2, 4); it must return float logits of shape (2, 3)"),
    ("integer", "returned an object of type int, not a torch.nn.Module"),
    ("frozen", "has no trainable parameters"),
    ("fails", "the factory failed: RuntimeError: needs a GPU"),
    ("Crashes", "fails on a (2, 8) float batch: RuntimeError"),
    ("missing", "has no attribute missing"),
])
def test_an_unusable_factory_is_one_line_naming_it(user_models, name, says):
    with pytest.raises(ConfigError) as err:
        build_model(8, 3, hidden=[5], seed=0, model=f"{user_models}:{name}", device=CPU)
    text = str(err.value)
    assert text.startswith(f"--model {user_models}:{name}: ") and says in text and "\n" not in text


def test_a_loss_must_give_per_sample_losses_that_are_summed(user_models):
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.equal(batch_loss(None, logits, targets),
                       torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
    squared = load_loss(f"{user_models}:squared")
    expected = (logits - torch.nn.functional.one_hot(targets, 3)).pow(2).sum()
    assert torch.allclose(batch_loss(squared, logits, targets), expected)
    with pytest.raises(ConfigError, match=r"must return the per-sample losses, shape \(4,\)"):
        batch_loss(load_loss(f"{user_models}:mean"), logits, targets)
