"""How an actor's sockets reach its broker: plainly on the broker's private ipc channel, or as
CURVE clients with the host agent's keys over TCP (an actor of a joined host).

The agent tells its actors where the keys are (``LEPTONRT_SERVER_KEY``: the head's public key
file; ``LEPTONRT_KEYS``: the key directory), never the keys themselves; they are read as
``leptonrt keys`` reads them, the secret one refused when others can read it.
"""

from __future__ import annotations

import os
from functools import cache

import zmq

from ..curve import arm_client
from ..keys import KeyPair, load_keypair, read_public_key


def connect(sock: zmq.Socket, address: str) -> None:
    """Connect ``sock`` to the broker at ``address``, armed with CURVE when it is TCP."""
    if address.startswith("tcp://"):
        server, own = _credentials()
        arm_client(sock, server, own)
    sock.connect(address)


@cache
def _credentials() -> tuple[bytes, KeyPair]:
    return read_public_key(os.environ["LEPTONRT_SERVER_KEY"]), load_keypair(os.environ.get("LEPTONRT_KEYS"))
