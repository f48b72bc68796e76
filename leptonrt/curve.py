"""CURVE on our sockets: a server that admits only allowed keys, and the proof that it does.

ZeroMQ's CURVE fails open in two ways: a CURVE server admits every key when no ZAP
handler answers (unless ``ZAP_ENFORCE_DOMAIN`` is set), and it asks no handler at all
when its ``zap_domain`` is empty (even when it is set). So:

- ``Authenticator`` is the ZAP handler: a thread on the socket's own libzmq context that
  admits a key only while it is in ``authorized/`` (or held for the self-test), and
  replies with the key's NAME as the connection's User-Id;
- ``arm_server`` sets CURVE, the domain and ``ZAP_ENFORCE_DOMAIN`` together, and refuses
  to arm a socket without a live authenticator on its context;
- ``self_test`` proves it over the listening socket itself: a throwaway rogue key and a
  client with no CURVE must be refused, a throwaway allowed key admitted;
- ``Authenticator.sender`` re-checks every message, so a key revoked while its connection
  is open is cut off at its next message.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from .errors import InternalError
from .keys import AuthorizedKeys, KeyPair

DOMAIN = b"leptonrt"                 # ZAP domain of every CURVE socket of ours: never empty
ZAP_ENDPOINT = "inproc://zeromq.zap.01"   # where libzmq looks for a context's ZAP handler (RFC 27)
KEY_PROPERTY = "X-Leptonrt-Key"      # ZAP metadata: the z85 key a connection was admitted with
POLL_MS = 50                         # how often the ZAP thread looks for a stop request, in ms
SELF_TEST_S = 1.0                    # seconds the self-test waits for all three verdicts
SELF_TEST_NAME = "(self-test)"       # not a valid file NAME, so no allowed key can collide with it
_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@dataclass(frozen=True)
class AuthStatistics:
    """What the authenticator has decided since it started."""

    admitted: int     # handshakes admitted (self-test ones included)
    refused: int      # handshakes refused: unknown key, wrong domain or mechanism, malformed request
    cut_off: int      # messages dropped because their sender's key is no longer allowed
    allowed_keys: int   # keys in authorized/ now
    problems: tuple[str, ...]   # files or directory ignored, and why


class Authenticator:
    """The ZAP handler of one libzmq context, answering from a thread of its own.

    ``context`` may be a ``zmq.asyncio.Context``: the thread uses a shadow of the same
    libzmq context, since ZAP requests never cross contexts. Use as a context manager, or
    ``start()`` then ``close()`` (before the context is terminated)."""

    def __init__(self, context: zmq.Context, allowed: AuthorizedKeys, domain: bytes = DOMAIN) -> None:
        if not domain:
            raise InternalError("a ZAP domain must not be empty: libzmq then skips authentication")
        self.allowed, self.domain = allowed, domain
        self._context = zmq.Context.shadow(context.underlying)
        self._held: dict[bytes, str] = {}   # z85 key -> name, in memory only (the self-test's)
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._admitted = self._refused = self._cut_off = 0

    @property
    def underlying(self) -> int:
        """Address of the libzmq context this handler serves."""
        return self._context.underlying

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._ready.is_set() and self._error is None

    def start(self, timeout_s: float = 1.0) -> "Authenticator":
        """Bind the handler; InternalError if another handler holds the context or it does not come up."""
        self.allowed.check()   # a missing or unsafe authorized/ is the user's ConfigError, before any thread
        self._thread = threading.Thread(target=self._serve, name="leptonrt-zap", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            self.close()
            raise InternalError(f"the CURVE authenticator did not start: {self._error or 'no answer'}")
        return self

    def close(self, timeout_s: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> "Authenticator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def sender(self, frame: zmq.Frame) -> str | None:
        """The allowed name of whoever sent ``frame`` (received with ``copy=False`` on an armed
        socket), or None when its key is not allowed now: drop the message."""
        try:
            name, key = frame.get("User-Id"), frame.get(KEY_PROPERTY).encode()
        except (zmq.ZMQError, UnicodeError):   # no metadata: not admitted by us
            return None
        if self.still_authorised(name, key):
            return name
        self._cut_off += 1
        return None

    def still_authorised(self, user_id: str, key: bytes) -> bool:
        """Whether z85 ``key`` is allowed as ``user_id`` now (one ``stat`` when nothing changed)."""
        return self._held.get(key) == user_id or self.allowed.name_of(key) == user_id

    @contextmanager
    def holding(self, key: bytes, name: str = SELF_TEST_NAME) -> Iterator[None]:
        """Admit z85 ``key`` as ``name`` while inside; never written to disk."""
        self._held[key] = name
        try:
            yield
        finally:
            self._held.pop(key, None)

    def statistics(self) -> AuthStatistics:
        allowed = self.allowed.snapshot()
        return AuthStatistics(self._admitted, self._refused, self._cut_off, len(allowed), self.allowed.problems)

    def _serve(self) -> None:
        rep = self._context.socket(zmq.REP)
        rep.linger = 0
        try:
            rep.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = f"cannot bind {ZAP_ENDPOINT} ({exc}): another ZAP handler holds this context"
        self._ready.set()
        try:
            while self._error is None and not self._stop.is_set():
                if rep.poll(POLL_MS):
                    rep.send_multipart(self._answer_safely(rep.recv_multipart()))
        except zmq.ContextTerminated:
            pass
        finally:
            rep.close(linger=0)

    def _answer_safely(self, request: list[bytes]) -> list[bytes]:
        try:
            return self.answer(request)
        except Exception:   # a bug of ours must refuse that one handshake, not stop authenticating
            return self._refuse(request[1] if len(request) > 1 else b"", b"internal error", b"500")

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply (RFC 27) to one request: 200 with the key's name as User-Id, else 400."""
        request_id = request[1] if len(request) > 1 else b""
        if len(request) != 7 or request[0] != b"1.0":
            return self._refuse(request_id, b"malformed ZAP request")
        _version, _id, domain, _address, _identity, mechanism, credentials = request
        if domain != self.domain or mechanism != b"CURVE" or len(credentials) != 32:
            return self._refuse(request_id, b"not a CURVE request for " + self.domain)
        key = z85.encode(credentials)
        name = self._held.get(key) or self.allowed.name_of(key)
        if name is None:
            return self._refuse(request_id, b"key not allowed")
        self._admitted += 1
        return [b"1.0", request_id, b"200", b"OK", name.encode(), _properties({KEY_PROPERTY: key})]

    def _refuse(self, request_id: bytes, why: bytes, status: bytes = b"400") -> list[bytes]:
        self._refused += 1
        return [b"1.0", request_id, status, why, b"", b""]


