"""The rendezvous store, kept by the broker: torch.distributed forms every gradient group
through it, over the actors' own channel.

torch's TCPStore listens on every interface whatever host it is given, and anyone who
reaches it may read, write or fill it (PyTorch's own security notes say so). So the broker
keeps the store itself: actors reach it through ``leptonrt.actors.store.BrokerStore``, a
``torch.distributed.Store`` that sends ``StoreRequest`` messages on the actors' private
channel (an ipc socket in a 0700 directory). Nothing else listens.

Pure: ``handle(identity, request) -> [(identity, reply)]``. Keys live in namespaces the
broker opens (one per job and group generation); a key outside them, a store past its
size bounds, or too many waiting requests is refused, never grown without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..messages import StoreReply, StoreRequest

MAX_KEYS = 4096              # keys held at once, over every namespace
MAX_BYTES = 8 * 1024 * 1024  # bytes of keys and values held at once
MAX_WAITERS = 4096           # requests waiting for keys that do not exist yet


@dataclass(frozen=True)
class StoreStatistics:
    keys: int           # keys held now
    bytes: int          # bytes of keys and values held now
    waiting: int        # requests parked until their keys exist
    refused: int        # requests refused since the store was made


class StoreCore:
    """Keys and values of the namespaces the broker has opened, and the requests waiting on them."""

    def __init__(self, max_keys: int = MAX_KEYS, max_bytes: int = MAX_BYTES, max_waiters: int = MAX_WAITERS) -> None:
        self.max_keys, self.max_bytes, self.max_waiters = max_keys, max_bytes, max_waiters
        self._data: dict[str, bytes] = {}
        self._bytes = 0
        self._waiting: list[tuple[bytes, StoreRequest]] = []
        self._namespaces: set[str] = set()
        self._refused = 0

    def open_only(self, namespace: str) -> list[tuple[bytes, StoreReply]]:
        """Make ``namespace`` (e.g. ``job3/gen1/``) the one namespace in use: everything else is
        dropped, and requests waiting on it are refused."""
        self._namespaces = {namespace}
        return self._drop_outside()

    def close(self) -> list[tuple[bytes, StoreReply]]:
        """No namespace is open any more (between jobs)."""
        self._namespaces = set()
        return self._drop_outside()

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(len(self._data), self._bytes, len(self._waiting), self._refused)

    def handle(self, identity: bytes, req: StoreRequest) -> list[tuple[bytes, StoreReply]]:
        """Apply one request; the replies it causes (its own, and waiters it released)."""
        if not req.keys and req.op != "num_keys" or not all(self._inside(k) for k in req.keys):
            return [self._refuse(identity, req, "keys outside the namespaces the broker opened")]
        if req.op in ("get", "check") and req.wait and not all(k in self._data for k in req.keys):
            if len(self._waiting) >= self.max_waiters:
                return [self._refuse(identity, req, "too many requests waiting")]
            self._waiting.append((identity, req))
            return []
        reply = getattr(self, f"_{req.op}")(req)
        out = [(identity, reply)]
        if reply.ok and req.op in ("set", "add", "compare_set"):
            out += self._release_waiters()
        return out

    # -- operations -------------------------------------------------------------------

    def _set(self, req: StoreRequest) -> StoreReply:
        if not self._room_for(req.keys[0], req.value):
            return self._refused_reply(req, "the store is full")
        self._put(req.keys[0], req.value)
        return StoreReply(seq=req.seq, ok=True)

    def _get(self, req: StoreRequest) -> StoreReply:
        value = self._data.get(req.keys[0])
        if value is None:
            return StoreReply(seq=req.seq, ok=False, message="no such key")
        return StoreReply(seq=req.seq, ok=True, value=value)

    def _add(self, req: StoreRequest) -> StoreReply:
        key = req.keys[0]
        try:
            number = int(self._data.get(key, b"0")) + req.amount
        except ValueError:
            return self._refused_reply(req, "the key does not hold a number")
        value = str(number).encode()
        if not -(2**63) <= number < 2**63 or not self._room_for(key, value):
            return self._refused_reply(req, "the store is full")
        self._put(key, value)
        return StoreReply(seq=req.seq, ok=True, number=number)

    def _check(self, req: StoreRequest) -> StoreReply:
        return StoreReply(seq=req.seq, ok=True, number=int(all(k in self._data for k in req.keys)))

    def _compare_set(self, req: StoreRequest) -> StoreReply:
        key, now = req.keys[0], self._data.get(req.keys[0])
        # torch's rule: a missing key matches an empty expected value
        if (now is None and req.expected == b"") or now == req.expected:
            if not self._room_for(key, req.value):
                return self._refused_reply(req, "the store is full")
            self._put(key, req.value)
            now = req.value
        return StoreReply(seq=req.seq, ok=True, value=req.expected if now is None else now)

    def _delete(self, req: StoreRequest) -> StoreReply:
        value = self._data.pop(req.keys[0], None)
        if value is not None:
            self._bytes -= len(req.keys[0]) + len(value)
        return StoreReply(seq=req.seq, ok=True, number=int(value is not None))

    def _num_keys(self, req: StoreRequest) -> StoreReply:
        return StoreReply(seq=req.seq, ok=True, number=len(self._data))

    # -- bookkeeping ------------------------------------------------------------------

    def _inside(self, key: str) -> bool:
        return any(key.startswith(ns) for ns in self._namespaces)

    def _room_for(self, key: str, value: bytes) -> bool:
        old = self._data.get(key)
        grow = len(key) + len(value) - (len(key) + len(old) if old is not None else 0)
        return (old is not None or len(self._data) < self.max_keys) and self._bytes + grow <= self.max_bytes

    def _put(self, key: str, value: bytes) -> None:
        old = self._data.get(key)
        if old is not None:
            self._bytes -= len(key) + len(old)
        self._data[key] = value
        self._bytes += len(key) + len(value)

    def _release_waiters(self) -> list[tuple[bytes, StoreReply]]:
        ready = [(i, r) for i, r in self._waiting if all(k in self._data for k in r.keys)]
        if not ready:
            return []
        self._waiting = [(i, r) for i, r in self._waiting if not all(k in self._data for k in r.keys)]
        return [(identity, getattr(self, f"_{req.op}")(req)) for identity, req in ready]

    def _drop_outside(self) -> list[tuple[bytes, StoreReply]]:
        for key in [k for k in self._data if not self._inside(k)]:
            self._bytes -= len(key) + len(self._data.pop(key))
        gone = [(i, r) for i, r in self._waiting if not all(self._inside(k) for k in r.keys)]
        self._waiting = [(i, r) for i, r in self._waiting if all(self._inside(k) for k in r.keys)]
        return [self._refuse(identity, req, "the group it was for is gone") for identity, req in gone]

    def _refuse(self, identity: bytes, req: StoreRequest, why: str) -> tuple[bytes, StoreReply]:
        return identity, self._refused_reply(req, why)

    def _refused_reply(self, req: StoreRequest, why: str) -> StoreReply:
        self._refused += 1
        return StoreReply(seq=req.seq, ok=False, message=why)
