"""Batches by value, for a host that cannot hold the data (``join --data stream``): the
head sends each of that host's actors the rows of its granted pieces ahead of need, and
the agent hands them over as the actor asks. No I/O: a shell drives both sides.

Head, one ``BatchFeeder`` per remote actor: ``plan(pieces)`` queues the actor's pieces
(global step, start, stop, as its grants give them) and ``handle(BatchCredit)`` returns the
``BatchRows`` frames the credit allows. A piece is the positions ``[start, stop)`` of global
batch ``t`` of epoch ``e``, so its rows are ``perm_e[t*B + start : t*B + stop]`` where
``order(e)`` gives ``perm_e`` (the shell computes it, as the actors do, from (seed, epoch)).

Every frame of a piece but its last holds exactly ``rows_per_frame(n_features)`` rows
(as many as fit ``BATCH_FRAME``), so both sides know how many frames a piece takes.

Agent, one ``BatchReceiver`` per actor: ``start()`` credits the window, ``handle(BatchRows)``
checks and holds a frame, ``take(step, start, stop)`` returns the piece's rows once they
are all there (None before) and the credit its consumption frees (the agent shell hands
the rows to its actor). Credit comes back only as the actor consumes, so the agent holds
at most ``window`` frames per actor (a frame past that is a ProtocolError), and the head
never sends more than it was credited. The window is at least the frames of a whole
batch, so the piece the actor waits for can always complete.

A regroup rewinds and re-splits the steps: both sides move to the new ``generation``
(``regroup``; the head first, before its Regroup goes out), the receiver drops what it
held and credits the window again, the head forgets its queue and waits for that credit;
frames and credits of an older generation still on their way are dropped where they arrive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from leptonrt.batches import batch_rows, steps_per_epoch
from leptonrt.errors import ConfigError, InternalError, ProtocolError
from leptonrt.messages import BATCH_FRAME, BATCH_WINDOW, BatchCredit, BatchRows, Message

__all__ = ["BatchFeeder", "BatchReceiver", "Rows", "WINDOW", "rows_per_frame"]

WINDOW = 16  # default frames an agent holds per actor: 8 MiB (see BATCH_WINDOW)


def rows_per_frame(n_features: int) -> int:
    """Rows (float32 inputs and an int64 label each) in a full BatchRows frame."""
    row_bytes = n_features * 4 + 8
    if row_bytes > BATCH_FRAME:
        raise ConfigError(f"rows of {row_bytes:,} bytes are too wide to stream (at most {BATCH_FRAME:,})")
    return BATCH_FRAME // row_bytes


@dataclass(frozen=True)
class Rows:
    """One actor's piece of one global batch, as the agent hands it to the actor."""

    step: int  # the global step
    start: int  # positions [start, stop) of the global batch
    stop: int
    x: np.ndarray  # float32, (stop - start, n_features)
    y: np.ndarray  # int64, (stop - start,)


class BatchFeeder:
    """The head's side of one remote actor's rows.

    ``x_train``, ``y_train``: the dataset's training arrays (views of the shared cache);
    ``order(epoch)``: that epoch's permutation of the training rows.
    """

    def __init__(self, job_id: int, rank: int, x_train: np.ndarray, y_train: np.ndarray,
                 order: Callable[[int], np.ndarray], batch_size: int, generation: int = 0) -> None:
        if (x_train.dtype, y_train.dtype) != (np.float32, np.int64):
            raise InternalError(f"rows stream as float32 inputs and int64 labels, "
                                f"not {x_train.dtype} and {y_train.dtype}")
        self._rows_per_frame = rows_per_frame(x_train.shape[1])
        self.job_id, self.rank, self.generation = job_id, rank, generation
        self._x, self._y, self._order, self._batch = x_train, y_train, order, batch_size
        self._spe = steps_per_epoch(len(x_train), batch_size)
        self._queue: deque[tuple[int, int, int, int]] = deque()  # frames to send: step, start, stop, first
        self.credit = 0  # frames it may send now
        self.sent_frames = 0

    def plan(self, pieces: Iterable[tuple[int, int, int]]) -> list[Message]:
        """Queue the actor's next pieces (step, start, stop), in the order it trains them."""
        for step, start, stop in pieces:
            rows = batch_rows(len(self._x), self._batch, step % self._spe)
            if not 0 <= start <= stop <= rows:
                raise InternalError(f"piece [{start}, {stop}) of step {step} is not in its batch of {rows} rows")
            self._queue.extend((step, start, stop, first) for first in range(start, stop, self._rows_per_frame))
        return self._send()

    def handle(self, msg: Message) -> list[Message]:
        """The agent's credit in, the frames it allows out."""
        if not isinstance(msg, BatchCredit) or (msg.job_id, msg.rank) != (self.job_id, self.rank):
            raise ProtocolError(f"the rows of job {self.job_id} rank {self.rank} got {type(msg).__name__} "
                                f"for job {getattr(msg, 'job_id', '?')} rank {getattr(msg, 'rank', '?')}")
        if msg.generation != self.generation:
            return []  # meant for another generation: spent or not yet due
        if self.credit + msg.frames > BATCH_WINDOW:
            raise ProtocolError(f"credit of {self.credit} + {msg.frames} frames exceeds the window of {BATCH_WINDOW}")
        self.credit += msg.frames
        return self._send()

    def regroup(self, generation: int) -> None:
        """The group re-formed: forget the queue and the credit; plan the new steps."""
        self._queue.clear()
        self.credit, self.generation = 0, generation

    def _send(self) -> list[Message]:
        out: list[Message] = []
        while self.credit and self._queue:
            step, start, stop, first = self._queue.popleft()
            rows = self._positions(step, first, min(first + self._rows_per_frame, stop))
            out.append(BatchRows(job_id=self.job_id, rank=self.rank, generation=self.generation, step=step,
                                 start=start, stop=stop, first=first, x=self._x[rows].tobytes(),
                                 y=self._y[rows].tobytes()))
            self.credit, self.sent_frames = self.credit - 1, self.sent_frames + 1
        return out

    def _positions(self, step: int, first: int, stop: int) -> np.ndarray:
        """Row indices of positions [first, stop) of global batch ``step``."""
        epoch, t = divmod(step, self._spe)
        return self._order(epoch)[t * self._batch + first: t * self._batch + stop]


