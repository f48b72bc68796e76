"""The records nested inside messages, and the size limits of each channel."""

from __future__ import annotations

from dataclasses import dataclass

from leptonrt.config import TrainJob   # a job's settings travel inside Submit and JobSpec
from leptonrt.errors import ProtocolError
from leptonrt.wire import Limits, given, required

# clients -> the service: small requests only
CLIENT_LIMITS = Limits(frame_bytes=64 * 1024, frames=2, array_len=4096, map_len=64)
# the service -> clients: snapshots, results, weights in chunks of WEIGHTS_CHUNK
SERVICE_LIMITS = Limits(frame_bytes=4 * 1024 * 1024, frames=2, array_len=65536, map_len=4096)
# the broker <-> its actors (and their rendezvous store)
ACTOR_LIMITS = Limits(frame_bytes=1024 * 1024, frames=2, array_len=16384, map_len=64)
WEIGHTS_CHUNK = 1024 * 1024
MAX_REPORT_STEPS = 1024   # steps in one Reports message


@dataclass(frozen=True, slots=True)
class ArrayRef:
    """One array in the shared-memory dataset cache."""
    segment: str = required(min_len=1, max_len=255)  # name of the shared-memory segment file
    dtype: str = required(choices=frozenset({"float32", "int64"}))  # element type
    shape: list[int] = required(min_len=1, max_len=4, item_min=0)  # size of each dimension


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """A dataset loaded into shared memory, as train and test arrays."""
    spec: str = required(min_len=1, max_len=4096)  # the dataset spec it was loaded from
    n_features: int = required(min=1)  # width of one input row
    n_classes: int = required(min=2)  # number of target classes
    x_train: ArrayRef  # training inputs
    y_train: ArrayRef  # training labels
    x_test: ArrayRef  # test inputs
    y_test: ArrayRef  # test labels


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What the actors train, as the broker tells them."""
    job_id: int = required(min=0)  # id the broker gave the job
    job: TrainJob  # the job's settings (checkpoint_dir resolved by the broker; save always empty)
    fingerprint: str = given("", max_len=64)  # identifies the job's mathematics, for checkpoints


@dataclass(frozen=True, slots=True)
class StepStat:
    """One step's measurement from one actor."""
    step: int = required(min=0)  # global step index
    rows: int = required(min=0)  # rows of the batch this actor processed
    compute_s: float = required(min=0.0)  # seconds of forward+backward before the all-reduce
    step_s: float = required(min=0.0)  # seconds of the whole step incl. all-reduce and optimizer
    simulated_s: float = required(min=0.0)  # part of compute_s that was an injected (simulated) wait
    version: int = given(0, min=0)  # the version of the split the step used (see Grant)
    collective_s: float = given(0.0, min=0.0)  # seconds in the gradient sum (waiting for the others included)
    start: int = given(0, min=0)  # the piece of the global batch it trained: positions [start, stop)
    stop: int = given(0, min=0)

    def check(self) -> None:
        if self.stop < self.start:
            raise ProtocolError(f"piece [{self.start}, {self.stop}) is backwards")
