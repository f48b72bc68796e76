"""The actor's end of the rendezvous store: a ``torch.distributed.Store`` kept by the broker.

torch.distributed forms a group by having its members exchange addresses through a store.
Its TCPStore would listen on every interface for anyone to read and write; this one sends
each operation to the broker (``leptonrt.broker.store``) on a DEALER socket of its own,
next to the actor's, on the broker's private ipc channel (over CURVE, for an actor of a joined host). Every key gets the group's
namespace (``job3/gen1/``), so a group never sees another's keys.

torch calls a store from whichever thread forms or uses the group, so the socket is used
under a lock. A wait that runs out of time raises, as torch's own stores do; a late answer
to it is recognised by its sequence number and ignored.
"""

from __future__ import annotations

import itertools
import threading
import time
from datetime import timedelta

import torch.distributed as dist
import zmq

from .. import messages
from ..errors import ProtocolError
from ..messages import ACTOR_LIMITS, StoreReply, StoreRequest
from .dial import connect


class StoreRefused(RuntimeError):
    """The broker refused a store operation, or did not answer in time."""


class BrokerStore(dist.Store):
    """Store operations of one gradient group, answered by the broker."""

    def __init__(self, address: str, namespace: str, timeout: timedelta) -> None:
        super().__init__()
        self.address, self.namespace = address, namespace
        self._timeout_s = timeout.total_seconds()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, ACTOR_LIMITS.frame_bytes)
        connect(self._sock, address)

    def close(self) -> None:
        with self._lock:
            self._sock.close(linger=0)

    # -- what torch calls ---------------------------------------------------------------

    def set(self, key: str, value) -> None:
        self._ask("set", [key], value=_bytes(value))

    def get(self, key: str) -> bytes:
        return self._ask("get", [key], wait=True).value

    def add(self, key: str, amount: int) -> int:
        return self._ask("add", [key], amount=int(amount)).number

    def compare_set(self, key: str, expected, desired) -> bytes:
        return self._ask("compare_set", [key], expected=_bytes(expected), value=_bytes(desired)).value

    def check(self, keys: list[str]) -> bool:
        return bool(self._ask("check", list(keys)).number)

    def wait(self, keys: list[str], timeout: timedelta | None = None) -> None:
        self._ask("check", list(keys), wait=True, timeout_s=timeout.total_seconds() if timeout else None)

    def delete_key(self, key: str) -> bool:
        return bool(self._ask("delete", [key]).number)

    def num_keys(self) -> int:
        return self._ask("num_keys", []).number

    def set_timeout(self, timeout: timedelta) -> None:
        self._timeout_s = timeout.total_seconds()

    # -- the round trip --------------------------------------------------------------------

    def _ask(self, op: str, keys: list[str], timeout_s: float | None = None, **fields) -> StoreReply:
        seq = next(self._seq)
        request = StoreRequest(seq=seq, op=op, keys=[self.namespace + k for k in keys], **fields)
        deadline = time.monotonic() + (self._timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            self._sock.send(messages.encode(request))
            while (left := deadline - time.monotonic()) > 0:
                if not self._sock.poll(max(int(left * 1000), 1)):
                    break
                reply = _decode(self._sock.recv())
                if isinstance(reply, StoreReply) and reply.seq == seq:
                    if not reply.ok:
                        raise StoreRefused(f"rendezvous store: {op} {keys[:1]} refused: {reply.message}")
                    return reply
        raise StoreRefused(f"rendezvous store: {op} {keys[:1]} got no answer within {self._timeout_s:.3g} s")


def _bytes(value) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _decode(frame: bytes):
    try:
        return messages.decode(frame, ACTOR_LIMITS)
    except ProtocolError:
        return None
