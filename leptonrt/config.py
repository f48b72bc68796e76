"""The settings of one training job, validated once, before anything starts.

``TrainJob`` is a wire record (``leptonrt.messages`` sends it inside ``Submit`` and
``JobSpec``): the rules that check it here are the rules the wire enforces, so anything a
user can build can be sent to a broker.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError, ProtocolError
from .imports import check_ref
from .wire import given, record_to_map, required

OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

__all__ = ["OPTIMIZERS", "PRECISIONS", "Slowdown", "TrainJob", "parse_slowdown"]


@dataclass(frozen=True, slots=True)
class Slowdown:
    """A simulated straggler (for tests and benchmarks), always labelled as simulated."""
    rank: int = required(min=0, max=4095)  # rank that is slowed
    factor: float = required(min=1.0, max=1000.0)  # its steps take this many times their compute time
    from_step: int = required(min=0, max=2**62)  # first global step slowed
    to_step: int | None = required(min=1, max=2**62)  # one past the last slowed step; None: to the end

    def check(self) -> None:
        if self.to_step is not None and self.to_step <= self.from_step:
            raise ProtocolError(f"to_step {self.to_step} is not above from_step {self.from_step}")


@dataclass(frozen=True, slots=True)
class TrainJob:
    """One training job: what to train, on what data, for how long. Every setting is checked
    here, by the same rules the wire enforces, so a job that can be built can be sent."""

    dataset: str = given("digits", min_len=1, max_len=4096)  # digits, mnist:DIR, npz:PATH, csv:PATH, parquet:PATH, py:pkg.mod:function, synthetic:N,D,C
    hidden: tuple[int, ...] = given((128,), min_len=1, max_len=16, item_min=1, item_max=65536)  # hidden widths
    model: str | None = given(None, min_len=3, max_len=256)  # package.module:factory; None: the built-in MLP
    loss: str | None = given(None, min_len=3, max_len=256)  # package.module:function; None: cross-entropy
    epochs: int = given(10, min=1, max=1_000_000)  # passes over the training split
    batch_size: int = given(64, min=1, max=10_000_000)  # global batch, split across actors
    lr: float = given(1e-3, min=1e-12, max=10.0)  # learning rate
    optimizer: str = given("adam", choices=frozenset(OPTIMIZERS))  # adam | adamw | sgd
    momentum: float = given(0.9, min=0.0, max=1.0)  # SGD momentum (ignored by adam/adamw)
    weight_decay: float = given(0.0, min=0.0, max=10.0)  # L2 / decoupled decay
    precision: str = given("auto", choices=frozenset(PRECISIONS))  # auto | fp32 | bf16 | fp16
    seed: int = given(0, min=0, max=2**63 - 1)  # seeds init, permutations and the data split
    test_fraction: float = given(0.2, min=1e-6, max=1 - 1e-6)  # held-out share when the data has no test split
    label_column: str = given("label", min_len=1, max_len=256)  # the class-id column of a csv/parquet table; printable
    split: tuple[float, ...] | None = given(None, min_len=1, max_len=4096, item_min=0.0, item_max=1e9)  # fixed shares; None: even
    rebalance: bool = given(True)  # let the planner resize shares (off when split is fixed)
    align: int = given(8, min=1, max=10_000_000)  # shares move in units of this many rows
    slowdowns: tuple[Slowdown, ...] = given((), max_len=64)  # SIMULATED stragglers
    save: str | None = given(None, min_len=1, max_len=4096)  # write final weights here (local jobs only)
    checkpoint_dir: str | None = given(None, min_len=1, max_len=4096)  # where the leader writes checkpoints...
    checkpoint_every: int = given(0, min=0, max=2**62)  # ...every this many steps (0: never)
    resume: bool = given(False)  # start from the newest complete checkpoint in checkpoint_dir
    max_restarts: int = given(3, min=0, max=1000)  # replacements per actor within restart_window_s
    restart_window_s: float = given(60.0, min=0.001, max=86400.0)
    hang_timeout_s: float = given(3.0, min=0.1, max=3600.0)  # an actor silent this long is taken for hung

    def __post_init__(self) -> None:
        # the Python API takes lists and bare tuples too; the record holds its own types
        if not isinstance(self.hidden, tuple) and isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))
        if isinstance(self.split, list):
            object.__setattr__(self, "split", tuple(self.split))
        if isinstance(self.slowdowns, (list, tuple)):
            object.__setattr__(self, "slowdowns", tuple(
                s if isinstance(s, Slowdown) or not isinstance(s, (list, tuple)) else Slowdown(*s)
                for s in self.slowdowns))
        try:
            record_to_map(TrainJob, self, "TrainJob")
        except ProtocolError as exc:
            text = str(exc).removeprefix("TrainJob: ")   # a rule across fields says what it is about
            raise ConfigError(text.replace("TrainJob.", "job setting ", 1)) from None

    def check(self) -> None:
        """Rules across fields: each is a user's mistake, named plainly."""
        if not self.label_column.isprintable():   # it is named in one-line errors
            raise ProtocolError(f"label column {self.label_column!r} holds control characters")
        for ref, option in self.named_code():
            try:
                check_ref(ref, option)
            except ConfigError as exc:
                raise ProtocolError(str(exc)) from None
        if self.split is not None and not sum(self.split) > 0:
            raise ProtocolError(f"split shares must have a positive sum, got {list(self.split)}")
        if self.align > self.batch_size:
            raise ProtocolError(f"alignment {self.align} is above the batch size {self.batch_size}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ProtocolError("checkpoints (checkpoint_every) need a checkpoint directory")
        if self.resume and not self.checkpoint_dir:
            raise ProtocolError("resume needs a checkpoint directory")

    def named_code(self) -> tuple[tuple[str, str], ...]:
        """(package.module:callable, the option that names it) for each piece of code the job
        asks to run: its ``py:`` dataset, its model, its loss."""
        scheme, sep, ref = self.dataset.partition(":")
        data = ((ref, "--dataset py:"),) if sep and scheme == "py" else ()
        return data + tuple((r, option) for r, option in ((self.model, "--model"), (self.loss, "--loss"))
                            if r is not None)

    @property
    def planned(self) -> bool:
        """Whether the planner may resize shares during this job."""
        return self.rebalance and self.split is None

    def fingerprint(self) -> str:
        """What fixes the mathematics of the run: a checkpoint only resumes a job with the same."""
        import hashlib
        import json
        fields = {"dataset": self.dataset, "hidden": list(self.hidden), "batch_size": self.batch_size,
                  "lr": self.lr, "optimizer": self.optimizer, "momentum": self.momentum,
                  "weight_decay": self.weight_decay, "precision": self.precision, "seed": self.seed,
                  "test_fraction": self.test_fraction}
        # named code changes the mathematics; left out when unset, so older checkpoints still match
        fields.update({k: v for k, v in (("model", self.model), ("loss", self.loss)) if v is not None})
        if self.label_column != "label":   # left out at its default: older checkpoints still resume
            fields["label_column"] = self.label_column
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def check_world(self, world: int) -> None:
        """Rules that need the number of actors (known where the job runs): ConfigError."""
        if self.split is not None and len(self.split) != world:
            raise ConfigError(f"--split gives {len(self.split)} shares but there are {world} actors")
        for s in self.slowdowns:
            if s.rank >= world:
                raise ConfigError(f"--simulate-slowdown names rank {s.rank}, but the ranks are 0..{world - 1}")


def parse_slowdown(text: str) -> Slowdown:
    """``RANK=FACTOR`` or ``RANK=FACTOR@FROM-TO`` (global steps, TO exclusive, either may be empty)."""
    try:
        rank, _, rest = text.partition("=")
        factor, _, steps = rest.partition("@")
        first, _, end = steps.partition("-")
        values = int(rank), float(factor), int(first or 0), int(end) if end else None
    except ValueError:
        raise ConfigError(f"--simulate-slowdown takes RANK=FACTOR[@FROM-TO], got {text!r}") from None
    try:
        return Slowdown(*values)
    except TypeError:
        raise ConfigError(f"--simulate-slowdown takes RANK=FACTOR[@FROM-TO], got {text!r}") from None
