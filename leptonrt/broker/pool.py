"""The broker's long-lived half: one actor process per device, the channel they talk to,
the rendezvous store they form groups through, and the shared-memory dataset cache; and the
actors of hosts that joined (``leptonrt join``), which reach the same channel over CURVE."""

from __future__ import annotations

import itertools
import shutil
import socket
import time
from collections.abc import Iterable
from dataclasses import replace

import zmq

from .. import messages as protocol
from ..actors.devices import ActorPlan, Selection, allowed_cores, core_sets, select
from ..actors.spawn import Supervisor
from ..actors.tether import clean_stale_run_dirs
from ..data.cache import DatasetCache
from ..data.shm import clean_stale, new_run_id
from ..errors import ProtocolError
from ..imports import allowed_modules
from ..messages import ACTOR_LIMITS, BatchCredit, KillActor, Shutdown, StartActor, StoreRequest
from .channel import Channel, PeerGone
from .fill import FILL_MESSAGES, Fills, JobData, Offers
from .hosts import HOST_MESSAGES, HostTable, RemoteActor, qualified
from .joined import JoinedHosts
from .cores import Lending
from .store import StoreCore
from .streams import Streams


class ActorPool(JoinedHosts):
    """The broker's long-lived half: one actor process per device, the socket they talk to,
    the store where they form gradient groups and the shared-memory dataset cache.

    Actors outlive jobs: after each job they say hello again and wait for the next one.
    An idle actor that dies is started again; after a failed job every actor is replaced
    (a survivor may still sit in a broken collective). With more than one CPU actor, one
    spare CPU process waits, started and warmed up: a lost CPU actor is replaced by
    adopting it (milliseconds) instead of starting a process (a fork from the warm fork
    server takes a fraction of a second; an interpreter of its own, seconds).

    A spare started with an interpreter of its own (``LEPTONRT_SPAWN=popen``, GPU actors, or
    no fork server) takes over two seconds of CPU to start, and the CPU actors have every core
    between them, so it would come out of a running job: even at idle priority it cost a
    2-actor job on 2 cores about a tenth of its speed while it got ready. So it starts at
    idle priority, and only while the pool is idle (between jobs) or once a job has run
    ``SPARE_AFTER_S``. A job shorter than that has no spare: a lost actor is replaced by a
    new process (seconds).
    """

    SPARE = "spare"
    SPARE_AFTER_S = 20.0

    def __init__(self, gpus: str = "all", cpu_actors: int | None = None,
                 actor_env: dict[str, str] | None = None, pin: bool = True, cache_bytes: int | None = None,
                 allow_imports: Iterable[str] | None = (), supervisor: Supervisor | None = None,
                 listen: str | None = None, keys: str | None = None, hosts_refused: str | None = None) -> None:
        # a supervisor started before the pool (the CLI starts one ahead of its own imports,
        # so that the fork server's overlap them); the pool's to close from now on
        self._early = supervisor
        self.cache_bytes = cache_bytes   # the dataset cache's budget (None: from free memory)
        # the modules a job's py: dataset may run code from (ANY: a local run's own code)
        self.allow_imports = allowed_modules(allow_imports)
        self.selection: Selection = select(gpus, cpu_actors)
        # each CPU actor on cores of its own (its replacements too); None: not pinned
        self.local_ids = [f"a{rank}" for rank in range(len(self.selection.actors))]
        self.cores = core_sets(self.selection, allowed_cores()) if pin else [None] * len(self.selection.actors)
        self.actor_env = actor_env or {}
        self.ids = list(self.local_ids)   # every actor: the local ones, then those of joined hosts
        self.plans: dict[str, ActorPlan] = dict(zip(self.local_ids, self.selection.actors))
        # hosts may join where the broker listens on TCP (``listen``, with the key directory ``keys``)
        self.listen, self.keys = listen, keys
        self.hosts = HostTable(refuse=hosts_refused)
        self.remote: dict[str, RemoteActor] = {}   # the actors of joined hosts, by pool id
        self.actor_endpoint: str | None = None     # where they connect (tcp://, CURVE), once listening
        self.local_host = socket.gethostname() or "local"
        self._auth = None                          # the CURVE authenticator of the actors' channel
        self._live_remote: set[str] = set()        # remote actors whose agent started a process not yet ended
        self._remote_exits: list[tuple[tuple[str, ...], str, str | None]] = []
        self._lent: set[str] = set()               # local actors pinned off their own cores in this job
        self.host_events: list[str] = []           # hosts joined and lost, for the log
        self._probed = 0.0                         # when the agents' connections were last tried
        self._offers = Offers()                    # datasets offered to hosts, hashed once
        self._fills: list[Fills] | None = None     # the hosts' cache fills before a job (whole, test split)
        self.job_data: JobData | None = None       # the running job's data on each host
        self.streams: Streams | None = None        # the running job's rows by value (streaming hosts)
        self.released: list[tuple[bytes, protocol.Message]] = []   # hellos held back, for the job now
        self.job_actors: set[str] | None = None       # the running job's actors (a host that joins later waits)
        self.hellos: dict[str, tuple[bytes, protocol.Hello]] = {}   # idle actors: identity and hello
        self.known: dict[str, protocol.Hello] = {}                   # the last hello of every actor
        self.restarts = dict.fromkeys(self.ids, 0)
        self.exits: list[tuple[str, str]] = []                      # exits seen while idle, for the log
        self._job_ids = itertools.count(1)
        self.started = False
        self.channel: Channel | None = None
        cpu_plans = [p for p in self.selection.actors if p.device == "cpu"]
        self.spare_plan = cpu_plans[0] if len(self.selection.actors) > 1 and cpu_plans else None
        self.spare: tuple[bytes, protocol.Hello] | None = None   # the spare's identity and hello, once ready
        self._spare_process = False   # a spare process is running (ready or getting ready)
        self.outbox: list[tuple[bytes, protocol.Message]] = []   # messages the pool wants sent
        self._spare_starts: list[float] = []

    @property
    def world(self) -> int:
        return len(self.ids)

    def next_job_id(self) -> int:
        return next(self._job_ids)

    async def start(self) -> None:
        """Create the socket, the store and the cache, and start every actor."""
        clean_stale()
        clean_stale_run_dirs()
        self.run_id = new_run_id()
        self.cache = DatasetCache(self.run_id, budget_bytes=self.cache_bytes, allowed_imports=self.allow_imports)
        self.supervisor, self._early = self._early or Supervisor.in_new_run_dir(
            self.actor_env, gpus=self.selection.any_gpu), None
        self.run_dir = self.supervisor.run_dir
        self.started = True
        self.channel = Channel(self.supervisor.connect, ACTOR_LIMITS.frame_bytes)
        if self.listen is not None:
            from .remote import listen_for_hosts
            self._auth, self.actor_endpoint = await listen_for_hosts(self.channel, self.listen, self.keys)
        self.store = StoreCore()   # groups form through it, on this channel (nothing else listens)
        for actor_id in self.local_ids:
            self.supervisor.spawn(actor_id, self.plans[actor_id], {**self.actor_env, "LEPTONRT_INCARNATION": "0"},
                                  self._cores_of(actor_id))

    def job_running(self, seconds: float) -> None:
        """A job has run for ``seconds``: long enough to give it a spare?"""
        if seconds >= self.SPARE_AFTER_S:
            self._start_spare()

    def _start_spare(self) -> None:
        """Start a spare if there is none (called while idle, or once a job has run long enough)."""
        if self._spare_process or self.spare_plan is None:
            return   # one is running, or this pool has none (called on every tick of a long job)
        now = time.monotonic()
        self._spare_starts = [t for t in self._spare_starts if now - t < 60.0]
        if len(self._spare_starts) >= 5:
            return   # it keeps dying: replacements start from scratch
        self._spare_starts.append(now)
        self._spare_process = True
        # a spare is never an actor's first process: injected faults (but `start`) stay off
        # it gets ready at idle priority (see leptonrt.actors.__main__): never at a job's expense
        self.supervisor.spawn(self.SPARE, self.spare_plan,
                              {**self.actor_env, "LEPTONRT_INCARNATION": "1", "LEPTONRT_SPARE": "1"})

    def exited(self, actor_id: str) -> bool:
        """Handle an exit if it was the spare's (True); other exits are the caller's."""
        if actor_id != self.SPARE:
            return False
        self.spare, self._spare_process = None, False
        return True

    def flush(self) -> None:
        """Send what the pool queued (adoptions)."""
        while self.outbox:
            identity, message = self.outbox.pop(0)
            self.send(identity, message)

    def lending(self) -> Lending:
        """Each local pinned CPU actor's own cores, by rank: what a job's actors on standby lend."""
        return Lending({rank: cores for rank, actor_id in enumerate(self.ids)
                        if (cores := self._cores_of(actor_id)) is not None})

    def pin(self, actor_id: str, cores: tuple[int, ...]) -> None:
        """Move a local actor onto ``cores`` (lent while others are on standby) for this job."""
        self.supervisor.pin(actor_id, cores)
        self._lent.add(actor_id)

    def job_ended(self) -> None:
        """Every actor that was lent cores goes back to its own for the next job."""
        super().job_ended()
        for actor_id in sorted(self._lent):
            self.supervisor.pin(actor_id, self._cores_of(actor_id))
        self._lent.clear()

    def _cores_of(self, actor_id: str) -> tuple[int, ...] | None:
        """The cores a local actor is pinned to (None: not pinned, or another host's)."""
        return self.cores[self.local_ids.index(actor_id)] if actor_id in self.local_ids else None

    def host_of(self, actor_id: str) -> str:
        """The host an actor runs on: a joined host's name, or this one's."""
        actor = self.remote.get(actor_id)
        return actor.host if actor is not None else self.local_host

    def send(self, identity: bytes, message: protocol.Message) -> bool:
        """Send one message to an actor; False if it is gone or not reading (its exit or
        its silence is what the job then acts on)."""
        try:
            return self.channel.send_nowait(identity, protocol.encode(message))
        except PeerGone:
            return False

    def store_request(self, identity: bytes, message: StoreRequest) -> None:
        for to, reply in self.store.handle(identity, message):
            self.send(to, reply)

    async def idle(self, wait_ms: int) -> None:
        """Between jobs: take hellos, drop late traffic of past jobs, restart dead actors,
        forget the actors of hosts that left."""
        if await self.channel.wait_readable(wait_ms):
            while (frames := self.channel.recv_nowait(copy=False)) is not None:
                self.note(frames)
        self.tick()
        for actor_ids, how, _host in self.take_exits():
            for actor_id in actor_ids:
                if not self.exited(actor_id):
                    self.exits.append((actor_id, how))
                    self.respawn(actor_id)
        self._forget_departed()
        self._start_spare()
        self.flush()

    def note(self, frames: list) -> None:
        """A message for the pool rather than a job (a hello while idle)."""
        try:
            taken = self.take(frames)
        except ProtocolError:
            return
        if taken is not None and isinstance(taken[1], protocol.Hello) and taken[1].actor_id in self.restarts:
            identity, message = taken
            self.hellos[message.actor_id] = (identity, message)

    def take(self, frames: list) -> tuple[bytes, protocol.Message] | None:
        """One message from the actors' channel (``zmq.Frame``s: they name a remote sender's
        key). What is the pool's (the store's, the spare's, a host agent's) is handled here
        (None); the rest is returned, a remote actor's hello under its pool id. ProtocolError
        for a message that is bad, or whose sender's key is no longer allowed."""
        if len(frames) != 2:
            raise ProtocolError(f"expected 2 frames (identity, payload), got {len(frames)}")
        identity, host = _bytes(frames[0]), self._sender_host(frames[1])
        message = protocol.decode(_bytes(frames[1]), ACTOR_LIMITS)
        if isinstance(message, StoreRequest):
            self.store_request(identity, message)
            return None
        if isinstance(message, FILL_MESSAGES) and host is not None:
            replies, released = [], []
            if self._fills is not None:
                replies = [reply for part in self._fills for reply in part.handle(host, message)]
            elif self.job_data is not None:
                replies, released = self.job_data.answer(host, message)
                self._data_of_host(host)
            agent = self.hosts.hosts[host].identity if host in self.hosts.hosts else None
            for reply in replies if agent is not None else ():
                self.send(agent, reply)
            self.released += released
            return None
        if isinstance(message, BatchCredit) and host is not None:
            self._credited(host, message)
            return None
        if isinstance(message, HOST_MESSAGES):
            if host is None:
                raise ProtocolError("host messages come from joined hosts only")
            self._apply_hosts(self.hosts.handle(identity, host, message, time.monotonic()))
            return None
        if isinstance(message, protocol.Hello):
            if host is not None:
                message = replace(message, actor_id=qualified(host, message.actor_id))
                if self.job_actors is not None and message.actor_id not in self.job_actors:
                    self.hellos[message.actor_id] = (identity, message)   # not this job's: the next one's
                    self.known[message.actor_id] = message
                    return None
                if self.job_data is not None and self.job_data.hold(host, identity, message):
                    return None   # its host is being filled: it says hello once the data is there
            elif message.actor_id == self.SPARE:
                self.spare = (identity, message)
                return None
            if message.actor_id in self.restarts:
                self.known[message.actor_id] = message
        return identity, message

    def take_exits(self) -> list[tuple[tuple[str, ...], str, str | None]]:
        """(actor ids, how, host) of the actors that ended since the last call: one at a time
        here or on a joined host (host None), or every actor of a host lost at once (its name)."""
        out = [((actor_id, ), how, None) for actor_id, how in self.supervisor.exited()] + self._remote_exits
        self._remote_exits = []
        return out

    def kill(self, actor_id: str) -> None:
        """SIGKILL one actor (taken for hung), here or by its host's agent."""
        actor = self.remote.get(actor_id)
        if actor is None:
            self.supervisor.kill(actor_id)
            return
        agent = self.hosts.agent_of(actor_id)
        if agent is not None:
            self.send(agent, KillActor(actor_id=actor.local_id))

    def respawn(self, actor_id: str) -> None:
        """Start ``actor_id`` again: adopt the warm spare if it fits, else a new process (a
        remote actor: its agent starts one, if its host is still here)."""
        plan, cores = self.plans[actor_id], self._cores_of(actor_id)
        self.hellos.pop(actor_id, None)
        self.restarts[actor_id] += 1
        if actor_id in self.remote:
            agent = self.hosts.agent_of(actor_id)
            if agent is not None:   # the agent replaces the process it has, if any
                self._live_remote.add(actor_id)
                self.send(agent, StartActor(actor_id=self.remote[actor_id].local_id,
                                            incarnation=self.restarts[actor_id]))
            return
        if self.spare is not None and plan == self.spare_plan:
            identity, _hello = self.spare
            self.spare, self._spare_process = None, False
            self.supervisor.rename(self.SPARE, actor_id)
            self.supervisor.pin(actor_id, cores)   # the spare floats until it takes a place
            self.outbox.append((identity, protocol.Adopt(actor_id=actor_id)))
            return
        # faults injected by tests fire in an actor's first process only
        self.supervisor.spawn(actor_id, plan, {**self.actor_env, "LEPTONRT_INCARNATION": str(self.restarts[actor_id])},
                              cores)

    def replace_all(self) -> None:
        """Stop every actor and start a fresh one in its place (after a failed job)."""
        self.supervisor.stop_all()
        self.supervisor.exited()   # the exits we caused are not news
        self.hellos.clear()
        self.spare, self._spare_process = None, False
        for actor_id in self.ids:
            self.respawn(actor_id)

    def take_hellos(self) -> list[tuple[bytes, protocol.Hello]]:
        """The idle actors' hellos, for a starting job; they are its actors now (but those of a
        host that joined after the job took its actors: they wait for the next)."""
        mine = self.job_actors if self.job_actors is not None else set(self.hellos)
        out = [hello for actor_id, hello in self.hellos.items() if actor_id in mine]
        self.hellos = {a: h for a, h in self.hellos.items() if a not in mine}
        return out

    async def close(self) -> None:
        """Tell every actor to exit, then make sure of it; unlink every segment and file."""
        if not self.started:
            if self._early is not None:   # handed to a pool that never started
                self._early.close()
                shutil.rmtree(self._early.run_dir, ignore_errors=True)
                self._early = None
            return
        self.started = False
        bye = protocol.encode(Shutdown(reason="broker closing"))
        try:
            for effect in self.hosts.close():   # their agents stop their actors
                self.send(effect.identity, effect.message)
            idle = list(self.hellos.values()) + ([self.spare] if self.spare else [])
            for identity, _hello in idle:   # idle actors; busy ones get SIGTERM
                try:
                    self.channel.send_nowait(identity, bye)
                except (zmq.ZMQError, PeerGone):
                    pass
        finally:
            self.supervisor.close()
            if self._auth is not None:
                self._auth.close()
            if self.channel is not None:
                self.channel.close()
            self.cache.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)


def _bytes(frame) -> bytes:
    return frame if isinstance(frame, bytes) else frame.bytes
