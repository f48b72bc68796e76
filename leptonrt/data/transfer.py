"""Filling a host's dataset cache from the head: the two sides of the exchange, with no I/O.

The head builds one ``CacheOffer`` per dataset (``make_offer``: it hashes every array, so
run it once, in a worker thread for a large set) and one ``Sender`` per host; the agent
answers an offer with ``CacheHave`` when its cache holds that fingerprint, or builds a
``Receiver`` over a ``Sink`` its cache allocated. Each side is driven the same way: the
shell sends what ``start()`` returns, then passes every message of the exchange to
``handle(msg)`` and sends what that returns::

    head                                    agent
    CacheOffer           ------------->     CacheHave (holds it: done)  or  CacheCredit(window)
    CacheChunk x credit  ------------->     CacheCredit(n) as it has written n = window/2
    ...                                     ...
    CacheDone            ------------->     CacheHave (every SHA-256 matched)  or  CacheRefused

Flow control: the agent credits at most ``window`` chunks beyond those it has written,
and the head never sends a chunk it was not credited, so at any moment at most
``window * chunk_bytes`` bytes (8 MiB by default) are on their way and neither side
queues more. The receiver writes each chunk straight into the sink (no buffering of its
own); it cannot tell a chunk the head sent on a credit still in flight from one sent on
none, so against a head that ignores credit the agent's bound is its socket's receive
high-water mark. It checks every chunk: one out of order, past an array's end, short,
for an unknown array or another offer is a ``ProtocolError``; an array whose SHA-256
differs from the offer's is a ``DataError``. Either way the sink is aborted first, so a
partial cache is never used.

The fingerprint is the SHA-256 of the offer's content (spec, widths, each array's name,
dtype, shape and hash): two offers with one fingerprint hold the same bytes, so an agent
may reuse whatever it holds under it, across jobs and head restarts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from leptonrt.errors import DataError, InternalError, LeptonError, ProtocolError
from leptonrt.messages import (CACHE_ARRAYS, CACHE_CHUNK, CACHE_WINDOW, CacheArray, CacheChunk, CacheCredit,
                               CacheDone, CacheHave, CacheOffer, CacheRefused, DatasetInfo, Message, validate)

__all__ = ["CHUNK", "WINDOW", "Receiver", "Sender", "Sink", "fingerprint", "make_offer", "refusal"]

CHUNK = CACHE_CHUNK  # default bytes per chunk: 512 KiB, half the 1 MiB frame limit (ACTOR_LIMITS.frame_bytes)
WINDOW = CACHE_WINDOW  # default credit window: 16 chunks, 8 MiB in flight, a 1 Gbit/s link full at 64 ms RTT


def fingerprint(spec: str, n_features: int, n_classes: int, arrays: Sequence[CacheArray]) -> str:
    """The SHA-256 (hex) of what an offer says about its content."""
    manifest = [spec, n_features, n_classes, [[a.name, a.dtype, list(a.shape), a.nbytes, a.sha256] for a in arrays]]
    return hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()


def make_offer(spec: str, n_features: int, n_classes: int, arrays: Mapping[str, np.ndarray],
               chunk_bytes: int = CHUNK) -> CacheOffer:
    """The offer of a dataset's four arrays (``x_train, y_train, x_test, y_test``);
    reads every byte once to hash it."""
    described = [CacheArray(name=name, dtype=str(arrays[name].dtype), shape=list(arrays[name].shape),
                            nbytes=int(arrays[name].nbytes), sha256=hashlib.sha256(_bytes_of(arrays[name])).hexdigest())
                 for name in CACHE_ARRAYS]
    offer = CacheOffer(fingerprint=fingerprint(spec, n_features, n_classes, described), spec=spec,
                       n_features=n_features, n_classes=n_classes, arrays=described, chunk_bytes=chunk_bytes)
    validate(offer)  # arrays that are not one dataset are our bug, found here rather than at the agent
    return offer


def refusal(offer: CacheOffer, error: LeptonError) -> CacheRefused:
    """What an agent answers when ``error`` stops it from holding ``offer``'s dataset."""
    return CacheRefused(fingerprint=offer.fingerprint, message=str(error)[:4096], exit_code=error.exit_code)