def _properties(values: dict[str, bytes]) -> bytes:
    """ZMTP metadata: name length (1 byte), name, value length (4 bytes, big-endian), value."""
    return b"".join(bytes([len(k)]) + k.encode() + struct.pack(">I", len(v)) + v for k, v in values.items())


def arm_server(sock: zmq.Socket, server: KeyPair, authenticator: Authenticator, beside_ipc: bool = False) -> None:
    """Make ``sock`` (not yet bound) a CURVE server whose every connection asks ``authenticator``.
    Both ways CURVE fails open are closed here: the domain is never empty and is enforced, and
    a socket is never armed without a live authenticator on its own context.

    ``beside_ipc``: ``sock`` may already listen on one private ``ipc://`` endpoint, which keeps
    the mechanism it was bound with (libzmq copies a socket's options into each listener as it
    binds): the actors' channel serves local actors there, and remote ones over CURVE."""
    if not authenticator.alive:
        raise InternalError("refusing to arm a CURVE socket without a live authenticator")
    if sock.context.underlying != authenticator.underlying:
        raise InternalError("the authenticator serves another zmq context than this socket's")
    bound = sock.get(zmq.LAST_ENDPOINT)
    if bound and not (beside_ipc and bound.startswith(b"ipc://") and not sock.get(zmq.CURVE_SERVER)):
        raise InternalError("arm a CURVE socket before it binds: options do not reach an existing listener")
    sock.set(zmq.CURVE_SERVER, 1)
    sock.set(zmq.CURVE_SECRETKEY, server.secret)
    sock.set(zmq.ZAP_DOMAIN, authenticator.domain)
    sock.set(zmq.ZAP_ENFORCE_DOMAIN, 1)
    if (sock.get(zmq.CURVE_SERVER), sock.get(zmq.ZAP_DOMAIN), sock.get(zmq.ZAP_ENFORCE_DOMAIN)) != (
            1, authenticator.domain, 1):
        raise InternalError("libzmq did not keep the CURVE options just set")


