"""The hosts that joined the broker (``leptonrt join``), with no I/O: messages in, effects out.

A host is known by the name its CURVE key is allowed under (the connection's User-Id), never
by anything in a payload. Its agent says what it has (``HostHello``) on the actors' channel;
from then on each of its actors is a member of the pool under the id ``NAME/ID``. A host is
lost when its agent says goodbye, when its connection closes (the shell sees a send fail),
when it is silent for ``lost_after_s``, or when a new agent joins under the same name (the same key: that host came back): every actor of it is then
lost at once. The shell (``pool.ActorPool``) carries out the effects.

Lifecycle of a host, by name: absent --hello--> joined --bye|silent|replaced--> absent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..messages import ActorExited, HostBeat, HostBye, HostHello, HostRefused, HostWelcome, Message
from .events import Send

LOCAL_ID = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")   # an actor's id on its host
HOST_MESSAGES = (HostHello, HostBeat, ActorExited, HostBye)   # what agents send


@dataclass(frozen=True)
class RemoteActor:
    """One actor of a joined host, as the pool knows it."""
    actor_id: str      # NAME/ID: its id in the pool and in every job
    host: str          # the host's name (its key's)
    local_id: str      # its id on the host
    device: str
    threads: int


@dataclass(frozen=True)
class HostJoined:
    name: str
    actors: tuple[RemoteActor, ...]


@dataclass(frozen=True)
class HostLost:
    name: str
    why: str           # for the log and each actor's loss
    actors: tuple[str, ...]   # the pool ids of every actor it had


@dataclass(frozen=True)
class RemoteExit:
    actor_id: str      # the pool id
    how: str


@dataclass
class Host:
    name: str
    identity: bytes    # the agent's connection on the actors' channel
    hello: HostHello
    last_heard: float
    actors: tuple[RemoteActor, ...]


def qualified(name: str, local_id: str) -> str:
    return f"{name}/{local_id}"


class HostTable:
    """Joined hosts, by name and by their agent's connection.

    ``refuse``: why no host may join (the head has no interface for gradients), or None."""

    def __init__(self, beat_s: float = 0.5, lost_after_s: float = 5.0, refuse: str | None = None) -> None:
        self.beat_s = beat_s              # agents beat this often (seconds)
        self.lost_after_s = lost_after_s  # a host silent this long is lost (seconds)
        self.refuse = refuse
        self.hosts: dict[str, Host] = {}
        self._by_identity: dict[bytes, Host] = {}
        self.bad_messages = 0

    def handle(self, identity: bytes, name: str, msg: Message, now: float) -> list:
        """One message from the agent connection ``identity``, admitted with key ``name``."""
        if isinstance(msg, HostHello):
            return self._hello(identity, name, msg, now)
        host = self._by_identity.get(identity)
        if host is None or host.name != name:
            self.bad_messages += 1
            return []
        host.last_heard = now
        if isinstance(msg, HostBeat):
            return [Send(identity, HostBeat())]
        if isinstance(msg, ActorExited):
            actor = next((a for a in host.actors if a.local_id == msg.actor_id), None)
            if actor is None:
                self.bad_messages += 1
                return []
            return [RemoteExit(actor.actor_id, f"{msg.how} (on host {name})")]
        return self._lose(host, f"host {name} left: {msg.reason}")

    def tick(self, now: float) -> list:
        """Hosts silent for too long are lost."""
        out = []
        for host in list(self.hosts.values()):
            if now - host.last_heard > self.lost_after_s:
                out += self._lose(host, f"host {host.name} lost: silent for {now - host.last_heard:.1f} s")
        return out

    def lose(self, name: str, why: str) -> list:
        """The shell saw host ``name``'s agent go (its connection closed)."""
        host = self.hosts.get(name)
        return self._lose(host, f"host {name} lost: {why}") if host is not None else []

    def agent_of(self, actor_id: str) -> bytes | None:
        """The connection of the agent that runs ``actor_id``, if its host is joined."""
        name = actor_id.partition("/")[0]
        host = self.hosts.get(name)
        return host.identity if host is not None and any(a.actor_id == actor_id for a in host.actors) else None

    def close(self) -> list[Send]:
        """Goodbye to every agent (the broker closes)."""
        out = [Send(h.identity, HostBye(reason="the broker closed")) for h in self.hosts.values()]
        self.hosts, self._by_identity = {}, {}
        return out

    def _hello(self, identity: bytes, name: str, msg: HostHello, now: float) -> list:
        if self.refuse is not None:
            return [Send(identity, HostRefused(message=self.refuse))]
        bad = [a.actor_id for a in msg.actors if not LOCAL_ID.match(a.actor_id) or len(qualified(name, a.actor_id)) > 64]
        if bad:
            return [Send(identity, HostRefused(message=f"actor ids {bad[:3]} are not NAME-safe or too long"))]
        out = []
        if identity in self._by_identity:
            self.bad_messages += 1   # one hello per agent connection
            return []
        if name in self.hosts:   # the same key again: that host came back (its old agent is gone)
            out += self._lose(self.hosts[name], f"host {name} joined again")
        actors = tuple(RemoteActor(qualified(name, a.actor_id), name, a.actor_id, a.device, a.threads)
                       for a in msg.actors)
        host = Host(name, identity, msg, now, actors)
        self.hosts[name], self._by_identity[identity] = host, host
        return out + [Send(identity, HostWelcome(name=name, beat_s=self.beat_s, lost_after_s=self.lost_after_s)),
                      HostJoined(name, actors)]

    def _lose(self, host: Host, why: str) -> list:
        self.hosts.pop(host.name, None)
        self._by_identity.pop(host.identity, None)
        return [HostLost(host.name, why, tuple(a.actor_id for a in host.actors))]
