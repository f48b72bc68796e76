"""The actor's end of the control plane: a DEALER socket speaking the wire protocol."""

from __future__ import annotations

import zmq

from .. import messages as protocol
from ..messages import ACTOR_LIMITS
from ..errors import ProtocolError
from .dial import connect


class Link:
    """Blocking send/receive of protocol messages to and from the broker."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)  # let the last reports leave before exit
        self.sock.setsockopt(zmq.MAXMSGSIZE, ACTOR_LIMITS.frame_bytes)
        self.address = address
        connect(self.sock, address)
        self.bad_messages = 0

    def send(self, msg: protocol.Message) -> None:
        self.sock.send(protocol.encode(msg), copy=False)

    def recv(self, timeout_ms: int) -> protocol.Message | None:
        """The next valid message, or None if none arrives within ``timeout_ms``."""
        while self.sock.poll(timeout_ms):
            frames = self.sock.recv_multipart(copy=True)
            try:
                return protocol.decode(frames[-1], ACTOR_LIMITS)
            except ProtocolError:
                self.bad_messages += 1  # a bad frame is dropped; keep waiting for a good one
                timeout_ms = 0
        return None

    def close(self) -> None:
        self.sock.close()
