"""Clients (``leptonrt train``, ``top``, ``status``, ``leptonrt.connect``) <-> the service."""

from __future__ import annotations

from dataclasses import dataclass

from leptonrt.config import TrainJob
from leptonrt.wire import Plain, given, required

from .records import WEIGHTS_CHUNK


@dataclass(frozen=True, slots=True)
class Submit:
    """Client -> service: queue a job; its updates come back on this connection."""
    job: TrainJob  # the job (its save must be empty: the broker writes no file a client names)
    want_weights: bool = given(False)  # send the final weights back (Weights messages)


@dataclass(frozen=True, slots=True)
class Accepted:
    """Service -> client: the job is queued."""
    job_id: int = required(min=1)  # the broker's id for the job
    ahead: int = required(min=0)  # jobs queued or running before it


@dataclass(frozen=True, slots=True)
class Rejected:
    """Service -> client: the request was refused."""
    message: str = required(max_len=4096)  # why, for the user
    exit_code: int = required(min=1, max=255)  # the exit code the client should end with


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """Service -> client: something happened to a submitted job."""
    job_id: int = required(min=1)
    kind: str = required(choices=frozenset({"epoch", "progress", "split", "lost", "recovered", "finished", "failed"}))
    data: Plain  # the event's fields, or the result


@dataclass(frozen=True, slots=True)
class Weights:
    """Service -> client: a piece of a finished job's weights (a safetensors file), in order,
    before its ``finished`` update."""
    job_id: int = required(min=1)
    offset: int = required(min=0)  # where this piece starts in the file
    total: int = required(min=0)  # the file's length
    data: bytes = required(max_len=WEIGHTS_CHUNK)


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """Client -> service: send me a statistics snapshot."""


@dataclass(frozen=True, slots=True)
class StatusReply:
    """Service -> client: the broker's latest statistics snapshot."""
    snapshot: Plain


@dataclass(frozen=True, slots=True)
class StopRequest:
    """Client -> service: stop the broker cleanly (as a first Ctrl-C on ``leptonrt up`` does) and exit."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Client -> service: cancel a queued job, or stop the running one at a step boundary."""
    job_id: int = required(min=1)  # the broker's id for the job (``leptonrt jobs`` lists them)


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """Service -> client: the request (StopRequest, CancelRequest) is being carried out."""
    message: str = required(max_len=4096)  # what happens now, for the user
