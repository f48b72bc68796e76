"""Every message that crosses a socket, and its versioned msgpack encoding: the wire.

A frame is ``msgpack([VERSION, kind, {field: value}])``; ``kind`` is the class name and
nested records are maps too. No I/O here: socket loops call ``encode`` and ``decode``.
docs/protocol.md describes the same rules for someone writing a client.

Validation is generic (``leptonrt/wire.py``), driven by each field's annotation and the
ranges in its metadata. A bad incoming frame is the peer's fault (``ProtocolError``); an
invalid outgoing message is our bug (``InternalError``). A frame longer than its channel's
``Limits`` is refused unread.

The schemas live by who speaks them: ``records`` (nested records, each channel's limits),
``actors`` (broker <-> actors, and the rendezvous store), ``clients`` (clients <-> the
service), ``cachefill`` (the head <-> a host agent: filling its dataset cache, or
streaming rows), ``hosts`` (host agents <-> the head: joining, their actors, liveness), ``rows`` (a
streaming host's agent <-> its actors).
This module is the one door: the message union, ``encode`` and ``decode``.
"""

from __future__ import annotations

import typing
from typing import Any, Union

import msgpack

from leptonrt.errors import InternalError, ProtocolError
from leptonrt.wire import Limits, describe, record_from_map, record_to_map, rules, unpack

from .actors import (Hello, Welcome, Grant, Reports, EpochResult, Stop, Finished, Failure, Heartbeat,
    GroupFailed, Resplit, Threads, Regroup, Standby, CheckpointNow, Checkpointed, Adopt, Release, Shutdown,
    StoreRequest, StoreReply)
from .cachefill import (BATCH_FRAME, BATCH_WINDOW, CACHE_ARRAYS, CACHE_CHUNK, CACHE_WINDOW, BatchCredit,
    BatchRows, CacheArray, CacheChunk, CacheCredit, CacheDone, CacheHave, CacheOffer, CacheRefused)
from .clients import (Submit, Accepted, Rejected, JobUpdate, Weights, StatusRequest, StatusReply,
    StopRequest, CancelRequest, Acknowledged)
from .hosts import (HostActor, Join, Joined, HostHello, HostWelcome, HostRefused, HostBeat, ActorExited, StartActor,
    KillActor, HostBye, HostDataset)
from .rows import PIECE_BYTES, ROWS_LIMITS, PieceRows, PieceWanted
from .records import (ACTOR_LIMITS, CLIENT_LIMITS, MAX_REPORT_STEPS, SERVICE_LIMITS, WEIGHTS_CHUNK,
                      ArrayRef, DatasetInfo, JobSpec, StepStat)

VERSION = 4

__all__ = ["Accepted", "Acknowledged", "ActorExited", "Adopt", "BatchCredit", "BatchRows", "CacheArray", "CacheChunk",
           "CacheCredit", "CacheDone", "CacheHave", "CacheOffer", "CacheRefused", "CancelRequest", "CheckpointNow",
           "Checkpointed", "EpochResult", "Failure", "Finished", "Grant", "GroupFailed", "Heartbeat", "Hello",
           "HostActor", "HostBeat", "HostBye", "HostDataset", "HostHello", "HostRefused", "HostWelcome", "Join", "Joined",
           "JobUpdate", "KillActor", "PieceRows", "PieceWanted", "Regroup", "Rejected", "Release", "Reports", "Resplit", "Shutdown", "Standby", "Threads",
           "StartActor", "StatusReply",
           "StatusRequest", "Stop", "StopRequest", "StoreReply", "StoreRequest", "Submit", "Weights",
           "Welcome", "ACTOR_LIMITS", "BATCH_FRAME", "BATCH_WINDOW", "CACHE_ARRAYS", "CACHE_CHUNK", "CACHE_WINDOW",
           "CLIENT_LIMITS", "PIECE_BYTES", "ROWS_LIMITS", "SERVICE_LIMITS", "WEIGHTS_CHUNK", "MAX_REPORT_STEPS",
           "ArrayRef", "DatasetInfo", "JobSpec", "StepStat", "Message", "VERSION", "encode", "decode",
           "validate"]


Message = Union[
    Hello, Welcome, Grant, Resplit, Threads, Reports, EpochResult, Stop, Finished, Failure, Heartbeat, GroupFailed, Regroup,
    Standby, CheckpointNow, Checkpointed, Adopt, Release, Shutdown, StoreRequest, StoreReply,
    Submit, Accepted, Rejected, JobUpdate, Weights, StatusRequest, StatusReply, StopRequest, CancelRequest,
    Acknowledged, CacheOffer, CacheHave, CacheCredit, CacheChunk, CacheDone, CacheRefused,
    BatchRows, BatchCredit, PieceWanted, PieceRows,
    Join, Joined, HostHello, HostWelcome, HostRefused, HostBeat, ActorExited, StartActor, KillActor, HostBye,
    HostDataset,
]
_KINDS: dict[str, type] = {cls.__name__: cls for cls in typing.get_args(Message)}


# --- public API ----------------------------------------------------------------------


def encode(msg: Message) -> bytes:
    """Validate a message and return its frame; equal messages give equal bytes."""
    fields = _outgoing_fields(msg)
    return msgpack.packb([VERSION, type(msg).__name__, fields], use_bin_type=True)


def validate(msg: Message) -> None:
    """Run on a message of ours the checks ``decode`` runs; InternalError if one fails."""
    _outgoing_fields(msg)


def decode(frame: bytes, limits: Limits = ACTOR_LIMITS) -> Message:
    """Parse one frame from a peer and check every field; ProtocolError on any fault."""
    if len(frame) > limits.frame_bytes:
        # Checked first so a hostile peer cannot make us unpack a huge frame.
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the limit of {limits.frame_bytes}")
    envelope = unpack(frame, limits)
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise ProtocolError(f"a frame must be [version, kind, fields], got {describe(envelope)}")
    version, kind, fields = envelope
    if type(version) is not int or version != VERSION:
        raise ProtocolError(
            f"unsupported protocol version {describe(version)} (this side speaks {VERSION})"
        )
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown message kind {describe(kind)}")
    return record_from_map(cls, fields, kind)


def _outgoing_fields(msg: Any) -> dict[str, Any]:
    """Check a message of ours and return its field map for the wire."""
    cls = type(msg)
    if _KINDS.get(cls.__name__) is not cls:
        raise InternalError(f"cannot send {describe(msg)}: it is not a message kind")
    try:
        return record_to_map(cls, msg, cls.__name__)
    except ProtocolError as exc:
        raise InternalError(f"refusing to send an invalid message: {exc}") from exc


for _kind in _KINDS.values():
    rules(_kind)  # compile every schema at import, so a mistake in one fails loudly here
del _kind
