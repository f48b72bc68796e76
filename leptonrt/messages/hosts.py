"""Host agents (``leptonrt join``) <-> the head: joining, the agent's actors, and liveness.

An agent asks the service (its CURVE ``--listen`` address) to ``Join``; the answer names the
actors' channel, where the agent then says what it has (``HostHello``) and its actors
connect as local ones do, over CURVE with the agent's key. Before a job's first Welcome to
a host's actors the broker fills that host's cache (``cachefill``), and the agent says where
it holds the data (``HostDataset``): its actors map their own host's copy. A host's name is the name its
key is allowed under on the head: it never travels in a payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from leptonrt.errors import ProtocolError
from leptonrt.wire import given, required

from .records import DatasetInfo


@dataclass(frozen=True, slots=True)
class Join:
    """Agent -> service: where do my actors connect?"""
    version: str = required(min_len=1, max_len=64)  # the agent's leptonrt version


@dataclass(frozen=True, slots=True)
class Joined:
    """Service -> agent: the actors' channel (a wildcard host there means the address the agent dialled)."""
    actor_endpoint: str = required(min_len=7, max_len=256)  # tcp://HOST:PORT, a CURVE server with the service's key


@dataclass(frozen=True, slots=True)
class HostActor:
    """One actor an agent runs."""
    actor_id: str = required(min_len=1, max_len=31)  # the id it says hello with (a0, a1, ...)
    device: str = required(min_len=1, max_len=32)  # "cpu", "cuda:0", ...
    threads: int = required(min=1, max=4096)  # its CPU threads


@dataclass(frozen=True, slots=True)
class HostHello:
    """Agent -> broker (actors' channel), first: what this host has."""
    pid: int = required(min=1)  # the agent's process id, on its host
    actors: list[HostActor] = required(min_len=1, max_len=256)  # one per device
    memory_bytes: int = required(min=0)  # the host's memory
    versions: tuple[str, ...] = required(max_len=16)  # "leptonrt 0.1", "python 3.12.1", ...
    gradient_iface: str = required(min_len=1, max_len=15)  # the interface its actors' gradient traffic uses
    datasets: tuple[str, ...] = given((), max_len=256)  # fingerprints of the datasets it holds already
    data: str = given("cache", choices=frozenset({"cache", "stream"}))  # a job's data: its cache filled once, or rows by value


    def check(self) -> None:
        """No actor named twice."""
        if len({a.actor_id for a in self.actors}) != len(self.actors):
            raise ProtocolError("an actor id is named twice")


@dataclass(frozen=True, slots=True)
class HostWelcome:
    """Broker -> agent: joined; start the actors (their ids at the head are NAME/ID)."""
    name: str = required(min_len=1, max_len=64)  # the host's name at the head: its key's name
    beat_s: float = required(min=0.01, max=60.0)  # send a HostBeat this often
    lost_after_s: float = required(min=0.1, max=600.0)  # either side silent this long counts as gone


@dataclass(frozen=True, slots=True)
class HostRefused:
    """Broker -> agent: not joined, and why; the agent exits 78."""
    message: str = required(max_len=4096)


@dataclass(frozen=True, slots=True)
class HostBeat:
    """Agent <-> broker: still here (the broker answers every beat with one)."""
    running: int = given(0, min=0)  # the agent's actors running now (agent -> broker)


@dataclass(frozen=True, slots=True)
class ActorExited:
    """Agent -> broker: one of its actor processes ended."""
    actor_id: str = required(min_len=1, max_len=64)  # its id on the host (a0, ...)
    how: str = required(max_len=256)  # e.g. "exit code 1", "killed by SIGKILL"


@dataclass(frozen=True, slots=True)
class StartActor:
    """Broker -> agent: start this actor (again): a replacement."""
    actor_id: str = required(min_len=1, max_len=64)
    incarnation: int = required(min=0)  # how many times it was started before


@dataclass(frozen=True, slots=True)
class KillActor:
    """Broker -> agent: SIGKILL this actor (taken for hung or unreachable)."""
    actor_id: str = required(min_len=1, max_len=64)


@dataclass(frozen=True, slots=True)
class HostDataset:
    """Agent -> broker, after each CacheHave: where this host holds that dataset, for its actors' Welcome."""
    fingerprint: str = required(min_len=64, max_len=64)  # the offer's (see CacheOffer)
    data: DatasetInfo  # its arrays in this host's shared memory


@dataclass(frozen=True, slots=True)
class HostBye:
    """Agent <-> broker: leaving (the agent stops, or the broker closes)."""
    reason: str = required(max_len=1024)  # why, for the log
