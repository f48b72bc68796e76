"""What the service lets in: the checks on a client's message before anything acts on it.

Pure: ``admit(identity, frames, now)`` says what to do with one message, and counts it.
The service shell does the rest. Everything here is cheap and bounded, so a flood of
messages costs little per message and cannot grow the broker's memory:

- a message with the wrong number of frames, one that is not a valid frame, or one of a
  kind clients do not send is a counted rejection;
- each client has a token bucket: ``rate`` requests a second, bursts of ``burst``; what
  goes over is dropped unanswered (a client that waits for its answers never gets there:
  ``leptonrt top`` asks 4 times a second);
- a client that keeps sending bad messages (``strikes`` of them) is ignored for
  ``cooldown_s``: its messages are dropped without being decoded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum

from .. import messages
from ..errors import ProtocolError
from ..messages import CLIENT_LIMITS, CancelRequest, Join, StatusRequest, StopRequest, Submit

CLIENT_KINDS = (Submit, StatusRequest, StopRequest, CancelRequest, Join)


@dataclass(frozen=True)
class GateConfig:
    rate: float = 20.0        # requests per second a client may send, sustained
    burst: float = 50.0       # requests a client may send at once
    strikes: int = 10         # bad messages in a row before a client is ignored...
    cooldown_s: float = 10.0  # ...for this long
    clients: int = 10_000     # clients remembered at once (the least recently heard are forgotten)


class Verdict(Enum):
    ACCEPT = "accept"         # a valid request: act on it
    REJECT = "reject"         # invalid: answer with the reason (the message is counted)
    DROP = "drop"             # over the client's rate, or the client is ignored: no answer


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    message: messages.Message | None = None   # ACCEPT: the decoded request
    reason: str = ""                           # REJECT: why, for the client


@dataclass(frozen=True)
class GateStatistics:
    accepted: int = 0
    decode_errors: int = 0         # not a valid frame (bad msgpack, version, kind or field)
    invalid_messages: int = 0      # wrong frame count, or a kind clients do not send
    dropped: int = 0               # over a client's rate, or from an ignored client
    clients_disconnected: int = 0  # clients put in the cool-down for repeated bad messages


@dataclass
class _Client:
    tokens: float
    heard: float
    strikes: int = 0
    ignored_until: float = 0.0


class Gate:
    """Rate limits and counts the clients' messages."""

    def __init__(self, config: GateConfig = GateConfig()) -> None:
        self.config = config
        self._clients: OrderedDict[bytes, _Client] = OrderedDict()
        self._counts = dict.fromkeys(GateStatistics.__dataclass_fields__, 0)

    def admit(self, identity: bytes, frames: list[bytes], now: float) -> Admission:
        client = self._client(identity, now)
        if now < client.ignored_until or not self._take_token(client, now):
            return self._count("dropped", Admission(Verdict.DROP))
        if len(frames) != 1:
            return self._strike(client, now, "invalid_messages",
                                f"a request is one frame after the identity, got {len(frames)}")
        try:
            message = messages.decode(frames[0], CLIENT_LIMITS)
        except ProtocolError as exc:
            return self._strike(client, now, "decode_errors", f"bad request: {exc}")
        if not isinstance(message, CLIENT_KINDS):
            return self._strike(client, now, "invalid_messages", f"clients do not send {type(message).__name__}")
        client.strikes = 0
        return self._count("accepted", Admission(Verdict.ACCEPT, message))

    def statistics(self) -> GateStatistics:
        return GateStatistics(**self._counts)

    def _client(self, identity: bytes, now: float) -> _Client:
        client = self._clients.pop(identity, None)
        if client is None:
            client = _Client(tokens=self.config.burst, heard=now)
            while len(self._clients) >= self.config.clients:
                self._clients.popitem(last=False)
        self._clients[identity] = client   # most recently heard last
        return client

    def _take_token(self, client: _Client, now: float) -> bool:
        elapsed = max(now - client.heard, 0.0)
        client.tokens = min(self.config.burst, client.tokens + elapsed * self.config.rate)
        client.heard = now
        if client.tokens < 1.0:
            return False
        client.tokens -= 1.0
        return True

    def _strike(self, client: _Client, now: float, counter: str, reason: str) -> Admission:
        client.strikes += 1
        if client.strikes >= self.config.strikes:
            client.strikes, client.ignored_until = 0, now + self.config.cooldown_s
            self._counts["clients_disconnected"] += 1
        return self._count(counter, Admission(Verdict.REJECT, reason=reason[:4000]))

    def _count(self, counter: str, admission: Admission) -> Admission:
        self._counts[counter] += 1
        return admission
