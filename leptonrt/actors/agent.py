"""The host agent of ``leptonrt join``: this host's devices as members of a remote broker.

    join (service, CURVE) -> Joined: the actors' channel
      -> HostHello there -> HostWelcome (or HostRefused: exit 78)
      -> one actor per device, started as ``up`` starts them (the Supervisor), connecting to
         the actors' channel over CURVE with this host's keys
      -> what the head says and the actors do, through ``agentcore.AgentCore`` (pure: beats,
         exits, starts and kills, the head's silence, leaving); the shell here carries out
         its effects: the sockets, the processes, this host's dataset cache when offered one
         (``data.transfer``: its actors map that copy) and, with ``--data stream``, the desk
         that holds each actor's rows as the head streams them (``rows``).

A key the head refuses shows as a failed CURVE handshake on the join socket's monitor: a
one-line error and exit 78, never a wait.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import messages
from ..curve import arm_client
from ..data.hostcache import HostCache
from ..data.shm import new_run_id
from ..data.transfer import Receiver, refusal
from ..errors import ConfigError, LeptonError, NoDeviceError, ProtocolError
from ..interfaces import UNSAFE, gradient_iface
from ..keys import keys_dir, load_keypair, read_public_key
from ..messages import (ACTOR_LIMITS, SERVICE_LIMITS, CacheDone, CacheHave, CacheOffer, HostActor, HostDataset,
                        HostHello, HostRefused, HostWelcome, Join, Joined, Rejected)
from .agentcore import AgentCore, Fill, Kill, Leave, Send, Spawn, ToDesk
from .devices import allowed_cores, core_sets, select
from .rows import ENV as ROWS_ENV, Desk
from .spawn import Supervisor
from .tether import make_run_dir

JOIN_TIMEOUT_S = 15.0   # a head that has not answered the join (or the hello) by then is not there
RETRY_S = 0.5           # how often a join is asked again while the head is still starting
_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class HeadLost(NoDeviceError):
    """The head closed, or went silent (exit 69)."""


@dataclass(frozen=True)
class AgentConfig:
    address: str                  # the head's --listen, tcp://HOST:PORT
    server_key: str               # the head's public.key
    keys: str | None              # this host's key directory
    gpus: str = "all"
    cpu_actors: int | None = None
    pin: bool = True
    gradient_iface: str | None = None
    trust_network: bool = False
    data: str = "cache"           # "stream": hold no training rows, take each step's by value


class Agent:
    """One host's agent; ``run()`` returns the exit code (raising LeptonError for the CLI)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.head_host = config.address.removeprefix("tcp://").rpartition(":")[0]
        self._stop: str | None = None   # why we leave (a signal), once asked

    def run(self) -> int:
        config = self.config
        server, own = read_public_key(config.server_key), load_keypair(config.keys)
        iface = gradient_iface(config.gradient_iface, config.trust_network, self.head_host.strip("[]"))
        if iface is None:
            raise ConfigError(UNSAFE)
        selection = select(config.gpus, config.cpu_actors)
        ids = [f"a{rank}" for rank in range(len(selection.actors))]
        self.plans = dict(zip(ids, selection.actors))
        cores = core_sets(selection, allowed_cores()) if config.pin else [None] * len(ids)
        self.cores = dict(zip(ids, cores))
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda n, _f: setattr(self, "_stop", signal.Signals(n).name))
        ctx = zmq.Context()
        link = supervisor = None
        self.cache = HostCache(new_run_id())   # this host's copies of the datasets it is sent
        self._fills: dict[str, tuple[CacheOffer, Receiver]] = {}
        self.desk: Desk | None = None          # its actors' rows by value (``--data stream``)
        try:
            endpoint = self._join(ctx, server, own)
            link = ctx.socket(zmq.DEALER)
            link.linger = 500
            link.set(zmq.MAXMSGSIZE, ACTOR_LIMITS.frame_bytes)
            arm_client(link, server, own)
            link.connect(endpoint)
            welcome = self._hello(link, ids, selection, iface)
            env = {"LEPTONRT_SERVER_KEY": str(Path(config.server_key).resolve()),
                   "LEPTONRT_KEYS": str(keys_dir(config.keys).resolve()), "GLOO_SOCKET_IFNAME": iface}
            run_dir = Path(make_run_dir())
            if config.data == "stream":   # its actors ask for their rows here (``rows``)
                self.desk = Desk(ctx, run_dir)
                env[ROWS_ENV] = self.desk.endpoint
            self.env = env
            supervisor = Supervisor(run_dir, endpoint, env, gpus=selection.any_gpu)
            core = AgentCore(ids, config.address)
            self._apply(core.welcomed(welcome, time.monotonic()), link, supervisor)   # its actors start
            print(f"leptonrt: joined {config.address} as {welcome.name}: {len(ids)} actor(s) "
                  f"({', '.join(p.device for p in selection.actors)}), gradients on {iface} (Ctrl-C to leave)",
                  file=sys.stderr, flush=True)
            return self._serve(link, supervisor, core)
        finally:
            if supervisor is not None:
                supervisor.close(grace=2.0)
                shutil.rmtree(supervisor.run_dir, ignore_errors=True)
            self.cache.close()   # every copy is freed: the actors that mapped them are gone
            if self.desk is not None:
                self.desk.close()
            if link is not None:
                link.close()
            ctx.term()

    # -- joining ----------------------------------------------------------------------------

    def _join(self, ctx: zmq.Context, server: bytes, own) -> str:
        """Ask the service where the actors' channel is; ConfigError (78) when the head refuses
        this host's key, NoDeviceError (69) when nothing answers."""
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.set(zmq.MAXMSGSIZE, SERVICE_LIMITS.frame_bytes)
        sock.set(zmq.IPV6, self.head_host.startswith("["))
        arm_client(sock, server, own)
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | _FAILED)
        try:
            sock.connect(self.config.address)
            return self._ask_join(sock, monitor)
        finally:
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _ask_join(self, sock: zmq.Socket, monitor: zmq.Socket) -> str:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        join = messages.encode(Join(version=_version("leptonrt")))
        deadline, asked = time.monotonic() + JOIN_TIMEOUT_S, -RETRY_S
        while (left := deadline - time.monotonic()) > 0 and self._stop is None:
            if time.monotonic() - asked >= RETRY_S:
                try:   # queued until the handshake succeeds (a repeat is harmless); never blocking:
                    sock.send(join, zmq.NOBLOCK)   # a failed handshake leaves no pipe to queue on
                except zmq.Again:
                    pass
                asked = time.monotonic()
            ready = dict(poller.poll(max(1, int(min(left, RETRY_S) * 1000))))
            if monitor in ready and recv_monitor_message(monitor)["event"] & _FAILED:
                raise ConfigError(f"the head at {self.config.address} refused this host's key (is it allowed there, "
                                  f"`leptonrt keys allow`, and is --server-key the head's public.key?)")
            if sock in ready:
                reply = _decode(sock.recv(), SERVICE_LIMITS)
                if isinstance(reply, Joined):
                    return self._reachable(reply.actor_endpoint)
                if isinstance(reply, Rejected) and reply.exit_code != 75:
                    raise ConfigError(f"the head refused the join: {reply.message}")
        if self._stop is not None:
            raise KeyboardInterrupt
        raise NoDeviceError(f"no leptonrt head answered at {self.config.address} within {JOIN_TIMEOUT_S:.0f} s")

    def _reachable(self, endpoint: str) -> str:
        """The actors' channel as this host reaches it: a wildcard host is the head's address."""
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        if host in ("0.0.0.0", "*", "[::]", "[*]"):
            host = self.head_host
        return f"tcp://{host}:{port}"

    def _hello(self, link: zmq.Socket, ids: list[str], selection, iface: str) -> HostWelcome:
        import psutil
        versions = tuple(f"{name} {_version(name)}" for name in ("leptonrt", "torch")) + (
            f"python {platform.python_version()}",)
        _send(link, HostHello(
            pid=os.getpid(), actors=[HostActor(a, p.device, p.threads) for a, p in zip(ids, selection.actors)],
            memory_bytes=psutil.virtual_memory().total,
            versions=versions, gradient_iface=iface, data=self.config.data))
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0 and self._stop is None:
            if not link.poll(int(min(left, RETRY_S) * 1000)):
                continue
            reply = _decode(link.recv(), ACTOR_LIMITS)
            if isinstance(reply, HostWelcome):
                return reply
            if isinstance(reply, HostRefused):
                raise ConfigError(f"the head refused this host: {reply.message}")
        if self._stop is not None:
            raise KeyboardInterrupt
        raise NoDeviceError(f"the head at {self.config.address} did not answer this host's hello")

    # -- serving ----------------------------------------------------------------------------

    def _serve(self, link: zmq.Socket, supervisor: Supervisor, core: AgentCore) -> int:
        """Move bytes between the head, the actors and the core until the core leaves."""
        poller = zmq.Poller()
        poller.register(link, zmq.POLLIN)
        if self.desk is not None:
            poller.register(self.desk.sock, zmq.POLLIN)
        while True:
            ready = dict(poller.poll(int(core.wait_s * 1000)))
            effects = []
            if link in ready:
                while link.poll(0):
                    msg = _decode(link.recv(), ACTOR_LIMITS)
                    if msg is not None:
                        effects += core.handle(msg, time.monotonic())
            if self.desk is not None and self.desk.sock in ready:
                effects += [Send(credit) for credit in self.desk.requests()]
            for actor_id, how in supervisor.exited():
                effects += core.exited(actor_id, how)
            effects += core.tick(time.monotonic(), sum(p is not None for p in supervisor.pids().values()))
            if self._stop is not None:
                effects += core.stop(self._stop)
            left = self._apply(effects, link, supervisor)
            if left is not None:
                if left.code:
                    raise HeadLost(left.why)
                print(f"leptonrt: {left.why}", file=sys.stderr, flush=True)
                return 0

    def _apply(self, effects: list, link: zmq.Socket, supervisor: Supervisor) -> Leave | None:
        """Carry out the core's effects in order, up to the first Leave (returned)."""
        for effect in effects:
            if isinstance(effect, Send):
                _send(link, effect.message)
            elif isinstance(effect, Spawn):
                supervisor.kill(effect.actor_id)   # a process it still has is replaced, its exit no news
                supervisor.spawn(effect.actor_id, self.plans[effect.actor_id],
                                 {**self.env, "LEPTONRT_INCARNATION": str(effect.incarnation)},
                                 self.cores[effect.actor_id])
            elif isinstance(effect, Kill):
                supervisor.kill(effect.actor_id)
            elif isinstance(effect, ToDesk):
                for credit in self.desk.frame(effect.message) if self.desk is not None else ():
                    _send(link, credit)
            elif isinstance(effect, Fill):
                for reply in self._fill(effect.message):
                    _send(link, reply)
                    if isinstance(reply, CacheHave):
                        _send(link, HostDataset(fingerprint=reply.fingerprint, data=self.cache.info(reply.fingerprint)))
            elif isinstance(effect, Leave):
                return effect
        return None

    def _fill(self, msg: messages.Message) -> list[messages.Message]:
        """One message of a cache fill in, the answers out (see ``data.transfer``)."""
        if isinstance(msg, CacheOffer):
            if self.cache.has(msg.fingerprint):
                return [CacheHave(fingerprint=msg.fingerprint)]   # a later job on the same data
            try:
                receiver = Receiver(msg, self.cache.sink(msg))
            except LeptonError as exc:   # no room, or an offer that does not match its content
                return [refusal(msg, exc)]
            self._fills[msg.fingerprint] = (msg, receiver)
            return receiver.start()
        offer, receiver = self._fills.get(msg.fingerprint, (None, None))
        if receiver is None:
            return []   # a fill we refused or ended already
        try:
            out = receiver.handle(msg)
        except LeptonError as exc:   # the receiver aborted its sink: nothing partial is kept
            del self._fills[msg.fingerprint]
            return [refusal(offer, exc)]
        if isinstance(msg, CacheDone):
            del self._fills[msg.fingerprint]
        return out


def _send(link: zmq.Socket, msg: messages.Message) -> None:
    """Send without ever blocking: with the head gone, what cannot be queued is dropped (the
    head's silence is what the agent acts on)."""
    try:
        link.send(messages.encode(msg), zmq.NOBLOCK)
    except zmq.Again:
        pass


def _decode(frame: bytes, limits) -> messages.Message | None:
    try:
        return messages.decode(frame, limits)
    except ProtocolError:
        return None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
