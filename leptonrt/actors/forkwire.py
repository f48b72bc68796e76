"""What a broker and its fork server say to each other over the pipes between them.

The broker (``forked.ForkServer``) writes requests to the server's stdin; the server
(``python -m leptonrt.actors.forkserver``) writes reports to its stdout. A frame is a
4-byte big-endian length, then ``msgpack([kind, {field: value}])``, checked field by field
with the wire's own rules (``leptonrt/wire.py``). These records are not in
``leptonrt/messages/``: they never cross a socket, only two pipes between a broker and
the process it started, and no client sees them.

A process is named by the broker's serial number ``n`` for it, never by its pid: only
the server, its parent, can tell a live child's pid from a reused one, so every signal
goes through the server.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack

from ..errors import InternalError, ProtocolError
from ..wire import Limits, describe, given, record_from_map, record_to_map, required, rules, unpack

LIMITS = Limits(frame_bytes=1 << 20, frames=1, array_len=65536, map_len=16)
_HEADER = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Fork:
    """Broker -> server: fork one actor process."""
    n: int = required(min=0)  # the broker's serial number for this process (never reused)
    actor_id: str = required(min_len=1, max_len=64)  # --actor-id
    device: str = required(min_len=1, max_len=64)  # --device ("cpu", "cuda:0")
    threads: int = required(min=1, max=4096)  # --threads (torch intra-op threads)
    env: tuple[str, ...] = required(max_len=65536)  # NAME=value: set in its environment (the server's)
    log: str = required(min_len=1, max_len=4096)  # the file its stdout and stderr go to
    unset: tuple[str, ...] = given((), max_len=65536)  # names removed from its environment
    cores: tuple[int, ...] | None = given(None, min_len=1, max_len=4096, item_min=0)  # its CPU affinity

    def check(self) -> None:
        if any("=" not in item for item in self.env):
            raise ProtocolError("env: every item must be NAME=value")


@dataclass(frozen=True, slots=True)
class Signal:
    """Broker -> server: send signal ``signum`` to process ``n``, if it has not been reaped."""
    n: int = required(min=0)
    signum: int = required(min=1, max=64)


@dataclass(frozen=True, slots=True)
class Pin:
    """Broker -> server: move every thread of process ``n`` onto ``cores``."""
    n: int = required(min=0)
    cores: tuple[int, ...] = required(min_len=1, max_len=4096, item_min=0)


@dataclass(frozen=True, slots=True)
class Forked:
    """Server -> broker: process ``n`` runs, as ``pid``."""
    n: int = required(min=0)
    pid: int = required(min=1)


@dataclass(frozen=True, slots=True)
class Exited:
    """Server -> broker: process ``n`` ended and was reaped."""
    n: int = required(min=0)
    code: int = required(min=-64, max=255)  # its exit code, or minus the signal that killed it (as Popen's)


REQUESTS = (Fork, Signal, Pin)
REPORTS = (Forked, Exited)
_KINDS = {cls.__name__: cls for cls in REQUESTS + REPORTS}


def encode(record: Fork | Signal | Pin | Forked | Exited) -> bytes:
    """One frame, its length first."""
    cls = type(record)
    if _KINDS.get(cls.__name__) is not cls:
        raise InternalError(f"not a fork server record: {describe(record)}")
    try:
        body = msgpack.packb([cls.__name__, record_to_map(cls, record, cls.__name__)], use_bin_type=True)
    except ProtocolError as exc:
        raise InternalError(f"refusing to send an invalid record: {exc}") from exc
    return _HEADER.pack(len(body)) + body


class Reader:
    """Turns the bytes of a pipe into records of the ``kinds`` one side accepts."""

    def __init__(self, kinds: tuple[type, ...]) -> None:
        self.kinds = {cls.__name__: cls for cls in kinds}
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list:
        """The records ``data`` completes (a frame may span reads); ProtocolError on a bad one."""
        self._buffer += data
        out = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > LIMITS.frame_bytes:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit of {LIMITS.frame_bytes}")
            if len(self._buffer) < _HEADER.size + length:
                break
            frame = bytes(self._buffer[_HEADER.size:_HEADER.size + length])
            del self._buffer[:_HEADER.size + length]
            out.append(self._decode(frame))
        return out

    def _decode(self, frame: bytes):
        envelope = unpack(frame, LIMITS)
        if not isinstance(envelope, list) or len(envelope) != 2:
            raise ProtocolError(f"a frame must be [kind, fields], got {describe(envelope)}")
        kind, fields = envelope
        cls = self.kinds.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ProtocolError(f"unexpected record kind {describe(kind)}")
        return record_from_map(cls, fields, kind)


for _kind in _KINDS.values():
    rules(_kind)  # compile every schema at import, so a mistake in one fails loudly here
del _kind
