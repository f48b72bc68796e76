"""The settings of one training job, validated once, before anything starts."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainJob:
    """One training job: what to train, on what data, for how long."""

    dataset: str = "digits"                 # dataset spec: digits, mnist:DIR, npz:PATH, synthetic:N,D,C
    hidden: tuple[int, ...] = (128,)        # hidden layer widths; input/output widths come from the data
    epochs: int = 10                        # passes over the training split
    batch_size: int = 64                    # global batch, split across actors
    lr: float = 1e-3                        # learning rate
    optimizer: str = "adam"                 # adam | adamw | sgd
    momentum: float = 0.9                   # SGD momentum (ignored by adam/adamw)
    weight_decay: float = 0.0               # L2 / decoupled decay
    precision: str = "auto"                 # auto | fp32 | bf16 | fp16
    seed: int = 0                           # seeds init, permutations and the data split
    test_fraction: float = 0.2              # held-out share when the data has no test split
    split: tuple[float, ...] | None = None  # fixed shares per actor (e.g. 0.7,0.3); None = even
    rebalance: bool = True                  # let the planner resize shares (off when split is fixed)
    align: int = 8                          # shares move in units of this many rows
    slowdowns: tuple[tuple[int, float, int, int | None], ...] = ()  # SIMULATED stragglers: (rank, factor, from, to)
    save: str | None = None                 # write final weights here (safetensors)
    checkpoint_dir: str | None = None       # rank 0 writes checkpoints here...
    checkpoint_every: int = 0               # ...every this many steps (0: never)
    resume: bool = False                    # start from the newest complete checkpoint in checkpoint_dir
    max_restarts: int = 3                   # replacements per actor within restart_window_s
    restart_window_s: float = 60.0

    def fingerprint(self) -> str:
        """What fixes the mathematics of the run: a checkpoint only resumes a job with the same."""
        from .nn.checkpoint import job_fingerprint
        return job_fingerprint({"dataset": self.dataset, "hidden": list(self.hidden), "batch_size": self.batch_size,
                                "lr": self.lr, "optimizer": self.optimizer, "momentum": self.momentum,
                                "weight_decay": self.weight_decay, "precision": self.precision, "seed": self.seed,
                                "test_fraction": self.test_fraction})

    @property
    def planned(self) -> bool:
        """Whether the planner may resize shares during this job."""
        return self.rebalance and self.split is None

    def to_dict(self) -> dict:
        """The fields as plain JSON data (what a client sends to a running broker)."""
        from dataclasses import asdict
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        out["split"] = list(self.split) if self.split is not None else None
        out["slowdowns"] = [list(s) for s in self.slowdowns]
        return out

    @classmethod
    def from_dict(cls, data: object) -> "TrainJob":
        """A job from JSON data sent by a client; anything malformed is a ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError("a job must be a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown job setting(s): {', '.join(map(str, unknown))}")
        kinds = {"dataset": str, "epochs": int, "batch_size": int, "lr": (int, float), "optimizer": str,
                 "momentum": (int, float), "weight_decay": (int, float), "precision": str, "seed": int,
                 "test_fraction": (int, float), "rebalance": bool, "align": int, "save": (str, type(None)),
                 "checkpoint_dir": (str, type(None)), "checkpoint_every": int, "resume": bool, "max_restarts": int,
                 "restart_window_s": (int, float)}
        for name, kind in kinds.items():
            if name in data and (not isinstance(data[name], kind) or (kind is int and isinstance(data[name], bool))):
                raise ConfigError(f"job setting {name} has the wrong type: {data[name]!r}")
        try:
            fields = dict(data)
            if "hidden" in fields:
                fields["hidden"] = tuple(int(h) for h in fields["hidden"])
            if fields.get("split") is not None:
                fields["split"] = tuple(float(v) for v in fields["split"])
            if "slowdowns" in fields:
                fields["slowdowns"] = tuple((int(r), float(f), int(a), None if b is None else int(b))
                                            for r, f, a, b in fields["slowdowns"])
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed job: {exc}") from None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "slowdowns", tuple(tuple(s) for s in self.slowdowns))
        if self.split is not None:
            object.__setattr__(self, "split", tuple(float(s) for s in self.split))
        for problem in self._problems():
            raise ConfigError(problem)

    def _problems(self):
        if not self.dataset:
            yield "dataset must not be empty"
        if any(int(h) < 1 for h in self.hidden) or len(self.hidden) > 16:
            yield f"hidden widths must be 1 or more (at most 16 layers), got {list(self.hidden)}"
        if self.epochs < 1:
            yield f"epochs must be at least 1, got {self.epochs}"
        if self.batch_size < 1:
            yield f"batch size must be at least 1, got {self.batch_size}"
        if not 0 < self.lr <= 10:
            yield f"learning rate must be in (0, 10], got {self.lr}"
        if self.optimizer not in OPTIMIZERS:
            yield f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
        if not 0 <= self.momentum <= 1:
            yield f"momentum must be in [0, 1], got {self.momentum}"
        if not 0 <= self.weight_decay <= 10:
            yield f"weight decay must be in [0, 10], got {self.weight_decay}"
        if self.precision not in PRECISIONS:
            yield f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
        if not 0 <= self.seed < 2**63:
            yield f"seed must be in [0, 2**63), got {self.seed}"
        if not 0 < self.test_fraction < 1:
            yield f"test fraction must be in (0, 1), got {self.test_fraction}"
        if self.split is not None and (any(s < 0 for s in self.split) or sum(self.split) <= 0):
            yield f"split shares must be non-negative with a positive sum, got {list(self.split)}"
        if not 1 <= self.align <= max(self.batch_size, 1):
            yield f"alignment must be between 1 and the batch size, got {self.align}"
        if self.checkpoint_every < 0 or (self.checkpoint_every and not self.checkpoint_dir):
            yield f"checkpoints need a directory and a non-negative interval, got {self.checkpoint_dir!r} every {self.checkpoint_every}"
        if self.resume and not self.checkpoint_dir:
            yield "--resume needs --checkpoint-dir"
        if not 0 <= self.max_restarts <= 1000 or not self.restart_window_s > 0:
            yield f"restart budget must be 0..1000 restarts in a positive window, got {self.max_restarts} in {self.restart_window_s}"
        for rank, factor, first, end in self.slowdowns:
            if rank < 0 or not 1 <= factor <= 1000 or first < 0 or (end is not None and end <= first):
                yield f"bad simulated slowdown {rank}={factor}@{first}-{end}"


def parse_slowdown(text: str) -> tuple[int, float, int, int | None]:
    """``RANK=FACTOR`` or ``RANK=FACTOR@FROM-TO`` (global steps, TO exclusive, either may be empty)."""
    try:
        rank, _, rest = text.partition("=")
        factor, _, steps = rest.partition("@")
        first, _, end = steps.partition("-")
        return int(rank), float(factor), int(first or 0), int(end) if end else None
    except ValueError:
        raise ConfigError(f"--simulate-slowdown takes RANK=FACTOR[@FROM-TO], got {text!r}") from None