def arm_client(sock: zmq.Socket, server_public: bytes, own: KeyPair) -> None:
    """Make ``sock`` (not yet connected) a CURVE client of the server whose z85 public key is
    ``server_public`` (``keys.read_public_key(--server-key)``), with its own keys ``own``
    (``keys.load_keypair(--keys)``)."""
    sock.set(zmq.CURVE_SERVERKEY, server_public)
    sock.set(zmq.CURVE_PUBLICKEY, own.public)
    sock.set(zmq.CURVE_SECRETKEY, own.secret)


def loopback_endpoint(endpoint: str) -> str:
    """A connectable form of a bound endpoint: a wildcard host becomes the loopback address."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[6:].rpartition(":")
    host = {"*": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]", "[*]": "[::1]"}.get(host, host)
    return f"tcp://{host}:{port}"


# -- the start-up self-test ------------------------------------------------------------------

def self_test(endpoint: str, server_public: bytes, authenticator: Authenticator,
              timeout_s: float = SELF_TEST_S) -> None:
    """Prove that the server listening at ``endpoint`` (its ``last_endpoint``) refuses a rogue
    CURVE key and a client with no CURVE, and admits an allowed key; InternalError (exit 70)
    otherwise, so the service refuses to start. Blocks for at most about ``timeout_s``."""
    address, rogue, member = loopback_endpoint(endpoint), KeyPair(*zmq.curve_keypair()), KeyPair(*zmq.curve_keypair())
    ctx = zmq.Context()
    try:
        with ExitStack() as stack, authenticator.holding(member.public):
            monitors = {"a rogue CURVE key": _probe(ctx, stack, address, server_public, rogue),
                        "a client without CURVE": _probe(ctx, stack, address, None, None),
                        "an allowed key": _probe(ctx, stack, address, server_public, member)}
            verdicts = _wait_verdicts(monitors, timeout_s)
    finally:
        ctx.term()
    wrong = [f"{name}: expected {EXPECTED[name][0]}, saw {verdicts[name]}"
             for name in monitors if not EXPECTED[name][1](verdicts[name])]
    if wrong:
        raise InternalError(f"CURVE self-test at {address} failed ({'; '.join(wrong)}): refusing to serve")


REFUSED = "refused by the authenticator"
# probe -> (what must happen, as words; whether a verdict is that). A rogue key must meet the
# authenticator's own 'no': a refusal for any other cause could hide a server that asks no one.
EXPECTED = {"a rogue CURVE key": (REFUSED, lambda v: v == REFUSED),
            "a client without CURVE": ("a refusal", lambda v: v.startswith("refused")),
            "an allowed key": ("admitted", lambda v: v == "admitted")}


def _probe(ctx: zmq.Context, stack: ExitStack, address: str, server_public: bytes | None,
           own: KeyPair | None) -> zmq.Socket:
    """Connect one throwaway DEALER; returns its monitor socket. Both close when ``stack`` does."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    stack.callback(sock.close, 0)
    sock.set(zmq.IPV6, address.startswith("tcp://["))
    sock.set(zmq.RECONNECT_IVL, 10_000)   # one attempt within the test: no retry storm at a refusing server
    if own is not None:
        arm_client(sock, server_public, own)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _FAILED | zmq.EVENT_DISCONNECTED)
    stack.callback(monitor.close, 0)
    stack.callback(sock.disable_monitor)
    sock.connect(address)
    return monitor


def _wait_verdicts(monitors: dict[str, zmq.Socket], timeout_s: float) -> dict[str, str]:
    """name -> 'admitted', REFUSED, 'refused (cause)' or 'not answered within …s'."""
    verdicts = {name: f"not answered within {timeout_s:g}s" for name in monitors}
    pending, deadline = dict(monitors), time.monotonic() + timeout_s
    poller = zmq.Poller()
    for monitor in monitors.values():
        poller.register(monitor, zmq.POLLIN)
    while pending and (left := deadline - time.monotonic()) > 0:
        ready = dict(poller.poll(max(1, int(left * 1000))))
        for name, monitor in list(pending.items()):
            if monitor in ready:
                verdict = _verdict(recv_monitor_message(monitor))
                if verdict is not None:
                    verdicts[name] = verdict
                    poller.unregister(pending.pop(name))
    return verdicts


def _verdict(event: dict) -> str | None:
    """What one monitor event says about a handshake, or None if it says nothing yet."""
    kind = event["event"]
    if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return "admitted"
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH and event["value"] == 400:
        return REFUSED
    if kind & _FAILED or kind == zmq.EVENT_DISCONNECTED:
        return f"refused ({zmq.Event(kind).name}, {event['value']})"
    return None
