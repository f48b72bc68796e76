"""Which network interface gradients travel on: named, or trusted on the route to the head.

gloo (and NCCL) traffic is neither authenticated nor encrypted: anyone on the interface a
group binds to can join its connections or read them. So a group that spans hosts forms
only on an interface its owner named as private (``--gradient-iface IFACE``), or on the one
the route to the head takes when the owner says the network is trusted
(``--trust-network``). The actors get it as ``GLOO_SOCKET_IFNAME`` before they form a group.
"""

from __future__ import annotations

import socket

from .errors import ConfigError

UNSAFE = ("gloo traffic is neither authenticated nor encrypted, so a gradient group refuses to span hosts "
          "without --gradient-iface IFACE (a private interface) or --trust-network")


def gradient_iface(named: str | None, trust_network: bool, toward: str | None) -> str | None:
    """The interface for cross-host gradients: ``named``, or with ``trust_network`` the one
    that holds the route to ``toward`` (an IPv4 address or host name; None: the default
    route); None when neither is given. ConfigError (78) for an interface that does not exist."""
    import psutil
    found = psutil.net_if_addrs()
    if named is not None:
        if named not in found:
            raise ConfigError(f"--gradient-iface {named}: no such interface here (there are {', '.join(sorted(found))})")
        return named
    if not trust_network:
        return None
    local = _source_address(toward or "10.255.255.255")
    for name, addresses in found.items():
        if any(a.family == socket.AF_INET and a.address == local for a in addresses):
            return name
    raise ConfigError(f"--trust-network: no interface holds {local}, the address the route to {toward} leaves from")


def _source_address(toward: str) -> str:
    """The local address packets to ``toward`` leave from (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((toward, 9))
        except OSError as exc:
            raise ConfigError(f"--trust-network: no route to {toward} ({exc.strerror or exc})") from None
        return probe.getsockname()[0]