def _bytes_of(array: np.ndarray) -> memoryview:
    """The array's bytes in C order, without a copy when it is contiguous (a shm view is)."""
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _chunks_of(offer: CacheOffer) -> int:
    return sum(-(-a.nbytes // offer.chunk_bytes) for a in offer.arrays)


def _expect(offer: CacheOffer, msg: Message, kinds: tuple[type, ...], side: str) -> None:
    """ProtocolError unless ``msg`` is one of ``kinds`` and about this offer."""
    if not isinstance(msg, kinds):
        raise ProtocolError(f"the {side} of a cache fill got an unexpected {type(msg).__name__}")
    if msg.fingerprint != offer.fingerprint:
        raise ProtocolError(f"{type(msg).__name__} for dataset {msg.fingerprint[:12]} reached the fill of "
                            f"{offer.fingerprint[:12]}")


class Sender:
    """The head's side of one dataset's fill of one host.

    ``done`` turns true when the agent holds the dataset (reused, or filled and checked);
    ``refused`` is the agent's ``CacheRefused`` if it would not; ``sent_chunks`` counts
    what it sent.
    """

    def __init__(self, offer: CacheOffer, arrays: Mapping[str, np.ndarray]) -> None:
        for described in offer.arrays:
            array = arrays[described.name]
            if (str(array.dtype), list(array.shape)) != (described.dtype, described.shape):
                raise InternalError(f"{described.name} is {array.dtype} {list(array.shape)}, "
                                    f"its offer says {described.dtype} {described.shape}")
        self.offer = offer
        self._data = [_bytes_of(arrays[a.name]) for a in offer.arrays]
        self._index, self._offset = 0, 0  # the next chunk to send: which array, where in it
        self._state = "new"  # new -> offered -> sending -> sent -> done; any but done -> refused
        self.sent_chunks = 0
        self.refused: CacheRefused | None = None

    @property
    def done(self) -> bool:
        return self._state == "done"

    def start(self) -> list[Message]:
        """The offer, once."""
        if self._state != "new":
            raise InternalError(f"a cache fill sender started twice (it is {self._state})")
        self._state = "offered"
        return [self.offer]

    def handle(self, msg: Message) -> list[Message]:
        """The agent's answer in, the chunks (and the final CacheDone) it allows out."""
        if self._state in ("new", "done") or self.refused is not None:
            raise ProtocolError(f"a {type(msg).__name__} reached a cache fill that is "
                                f"{'refused' if self.refused else self._state}")
        _expect(self.offer, msg, (CacheHave, CacheCredit, CacheRefused), "head")
        if isinstance(msg, CacheRefused):
            self.refused = msg
            return []
        if isinstance(msg, CacheHave):
            if self._state == "sending":
                raise ProtocolError(f"the agent said it holds {self.offer.fingerprint[:12]} in the middle of its fill")
            self._state = "done"
            return []
        return self._send(msg.chunks)

    def _send(self, credit: int) -> list[Message]:
        """``credit`` chunks, or all that are left and CacheDone after the last (an empty
        array takes none); none once everything is sent. Credit is spent at once, never saved up."""
        out: list[Message] = []
        if self._state == "offered":
            self._state = "sending"
            while self._index < len(self._data) and not len(self._data[self._index]):
                self._index += 1
        while self._state == "sending" and credit:
            data = self._data[self._index]
            piece = data[self._offset:self._offset + self.offer.chunk_bytes]
            out.append(CacheChunk(fingerprint=self.offer.fingerprint, array=self.offer.arrays[self._index].name,
                                  offset=self._offset, data=piece.tobytes()))
            credit, self.sent_chunks, self._offset = credit - 1, self.sent_chunks + 1, self._offset + len(piece)
            if self._offset == len(data):
                self._index, self._offset = self._index + 1, 0
                while self._index < len(self._data) and not len(self._data[self._index]):
                    self._index += 1
            if self._index == len(self._data):
                self._state = "sent"
                out.append(CacheDone(fingerprint=self.offer.fingerprint))
        return out


class Sink(Protocol):
    """Where a receiver puts a dataset: its storage, allocated for the offer before the
    first chunk (``leptonrt.data.hostcache`` gives one in shared memory)."""

    def write(self, array: str, offset: int, data: bytes) -> None:
        """Put ``data`` at ``offset`` of ``array`` (the receiver has checked both)."""

    def finish(self) -> DatasetInfo:
        """Every array is complete and checked: publish them and describe where they are."""

    def abort(self) -> None:
        """The fill failed or was abandoned: free everything, publish nothing."""


class Receiver:
    """The agent's side of one dataset's fill: checks every chunk, writes it to ``sink``,
    credits more, and finally checks each array's SHA-256.

    ``window``: chunks it lets the head send ahead (at most ``CACHE_WINDOW``). ``result``
    is the dataset's description once the fill has succeeded, None until then. On any
    error it aborts the sink and raises; ``abort()`` does the same for a fill abandoned
    from outside (the head went away).
    """

    def __init__(self, offer: CacheOffer, sink: Sink, *, window: int = WINDOW) -> None:
        if not 1 <= window <= CACHE_WINDOW:
            raise InternalError(f"a credit window of {window} chunks is outside 1..{CACHE_WINDOW}")
        self.offer, self._sink, self._window = offer, sink, window
        self._hashes = [hashlib.sha256() for _ in offer.arrays]
        self._index, self._offset = 0, 0  # the next chunk expected
        self._skip_complete()   # an empty array (a test split's offer has no training rows) takes no chunk
        self._total = _chunks_of(offer)
        self._granted = 0  # chunks credited so far
        self._received = 0  # chunks written so far
        self._failed = False
        self.result: DatasetInfo | None = None
        expected = fingerprint(offer.spec, offer.n_features, offer.n_classes, offer.arrays)
        if offer.fingerprint != expected:
            self.abort()
            raise ProtocolError(f"offer {offer.fingerprint[:12]} of {offer.spec!r} does not match its content "
                                f"(fingerprint {expected[:12]})")

    @property
    def received_chunks(self) -> int:
        return self._received

    def start(self) -> list[Message]:
        """The first credit."""
        return self._credit(self._window)

    def handle(self, msg: Message) -> list[Message]:
        """A chunk or the end in; credit, or the final CacheHave, out."""
        if self._failed or self.result is not None:
            raise ProtocolError(f"a {type(msg).__name__} reached a cache fill that has "
                                f"{'failed' if self._failed else 'finished'}")
        try:
            _expect(self.offer, msg, (CacheChunk, CacheDone), "agent")
            return self._write(msg) if isinstance(msg, CacheChunk) else self._finish()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Give the sink's storage back; the fill is over."""
        if not self._failed and self.result is None:
            self._failed = True
            self._sink.abort()

    def _write(self, chunk: CacheChunk) -> list[Message]:
        self._check_place(chunk)
        self._sink.write(chunk.array, chunk.offset, chunk.data)
        self._hashes[self._index].update(chunk.data)
        self._offset += len(chunk.data)
        self._received += 1
        self._skip_complete()
        unreturned = self._window - (self._granted - self._received)
        # credit in batches of half the window: a few CacheCredits per window, never a stall
        return self._credit(unreturned) if unreturned >= max(1, self._window // 2) else []

    def _check_place(self, chunk: CacheChunk) -> None:
        """The chunk must be exactly the next one: this array, this offset, this length."""
        where = f"chunk of {chunk.array} at offset {chunk.offset} ({len(chunk.data)} bytes)"
        if chunk.array not in CACHE_ARRAYS:
            raise ProtocolError(f"{where} is for an unknown array")
        if self._index == len(self.offer.arrays):
            raise ProtocolError(f"{where} came after every array was complete")
        expected = self.offer.arrays[self._index]
        if (chunk.array, chunk.offset) != (expected.name, self._offset):
            raise ProtocolError(f"{where} is out of order: expected {expected.name} at offset {self._offset}")
        length = min(self.offer.chunk_bytes, expected.nbytes - self._offset)
        if len(chunk.data) > length:
            raise ProtocolError(f"{where} runs past the end of {expected.name} ({expected.nbytes} bytes) "
                                f"or its chunk size of {self.offer.chunk_bytes}")
        if len(chunk.data) < length:
            raise ProtocolError(f"{where} is short: {length} bytes expected")

    def _skip_complete(self) -> None:
        while self._index < len(self.offer.arrays) and self._offset == self.offer.arrays[self._index].nbytes:
            self._index, self._offset = self._index + 1, 0

    def _credit(self, chunks: int) -> list[Message]:
        chunks = min(chunks, self._total - self._granted)
        if chunks <= 0:
            return []
        self._granted += chunks
        return [CacheCredit(fingerprint=self.offer.fingerprint, chunks=chunks)]

    def _finish(self) -> list[Message]:
        if self._index < len(self.offer.arrays):
            missing = self.offer.arrays[self._index]
            raise ProtocolError(f"CacheDone came before {missing.name} was complete "
                                f"({self._offset} of {missing.nbytes} bytes)")
        for described, digest in zip(self.offer.arrays, self._hashes):
            if digest.hexdigest() != described.sha256:
                raise DataError(f"{described.name} of dataset {self.offer.spec!r} arrived with SHA-256 "
                                f"{digest.hexdigest()[:12]}, the head's is {described.sha256[:12]}: not used")
        self.result = self._sink.finish()
        return [CacheHave(fingerprint=self.offer.fingerprint)]
