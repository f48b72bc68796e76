"""Hosts on one machine: network namespaces joined by veth pairs.

``hosts`` makes three namespaces, named after this process so that concurrent runs never
share one: ``head``, ``agent`` and ``third``. All three sit on one public segment (a bridge
in the head's namespace, 10.231.0.0/24) that carries the control plane; the head and the
agent also share a private link (10.231.9.0/24), the one gradients use
(``--gradient-iface``), that ``third`` has no way onto. Every address exists only inside
the namespaces. Everything is removed afterwards, failures included, processes left in a
namespace first. Where ``ip netns`` cannot run (not root, no CAP_NET_ADMIN) the tests skip
and say why.

The namespaces share /dev/shm and the filesystem with the machine: a "host" here differs
from the head in its network only. This kernel has no ``netem``: a link can be slowed
(``tc ... tbf``), not delayed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

PUBLIC = {"head": "10.231.0.1", "agent": "10.231.0.2", "third": "10.231.0.3"}   # /24, the control plane
PRIVATE = {"head": "10.231.9.1", "agent": "10.231.9.2"}                        # /24, gradients only
# the interface each namespace reaches the others on: public, and private (gradients)
PUBLIC_IFACE = {"head": "br0", "agent": "pub0", "third": "pub0"}
PRIVATE_IFACE = {"head": "priv0", "agent": "priv0"}


@dataclass
class Hosts:
    """Three namespaces and how to run things in them."""

    names: dict[str, str]   # role -> namespace name

    def cmd(self, role: str, *argv: str) -> list[str]:
        """``argv`` as run inside ``role``'s namespace."""
        return ["ip", "netns", "exec", self.names[role], *map(str, argv)]

    def run(self, role: str, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(self.cmd(role, *argv), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in {role}: {out.stderr.strip()}")
        return out

    def popen(self, role: str, *argv: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(role, *argv), start_new_session=True, **kwargs)

    def connects(self, role: str, address: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connection from ``role``'s namespace to ``address:port`` is accepted."""
        probe = (f"import socket,sys\ntry:\n socket.create_connection(({address!r},{port}),{timeout})\n"
                 f"except OSError: sys.exit(1)")
        return self.run(role, sys.executable, "-c", probe, check=False).returncode == 0

    def listening(self, role: str) -> list[tuple[str, int]]:
        """(address, port) of every TCP socket listening in ``role``'s namespace."""
        out = self.run(role, "ss", "-Hltn").stdout
        found = []
        for line in out.splitlines():
            local = line.split()[3]
            address, _, port = local.rpartition(":")
            found.append((address.strip("[]"), int(port)))
        return found


def _ip(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)


def _why_not() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    probe = f"lrt{os.getpid()}p"
    try:
        made = _ip("netns", "add", probe)
    except FileNotFoundError:
        return "no `ip` command (iproute2)"
    if made.returncode != 0:
        return f"`ip netns add` failed (root or CAP_NET_ADMIN is needed): {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def _build(names: dict[str, str]) -> None:
    head, agent, third = names["head"], names["agent"], names["third"]
    steps = [("netns", "add", n) for n in names.values()]
    steps += [("-n", n, "link", "set", "lo", "up") for n in names.values()]
    steps += [("-n", head, "link", "add", "br0", "type", "bridge"), ("-n", head, "link", "set", "br0", "up"),
              ("-n", head, "addr", "add", f"{PUBLIC['head']}/24", "dev", "br0")]
    for role, ns in (("agent", agent), ("third", third)):   # each on the public bridge
        port = f"to{role}"
        steps += [("link", "add", port, "netns", head, "type", "veth", "peer", "name", "pub0", "netns", ns),
                  ("-n", head, "link", "set", port, "master", "br0"), ("-n", head, "link", "set", port, "up"),
                  ("-n", ns, "addr", "add", f"{PUBLIC[role]}/24", "dev", "pub0"), ("-n", ns, "link", "set", "pub0", "up")]
    steps += [("link", "add", "priv0", "netns", head, "type", "veth", "peer", "name", "priv0", "netns", agent)]
    for role, ns in (("head", head), ("agent", agent)):
        steps += [("-n", ns, "addr", "add", f"{PRIVATE[role]}/24", "dev", "priv0"), ("-n", ns, "link", "set", "priv0", "up")]
    for step in steps:
        out = _ip(*step)
        if out.returncode != 0:
            raise RuntimeError(f"ip {' '.join(step)}: {out.stderr.strip()}")


def _remove(names: dict[str, str]) -> None:
    """Kill whatever still runs in the namespaces, then delete them (their links go with them)."""
    for ns in names.values():
        pids = _ip("netns", "pids", ns).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline and _ip("netns", "pids", ns).stdout.split():
            time.sleep(0.05)
        _ip("netns", "del", ns)


@pytest.fixture(scope="session")
def _netns_allowed():
    why = _why_not()
    if why is not None:
        pytest.skip(why)


@pytest.fixture
def hosts(_netns_allowed):
    """Three fresh namespaces (head, agent, third); removed afterwards, whatever happened."""
    names = {role: f"lrt{os.getpid()}{role[0]}" for role in ("head", "agent", "third")}
    _remove(names)   # left by an earlier test of this process that was killed mid-way
    try:
        _build(names)
        yield Hosts(names)
    finally:
        _remove(names)


@pytest.fixture
def cluster(hosts, tmp_path):
    """A head and the hosts that join it in ``hosts``' namespaces; every process stopped afterwards."""
    from tests.hosts.cluster import Cluster   # (cluster.py imports this module's names)
    c = Cluster(hosts, tmp_path)
    try:
        yield c
    finally:
        c.stop()