@dataclass
class _Held:
    frames: list[BatchRows]
    next: int  # the position the next frame must start at


class BatchReceiver:
    """The agent's side of one actor's rows: holds at most ``window`` frames, and at least
    a whole batch's (a ConfigError when that is more than ``BATCH_WINDOW``)."""

    def __init__(self, job_id: int, rank: int, n_features: int, batch_size: int, *, window: int = WINDOW,
                 generation: int = 0) -> None:
        self._rows_per_frame = rows_per_frame(n_features)
        whole = -(-batch_size // self._rows_per_frame)
        if whole > BATCH_WINDOW:
            raise ConfigError(f"a batch of {batch_size:,} rows of {n_features:,} features takes {whole} frames to "
                              f"stream; an agent holds at most {BATCH_WINDOW} per actor (use a smaller batch "
                              f"or the per-host cache)")
        if not 1 <= window <= BATCH_WINDOW:
            raise InternalError(f"a window of {window} frames is outside 1..{BATCH_WINDOW}")
        self.job_id, self.rank, self.generation = job_id, rank, generation
        self._n_features, self.window = n_features, max(window, whole)
        self._pieces: dict[tuple[int, int, int], _Held] = {}
        self._held = 0  # frames held, complete pieces or not

    def start(self) -> list[Message]:
        """The first credit: the whole window."""
        return [self._credit(self.window)]

    def handle(self, msg: Message) -> list[Message]:
        """Check and hold one frame; nothing to send (credit comes from ``take``)."""
        if not isinstance(msg, BatchRows) or (msg.job_id, msg.rank) != (self.job_id, self.rank):
            raise ProtocolError(f"the rows of job {self.job_id} rank {self.rank} got {type(msg).__name__} "
                                f"for job {getattr(msg, 'job_id', '?')} rank {getattr(msg, 'rank', '?')}")
        if msg.generation < self.generation:
            return []  # planned before the regroup: not what the actor will ask for
        where = f"rows [{msg.first}, ...) of step {msg.step} piece [{msg.start}, {msg.stop})"
        if msg.generation > self.generation:
            raise ProtocolError(f"{where} are of generation {msg.generation}; this actor is in {self.generation}")
        if self._held == self.window:
            raise ProtocolError(f"{where} came beyond the {self.window} frames credited")
        rows = len(msg.y) // 8
        if len(msg.x) != rows * self._n_features * 4:
            raise ProtocolError(f"{where}: {len(msg.x)} bytes of inputs for {rows} rows of "
                                f"{self._n_features} float32 features")
        if rows != min(self._rows_per_frame, msg.stop - msg.first):
            raise ProtocolError(f"{where} hold {rows} rows, not {min(self._rows_per_frame, msg.stop - msg.first)}")
        held = self._pieces.setdefault((msg.step, msg.start, msg.stop), _Held([], msg.start))
        if msg.first != held.next:
            raise ProtocolError(f"{where} are out of order: expected position {held.next}")
        held.frames.append(msg)
        held.next += rows
        self._held += 1
        return []

    def take(self, step: int, start: int, stop: int) -> tuple[Rows | None, list[Message]]:
        """The piece's rows if they have all arrived (None if not yet), and the credit to
        send. Pieces of earlier steps, or of this step split otherwise, are dropped: the
        actor has moved past them."""
        if start == stop:
            empty = Rows(step, start, stop, np.empty((0, self._n_features), np.float32), np.empty(0, np.int64))
            return empty, self._release(lambda key: key[0] < step)
        credit = self._release(lambda key: key[0] < step or (key[0] == step and key != (step, start, stop)))
        held = self._pieces.get((step, start, stop))
        if held is None or held.next < stop:
            return None, credit
        del self._pieces[(step, start, stop)]
        self._held -= len(held.frames)
        x = np.frombuffer(b"".join(f.x for f in held.frames), np.float32).reshape(stop - start, self._n_features)
        y = np.frombuffer(b"".join(f.y for f in held.frames), np.int64)
        return Rows(step, start, stop, x, y), [self._credit(len(held.frames) + _frames_in(credit))]

    def regroup(self, generation: int) -> list[Message]:
        """The group re-formed: drop everything held and credit the whole window again."""
        self._pieces.clear()
        self._held, self.generation = 0, generation
        return self.start()

    def _release(self, stale: Callable[[tuple[int, int, int]], bool]) -> list[Message]:
        freed = 0
        for key in [k for k in self._pieces if stale(k)]:
            freed += len(self._pieces.pop(key).frames)
        self._held -= freed
        return [self._credit(freed)] if freed else []

    def _credit(self, frames: int) -> BatchCredit:
        return BatchCredit(job_id=self.job_id, rank=self.rank, generation=self.generation, frames=frames)


def _frames_in(credit: list[Message]) -> int:
    return sum(m.frames for m in credit if isinstance(m, BatchCredit))
