"""What the host agent of ``leptonrt join`` does, decided with no sockets, no processes and no clock.

The shell (``agent.Agent``) joins the head; then it feeds this core the head's messages
(``handle``), its actors' exits (``exited``), the passing of time (``tick``) and a signal
(``stop``), and carries out the effects in order: ``Send`` a message to the head, ``Spawn``
or ``Kill`` an actor, hand a message to the host cache's fill (``Fill``) or to the desk that
holds a streaming actor's rows (``ToDesk``), and ``Leave`` with an exit code.

::

    agent:  joining --welcomed--> serving --stopped--> left     (HostBye; exit 0)
                                  serving --head_lost--> left   (the head closed, or went silent; exit 69)

Only the broker grants steps, so actors that lost it can do nothing but wait; leaving stops
them all the same, at once, so a host cut off holds nothing (no split brain).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import Union

from ..messages import (ActorExited, BatchRows, CacheChunk, CacheDone, CacheOffer, HostBeat, HostBye, HostWelcome,
                        KillActor, Message, StartActor)
from ..tables import Table

__all__ = ["AGENT", "AgentCore", "AgentState", "Fill", "Kill", "Leave", "Send", "Spawn", "ToDesk"]


class AgentState(Enum):
    JOINING = "joining"   # asking the head for a place (the shell's handshake)
    SERVING = "serving"   # its actors are members of the head's pool
    LEFT = "left"


AGENT = Table("agent", {
    (AgentState.JOINING, "welcomed"): AgentState.SERVING,
    (AgentState.SERVING, "stopped"): AgentState.LEFT,
    (AgentState.SERVING, "head_lost"): AgentState.LEFT,
})


@dataclass(frozen=True)
class Send:
    message: Message          # to the head


@dataclass(frozen=True)
class Spawn:
    actor_id: str             # start it (a process it still has is replaced, its exit no news)
    incarnation: int


@dataclass(frozen=True)
class Kill:
    actor_id: str


@dataclass(frozen=True)
class Fill:
    message: Message          # CacheOffer, CacheChunk or CacheDone: for this host's dataset cache


@dataclass(frozen=True)
class ToDesk:
    message: BatchRows        # a frame of a streaming actor's rows


@dataclass(frozen=True)
class Leave:
    code: int                 # 0: asked to (a signal); 69: the head closed or went silent
    why: str


Effect = Union[Send, Spawn, Kill, Fill, ToDesk, Leave]


class AgentCore:
    """One host's agent once it has joined; ``actor_ids``: the actors it runs, one per device."""

    def __init__(self, actor_ids: Collection[str], head: str) -> None:
        self.actor_ids, self.head = frozenset(actor_ids), head
        self.state = AgentState.JOINING
        self.beat_s = self.lost_after_s = 0.0
        self._heard = self._beat = 0.0

    def welcomed(self, welcome: HostWelcome, now: float) -> list[Effect]:
        """The head took this host: start one actor per device."""
        self.state = AGENT.apply(self.state, "welcomed")
        self.beat_s, self.lost_after_s = welcome.beat_s, welcome.lost_after_s
        self._heard = self._beat = now
        return [Spawn(actor_id, 0) for actor_id in sorted(self.actor_ids)]

    @property
    def wait_s(self) -> float:
        """How long the shell may wait for news before the next ``tick``."""
        return self.beat_s / 2

    def handle(self, msg: Message, now: float) -> list[Effect]:
        """One message from the head."""
        if self.state != AgentState.SERVING:
            return []
        self._heard = now
        if isinstance(msg, BatchRows):
            return [ToDesk(msg)]
        if isinstance(msg, (CacheOffer, CacheChunk, CacheDone)):
            return [Fill(msg)]
        if isinstance(msg, StartActor) and msg.actor_id in self.actor_ids:
            return [Spawn(msg.actor_id, msg.incarnation)]
        if isinstance(msg, KillActor) and msg.actor_id in self.actor_ids:
            return [Kill(msg.actor_id)]
        if isinstance(msg, HostBye):
            return self._leave("head_lost", 69, f"the head at {self.head} closed ({msg.reason}): "
                                                "this host's actors are stopped")
        return []   # a beat's answer, or what is not for an agent

    def exited(self, actor_id: str, how: str) -> list[Effect]:
        """One of its actors ended (the head decides whether it starts again)."""
        return [Send(ActorExited(actor_id=actor_id, how=how))]

    def tick(self, now: float, running: int) -> list[Effect]:
        """A beat when one is due (``running``: its actors' processes alive); leave when the
        head has been silent for ``lost_after_s``."""
        if self.state != AgentState.SERVING:
            return []
        out: list[Effect] = []
        if now - self._beat >= self.beat_s:
            out.append(Send(HostBeat(running=running)))
            self._beat = now
        if now - self._heard > self.lost_after_s:
            out += self._leave("head_lost", 69, f"lost the head at {self.head} (silent for {now - self._heard:.1f} "
                                                "s): this host's actors are stopped")
        return out

    def stop(self, why: str) -> list[Effect]:
        """A signal: say goodbye and leave."""
        if self.state != AgentState.SERVING:
            return []
        return [Send(HostBye(reason=f"the agent was stopped ({why})"))] + self._leave(
            "stopped", 0, f"leaving {self.head} ({why}): stopping this host's actors")

    def _leave(self, event: str, code: int, why: str) -> list[Effect]:
        self.state = AGENT.apply(self.state, event)
        return [Leave(code, why)]
