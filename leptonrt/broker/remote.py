"""The actors' channel opened to other hosts: a CURVE listener beside the private ipc one.

One ROUTER serves both, so a job's messages go to any member the same way: local actors
on the ipc endpoint in the broker's 0700 run directory (no CURVE: only this user can reach
it), the actors of joined hosts on a TCP port of the ``--listen`` address, as CURVE clients
whose key is allowed (each message re-checked, so a revoked key is cut off). The listener
proves itself at start-up as the service's does: a rogue key and a client without CURVE
refused, an allowed key admitted, or the broker does not start.
"""

from __future__ import annotations

import asyncio

import zmq

from .. import curve, keys
from ..errors import ConfigError
from .channel import Channel


async def listen_for_hosts(channel: Channel, listen: str, key_dir: str | None) -> tuple[curve.Authenticator, str]:
    """Arm ``channel`` (bound to its ipc endpoint only) for remote actors on a free port of
    ``listen``'s host; (its authenticator, the endpoint bound). ConfigError if it cannot bind."""
    pair = keys.load_keypair(key_dir)
    # hosts' keys only: the datasets and the gradients go over this channel, never to a client
    auth = curve.Authenticator(channel.ctx, keys.allowed_keys(key_dir, clients=False)).start()
    try:
        curve.arm_server(channel.sock, pair, auth, beside_ipc=True)
        host = listen.removeprefix("tcp://").rpartition(":")[0]
        channel.sock.set(zmq.IPV6, host.startswith("["))
        try:
            channel.sock.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot open the actors' channel on {host}: {exc}") from None
        endpoint = channel.sock.last_endpoint.decode()
        await asyncio.to_thread(curve.self_test, endpoint, pair.public, auth)
    except BaseException:
        auth.close()
        raise
    return auth, endpoint
