"""Is a broker answering at an address? One status round trip, bounded in time.

``leptonrt train`` asks it to choose between submitting to a running ``up`` and training
here, ``up`` to refuse a second broker on a socket, and the service to tell a live socket
from one a killed broker left. It lives apart from ``broker.service`` because what that
module imports (the embedded broker, its actor pool and dataset cache: numpy, pyarrow)
takes about 0.3 s, and the commands that ask are the ones a person waits on.
"""

from __future__ import annotations

import time

import zmq

from .. import messages
from ..errors import ProtocolError
from ..messages import SERVICE_LIMITS, Rejected, StatusReply, StatusRequest

PROBE_MS = 500   # how long a probe waits for an answer (a live broker answers in milliseconds)


async def probe(address: str, wait_ms: int = PROBE_MS) -> dict | None:
    """The snapshot of a broker answering at ``address``, or None if none answers."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, SERVICE_LIMITS.frame_bytes)
    try:
        sock.connect(address)
        sock.send(messages.encode(StatusRequest()))
        deadline = time.monotonic() + wait_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(max(int(left * 1000), 1)):
                break
            try:
                msg = messages.decode(sock.recv(), SERVICE_LIMITS)
            except ProtocolError:
                continue
            if isinstance(msg, StatusReply):
                return dict(msg.snapshot)
            if isinstance(msg, Rejected):
                return {"rejected": msg.message}
        return None
    except zmq.ZMQError:
        return None
    finally:
        sock.close(linger=0)
        ctx.term()
