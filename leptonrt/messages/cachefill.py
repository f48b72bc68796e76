"""Head <-> host agent: filling the agent's dataset cache once, in credited chunks; or, for
a host that cannot hold the data, sending each actor the rows of its steps.

The head offers a dataset (``CacheOffer``: its content fingerprint and each array's size
and SHA-256); the agent answers ``CacheHave`` (it holds exactly that, nothing is sent) or
``CacheCredit`` (send me this many more chunks); the head sends ``CacheChunk``s in order,
never more than it was credited, then ``CacheDone``; the agent checks every hash and
answers ``CacheHave``, or ``CacheRefused`` at any point. The rules the two sides follow
are ``leptonrt.data.transfer``'s; these are only the records.

Batches by value (``leptonrt.data.stream``): the agent credits an actor's frames
(``BatchCredit``) as its actor consumes them; the head sends the rows of that actor's
granted pieces (``BatchRows``), in order, within the credit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from leptonrt.errors import ProtocolError
from leptonrt.wire import required

# Bytes of array data in one CacheChunk: half the frame limit of a channel like the actors'
# (1 MiB), so a chunk plus its envelope always fits one frame with room to spare.
CACHE_CHUNK = 512 * 1024
# Most chunks credited and not yet received: CACHE_WINDOW * CACHE_CHUNK = 8 MiB in flight
# per host, which keeps a 1 Gbit/s link busy at up to ~64 ms of round trip while bounding
# what the sockets between the two sides may hold.
CACHE_WINDOW = 16
# Largest array an offer may name (1 TiB): the agent's budget refuses far less, this only
# keeps sizes in a range where arithmetic on them is exact.
MAX_ARRAY_BYTES = 1 << 40
CACHE_ARRAYS = ("x_train", "y_train", "x_test", "y_test")  # the arrays of an offer, in this order
_DTYPES = {"x_train": "float32", "y_train": "int64", "x_test": "float32", "y_test": "int64"}
_ITEMSIZE = {"float32": 4, "int64": 8}
_HEX = frozenset("0123456789abcdef")
_FINGERPRINT = {"min_len": 64, "max_len": 64}


@dataclass(frozen=True, slots=True)
class CacheArray:
    """One array of an offered dataset, as the head holds it."""
    name: str = required(choices=frozenset(CACHE_ARRAYS))  # which array of the dataset
    dtype: str = required(choices=frozenset(_ITEMSIZE))  # element type
    shape: list[int] = required(min_len=1, max_len=2, item_min=0, item_max=MAX_ARRAY_BYTES)  # size of each dimension
    nbytes: int = required(min=0, max=MAX_ARRAY_BYTES)  # its length in bytes: the product of shape times the item size
    sha256: str = required(**_FINGERPRINT)  # lowercase hex SHA-256 of its bytes in C order

    def check(self) -> None:
        if set(self.sha256) - _HEX:
            raise ProtocolError(f"{self.name}: sha256 {self.sha256!r} is not lowercase hex")
        if self.dtype != _DTYPES[self.name]:
            raise ProtocolError(f"{self.name} must be {_DTYPES[self.name]}, not {self.dtype}")
        if math.prod(self.shape) * _ITEMSIZE[self.dtype] != self.nbytes:
            raise ProtocolError(f"{self.name} of shape {self.shape} and dtype {self.dtype} "
                                f"cannot hold {self.nbytes} bytes")


@dataclass(frozen=True, slots=True)
class CacheOffer:
    """Head -> agent: this dataset is wanted on your host; do you have it?"""
    fingerprint: str = required(**_FINGERPRINT)  # SHA-256 of the rest of the offer (see transfer.fingerprint)
    spec: str = required(min_len=1, max_len=4096)  # the dataset spec it was loaded from
    n_features: int = required(min=1)  # width of one input row
    n_classes: int = required(min=2)  # number of target classes
    arrays: list[CacheArray] = required(min_len=4, max_len=4)  # x_train, y_train, x_test, y_test, in that order
    chunk_bytes: int = required(min=1, max=CACHE_CHUNK)  # every CacheChunk but an array's last holds this many bytes

    def check(self) -> None:
        """The four arrays, in order, shaped as one dataset: (n, features) inputs and (n,)
        labels, with at least one row in the test split, and in the training split but in
        the test split's own offer (for a host that streams its training rows)."""
        if tuple(a.name for a in self.arrays) != CACHE_ARRAYS:
            raise ProtocolError(f"arrays must be {', '.join(CACHE_ARRAYS)} in that order")
        for (x, y), least in ((self.arrays[0:2], 0), (self.arrays[2:4], 1)):
            if len(x.shape) != 2 or x.shape[1] != self.n_features or y.shape != x.shape[:1] or y.shape[0] < least:
                raise ProtocolError(f"{x.name} {x.shape} and {y.name} {y.shape} are not "
                                    f"(rows >= {least}, {self.n_features}) inputs and (rows,) labels")


