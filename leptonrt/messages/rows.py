"""A streaming host's agent <-> its actors (``join --data stream``): one piece of rows at a time.

The agent holds each actor's rows as the head streams them (``cachefill.BatchRows``); the
actor, over a private ipc socket in the agent's 0700 run directory, asks for the piece it
trains next (``PieceWanted``) and gets it whole (``PieceRows``) once every frame of it has
arrived. Asking is what frees the agent's window: the head sends no more than the actor
consumes.
"""

from __future__ import annotations

from dataclasses import dataclass

from leptonrt.errors import ProtocolError
from leptonrt.wire import Limits, required

from .cachefill import BATCH_FRAME, BATCH_WINDOW

PIECE_BYTES = BATCH_WINDOW * BATCH_FRAME   # the most bytes of rows in one piece (an agent's whole window)
# the agent <-> its actors: one piece and its envelope per frame
ROWS_LIMITS = Limits(frame_bytes=PIECE_BYTES + 64 * 1024, frames=2, array_len=64, map_len=64)


@dataclass(frozen=True, slots=True)
class PieceWanted:
    """Actor -> its agent: send me this piece of this step once it is all there."""
    job_id: int = required(min=0)  # the job (a new one replaces what the agent held for this actor)
    rank: int = required(min=0)  # the actor's rank in the job
    generation: int = required(min=0)  # its group's generation (a newer one drops what the agent held)
    step: int = required(min=0)  # the global step
    start: int = required(min=0)  # the piece: positions [start, stop) of the global batch
    stop: int = required(min=0)
    n_features: int = required(min=1)  # width of one input row
    batch_size: int = required(min=1)  # the job's global batch (the window holds at least one)

    def check(self) -> None:
        if self.stop < self.start:
            raise ProtocolError(f"piece [{self.start}, {self.stop}) is backwards")


@dataclass(frozen=True, slots=True)
class PieceRows:
    """Agent -> its actor: the rows of the piece it asked for."""
    job_id: int = required(min=0)
    rank: int = required(min=0)
    generation: int = required(min=0)
    step: int = required(min=0)
    start: int = required(min=0)
    stop: int = required(min=0)
    x: bytes = required(max_len=PIECE_BYTES)  # float32, C order, (stop - start) x n_features
    y: bytes = required(max_len=PIECE_BYTES)  # int64, (stop - start)

    def check(self) -> None:
        if len(self.y) != 8 * (self.stop - self.start):
            raise ProtocolError(f"{len(self.y)} bytes of labels for piece [{self.start}, {self.stop})")