@dataclass(frozen=True, slots=True)
class CacheHave:
    """Agent -> head: I hold this dataset, checked: send nothing (more)."""
    fingerprint: str = required(**_FINGERPRINT)  # the offer's


@dataclass(frozen=True, slots=True)
class CacheCredit:
    """Agent -> head: send up to this many more chunks."""
    fingerprint: str = required(**_FINGERPRINT)  # the offer's
    chunks: int = required(min=1, max=CACHE_WINDOW)  # more chunks the head may send now


@dataclass(frozen=True, slots=True)
class CacheChunk:
    """Head -> agent: the next bytes of one array, in order."""
    fingerprint: str = required(**_FINGERPRINT)  # the offer's
    array: str = required(choices=frozenset(CACHE_ARRAYS))  # which array they belong to
    offset: int = required(min=0, max=MAX_ARRAY_BYTES)  # where they start in it
    data: bytes = required(min_len=1, max_len=CACHE_CHUNK)  # the offer's chunk_bytes, fewer only at an array's end


@dataclass(frozen=True, slots=True)
class CacheDone:
    """Head -> agent: every chunk of the offer has been sent."""
    fingerprint: str = required(**_FINGERPRINT)  # the offer's


@dataclass(frozen=True, slots=True)
class CacheRefused:
    """Agent -> head: this host will not hold the dataset (no room, a bad chunk, a hash mismatch)."""
    fingerprint: str = required(**_FINGERPRINT)  # the offer's
    message: str = required(max_len=4096)  # why, for the user
    exit_code: int = required(min=1, max=255)  # the exit code of the error that refused it


# Bytes of rows (inputs and labels) in one BatchRows, for the same reason as CACHE_CHUNK.
BATCH_FRAME = 512 * 1024
# Most BatchRows frames an agent holds for one actor, not yet consumed: BATCH_WINDOW *
# BATCH_FRAME = 32 MiB at most (the default window, 16 frames, is 8 MiB: two steps and a
# half of MNIST rows at batch 1024 on one actor).
BATCH_WINDOW = 64


@dataclass(frozen=True, slots=True)
class BatchRows:
    """Head -> agent: rows of one actor's piece of a global batch, in order."""
    job_id: int = required(min=0)  # the job the step belongs to
    rank: int = required(min=0)  # the actor they are for
    generation: int = required(min=0)  # the group generation they were planned in (older ones are dropped)
    step: int = required(min=0)  # the global step
    start: int = required(min=0)  # the piece: positions [start, stop) of the global batch
    stop: int = required(min=1)  # one past the piece's last position
    first: int = required(min=0)  # the position of this frame's first row, start <= first < stop
    x: bytes = required(max_len=BATCH_FRAME)  # the rows' inputs: float32, C order, rows x n_features
    y: bytes = required(min_len=8, max_len=BATCH_FRAME)  # the rows' labels: int64 (so rows = len(y) / 8)

    def check(self) -> None:
        rows, odd = divmod(len(self.y), 8)
        if odd or not self.start <= self.first < self.first + rows <= self.stop:
            raise ProtocolError(f"rows [{self.first}, {self.first + len(self.y) / 8:g}) do not lie in the piece "
                                f"[{self.start}, {self.stop}) of step {self.step}")
        if len(self.x) + len(self.y) > BATCH_FRAME:
            raise ProtocolError(f"{len(self.x) + len(self.y)} bytes of rows exceed the frame's {BATCH_FRAME}")


@dataclass(frozen=True, slots=True)
class BatchCredit:
    """Agent -> head: send up to this many more BatchRows frames for this actor."""
    job_id: int = required(min=0)  # the job
    rank: int = required(min=0)  # the actor it is for
    generation: int = required(min=0)  # the group generation it is for (an older one is ignored)
    frames: int = required(min=1, max=BATCH_WINDOW)  # more frames the head may send
