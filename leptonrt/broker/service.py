"""The broker as a service: clients submit jobs, follow them and ask for snapshots.

``leptonrt up`` wraps an embedded ``Broker`` in a ``Service``: a ROUTER socket on the
service address, separate from the actors' private socket. A client's ``Submit`` is
answered with ``Accepted`` (or ``Rejected``, with the exit code the client should end
with), then the job's epochs, split changes and outcome stream back on that connection
(its weights too, when asked for). ``StatusRequest`` is answered from the latest snapshot.
A client that goes away loses only its stream: its job stays queued and runs.
``StopRequest`` is answered ``Acknowledged`` and passed to whoever runs the service
(``on_stop``: ``leptonrt up`` then stops as on a first Ctrl-C); ``CancelRequest`` cancels
one job. Any client that can reach the service may send either, as it may submit jobs.

What protects the broker from its clients: every message passes the ``Gate`` (frame and
size caps, a rate per client) before anything acts on it; one guard around the handler
turns any exception into a counted rejection of that message; the loop hands the event
loop back every few messages, so the actors' channel is never kept waiting; a supervisor
restarts the loop if it dies, and reports the service broken (``up`` then exits 70) if it
keeps dying. The broker writes no file a client names: weights go back to the client,
and checkpoints only under the directory the service was started with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import zmq

from .. import messages
from ..errors import ConfigError, InternalError, LeptonError
from ..messages import (WEIGHTS_CHUNK, Accepted, Acknowledged, CancelRequest, Join, Joined, JobUpdate, Rejected,
                        StatusReply, StopRequest, Submit, Weights)
from ..config import TrainJob
from ..wire import Plain
from .address import check_listen, ipc_path
from .channel import Channel, PeerGone
from .embedded import Broker, BrokerClosed, Job
from .gate import Gate, GateConfig, Verdict
from .probe import probe
from .events import ActorLost, EpochEvent, Progress, Recovered, SplitChanged
from .supervise import supervise

log = logging.getLogger("leptonrt.service")

BATCH = 64             # messages handled before the loop is handed back
SNAPSHOT_EVERY_S = 0.25   # a status reply is at most this old
RESTARTS = 5           # the serving loop may die this often...
RESTART_WINDOW_S = 60.0   # ...within this long before the service counts as broken
SEND_PATIENCE_S = 30.0    # a client that reads nothing for this long loses its stream
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KINDS = {EpochEvent: "epoch", Progress: "progress", SplitChanged: "split", ActorLost: "lost", Recovered: "recovered"}


@dataclass
class _Endpoint:
    """One address the service answers on: an ipc socket (same user only), or a TCP one
    that admits only allowed CURVE keys."""

    address: str
    channel: Channel
    auth: object | None = None   # the CURVE authenticator (leptonrt.curve.Authenticator) of a TCP endpoint
    owns_path: Path | None = None   # the ipc socket file to remove at close

    def sender_allowed(self, frames: list) -> bool:
        return self.auth is None or self.auth.sender(frames[1]) is not None


Peer = tuple[_Endpoint, bytes]   # where a reply goes: the endpoint a request came in on, and its identity


class Service:
    """Serves one Broker to clients at ``addresses`` until closed: ipc ones to this user,
    TCP ones to holders of an allowed CURVE key (``keys``: the key directory). ``on_stop``
    is called when a client asks the broker to stop; without it, such requests are refused."""

    def __init__(self, broker: Broker, *addresses: str, keys: str | Path | None = None,
                 checkpoint_root: str | Path | None = None, gate: GateConfig = GateConfig(),
                 on_broken: Callable[[BaseException], None] | None = None,
                 on_stop: Callable[[], None] | None = None) -> None:
        if not addresses:
            raise InternalError("a service needs at least one address")
        for address in addresses:
            check_listen(address)
        self.broker, self.addresses, self.keys = broker, addresses, keys
        self.checkpoint_root = Path(checkpoint_root).resolve() if checkpoint_root is not None else None
        self.gate = Gate(gate)
        self.on_broken = on_broken or (lambda exc: None)
        self.on_stop = on_stop
        self.broken: BaseException | None = None
        self.handler_errors = self.unauthorised = 0
        self._forwarders: dict[asyncio.Task, tuple[Peer, Job]] = {}
        self._task: asyncio.Task | None = None
        self._snapshot: tuple[float, bytes] | None = None
        self._endpoints: list[_Endpoint] = []
        self._ctx: zmq.Context | None = None

    async def __aenter__(self) -> "Service":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def statistics(self) -> dict[str, int]:
        """The service's counters (they go into every snapshot)."""
        return {**asdict(self.gate.statistics()), "handler_errors": self.handler_errors,
                "unauthorised": self.unauthorised}

    async def start(self) -> None:
        self._ctx = zmq.Context()
        try:
            for address in self.addresses:
                self._endpoints.append(await self._open(address))
        except BaseException:
            self._close_endpoints()
            raise
        self.broker.counters = self.statistics
        serve = supervise(self._serve, name="the leptonrt service loop", restarts=RESTARTS, window_s=RESTART_WINDOW_S,
                          on_broken=self._broken)
        self._task = asyncio.get_running_loop().create_task(serve, name="leptonrt-service")

    async def _open(self, address: str) -> _Endpoint:
        path = ipc_path(address)
        if path is not None and path.exists():
            if await probe(address) is not None:
                raise ConfigError(f"another leptonrt broker is already serving at {address}")
            path.unlink(missing_ok=True)   # left behind by a broker that was killed
        if address.startswith("tcp://"):
            return await self._open_curve(address)
        return _Endpoint(address, self._bind(address), owns_path=path)

    async def _open_curve(self, address: str) -> _Endpoint:
        """A TCP endpoint: CURVE armed before it binds, then proven at once (a rogue key and a
        client without CURVE must be refused) or the service does not start."""
        from .. import curve, keys
        pair = keys.load_keypair(self.keys)
        auth = curve.Authenticator(self._ctx, keys.allowed_keys(self.keys)).start()   # clients and hosts
        try:
            channel = self._bind(address, lambda sock: curve.arm_server(sock, pair, auth))
            endpoint = _Endpoint(address, channel, auth)
            await asyncio.to_thread(curve.self_test, channel.sock.last_endpoint.decode(), pair.public, auth)
        except BaseException:
            if "channel" in locals():
                channel.close()
            auth.close()
            raise
        return endpoint

    def _bind(self, address: str, configure=None) -> Channel:
        try:
            return Channel(address, messages.CLIENT_LIMITS.frame_bytes, ctx=self._ctx, configure=configure)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from None

    async def close(self) -> None:
        """Stop serving. Every client still following a job is told at once that the broker
        closed (its own exit code), rather than left to notice the silence."""
        if self._task is None:
            return
        for peer, job in list(self._forwarders.values()):
            if not job.done():
                self._send(peer, _failed(job.id, BrokerClosed(f"job {job.id}: the broker closed")))
        tasks = [self._task, *self._forwarders]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        self._forwarders.clear()
        self._task = None
        self._close_endpoints()

    def _close_endpoints(self) -> None:
        for endpoint in self._endpoints:
            endpoint.channel.close()
            if endpoint.auth is not None:
                endpoint.auth.close()
            if endpoint.owns_path is not None:
                endpoint.owns_path.unlink(missing_ok=True)
        self._endpoints = []
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- the serving loop -------------------------------------------------------------

    def _broken(self, error: InternalError) -> None:
        self.broken = error
        self.on_broken(error)

    async def _serve(self) -> None:
        loops = [asyncio.ensure_future(self._serve_endpoint(e)) for e in self._endpoints]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()   # re-raise what killed it, for the supervisor
        finally:
            for task in loops:
                task.cancel()
            await asyncio.wait(loops)

    async def _serve_endpoint(self, endpoint: _Endpoint) -> None:
        while True:
            if not await endpoint.channel.wait_readable(1000):
                continue
            for _ in range(BATCH):
                frames = endpoint.channel.recv_nowait(copy=endpoint.auth is None)
                if frames is None:
                    break
                self._guarded(endpoint, frames)
            await asyncio.sleep(0)   # the actors' channel and the running job go next

    def _guarded(self, endpoint: _Endpoint, frames: list) -> None:
        """Handle one message; whatever it raises is a counted rejection, never a dead loop."""
        if not endpoint.sender_allowed(frames):   # a key revoked since its connection opened
            self.unauthorised += 1
            return
        name = endpoint.auth.sender(frames[1]) if endpoint.auth is not None else None   # its key's, over CURVE
        frames = [f if isinstance(f, bytes) else f.bytes for f in frames]
        peer = (endpoint, frames[0])
        try:
            self._handle(peer, frames[1:], time.monotonic(), name)
        except Exception as exc:
            self.handler_errors += 1
            log.exception("leptonrt service: handling a request failed")
            self._send(peer, Rejected(message=f"internal error handling the request ({type(exc).__name__}); "
                                              "the service goes on", exit_code=70))

    def _handle(self, peer: Peer, rest: list[bytes], now: float, name: str | None = None) -> None:
        admission = self.gate.admit(peer[1], rest, now)
        if admission.verdict is Verdict.DROP:
            return
        if admission.verdict is Verdict.REJECT:
            self._send(peer, Rejected(message=admission.reason, exit_code=70))
        elif isinstance(admission.message, Submit):
            self._submit(peer, admission.message)
        elif isinstance(admission.message, StopRequest):
            self._stop(peer)
        elif isinstance(admission.message, CancelRequest):
            self._cancel(peer, admission.message.job_id)
        elif isinstance(admission.message, Join):
            self._join(peer, name)
        else:
            self._send_frame(peer, self._status_frame(now))

    def _join(self, peer: Peer, name: str | None) -> None:
        """A host agent asks where its actors connect: the actors' channel's CURVE endpoint
        (which admits hosts' keys only: ``name`` must be one)."""
        from .. import keys
        endpoint = self.broker.pool.actor_endpoint
        if peer[0].auth is None:
            self._send(peer, Rejected(message="a host joins over the broker's tcp:// --listen address", exit_code=78))
        elif name not in keys.allowed_keys(self.keys, clients=False).snapshot():
            self._send(peer, Rejected(message=f"the key {name!r} is allowed as a client, not as a host (on the head: "
                                              f"`leptonrt keys revoke {name}`, then `leptonrt keys allow {name} FILE "
                                              f"--host`)", exit_code=78))
        elif endpoint is None and self.broker.pool.listen is not None:   # the pool is starting: ask again
            self._send(peer, Rejected(message="the broker is starting", exit_code=75))
        elif endpoint is None:
            self._send(peer, Rejected(message="this broker takes no hosts (it was started without a tcp:// --listen)",
                                      exit_code=78))
        else:
            self._send(peer, Joined(actor_endpoint=endpoint))

    def _cancel(self, peer: Peer, job_id: int) -> None:
        try:
            self._send(peer, Acknowledged(message=self.broker.cancel(job_id)))
        except LeptonError as exc:
            self._send(peer, Rejected(message=str(exc)[:4000], exit_code=exc.exit_code))

    def _stop(self, peer: Peer) -> None:
        if self.on_stop is None:
            self._send(peer, Rejected(message="this broker runs inside an application that does not let its "
                                              "clients stop it", exit_code=78))
            return
        self._send(peer, Acknowledged(message="stopping: no new jobs; the running job stops at a step boundary "
                                              "and every client following a job is told the broker closed"))
        self.on_stop()

    def _status_frame(self, now: float) -> bytes:
        """The latest snapshot, encoded at most every SNAPSHOT_EVERY_S however often it is asked for."""
        if self._snapshot is None or now - self._snapshot[0] >= SNAPSHOT_EVERY_S:
            snapshot = Plain(self.broker.snapshot().to_dict())
            self._snapshot = (now, messages.encode(StatusReply(snapshot=snapshot)))
        return self._snapshot[1]

    # -- jobs -------------------------------------------------------------------------

    def _submit(self, peer: Peer, msg: Submit) -> None:
        try:
            job = self.broker.submit_nowait(self._server_side(msg.job), keep_weights=msg.want_weights)
        except LeptonError as exc:
            self._send(peer, Rejected(message=str(exc)[:4000], exit_code=exc.exit_code))
            return
        ahead = sum(j.state in ("queued", "running") for j in self.broker.jobs() if j.id < job.id)
        self._send(peer, Accepted(job_id=job.id, ahead=ahead))
        task = asyncio.get_running_loop().create_task(self._forward(peer, job, msg.want_weights),
                                                      name=f"leptonrt-job-{job.id}")
        self._forwarders[task] = (peer, job)
        task.add_done_callback(lambda t: self._forwarders.pop(t, None))

    def _server_side(self, job: TrainJob) -> TrainJob:
        """The job as this broker runs it: no client path is ever written here."""
        if job.save is not None:
            raise ConfigError("a running broker writes no file for its clients: leave out save "
                              "(ask for the weights with want_weights; `leptonrt train --save` does)")
        if job.checkpoint_dir is None:
            return job
        if self.checkpoint_root is None:
            raise ConfigError("this broker keeps no checkpoints: start it with `leptonrt up --checkpoint-root DIR`")
        if not _NAME.match(job.checkpoint_dir):
            raise ConfigError(f"checkpoint name {job.checkpoint_dir!r}: a running broker keeps checkpoints under its "
                              f"--checkpoint-root; give a plain name (letters, digits, '_', '-', '.')")
        return dataclasses.replace(job, checkpoint_dir=str(self.checkpoint_root / job.checkpoint_dir))

    async def _forward(self, peer: Peer, job: Job, want_weights: bool) -> None:
        async for event in job.events():
            kind = _KINDS.get(type(event))
            if kind is not None and not await self._deliver(peer, JobUpdate(
                    job_id=job.id, kind=kind, data=Plain(asdict(event)))):
                return   # the client is gone: its job goes on
        try:
            result = await job.result()
        except LeptonError as exc:
            self._snapshot = None   # a status asked after the outcome shows it
            await self._deliver(peer, _failed(job.id, exc))
            return
        self._snapshot = None   # a status asked after the result shows the job done
        if want_weights and job.weights_path is not None and not await self._send_weights(peer, job):
            return
        await self._deliver(peer, JobUpdate(job_id=job.id, kind="finished", data=Plain(result)))

    async def _send_weights(self, peer: Peer, job: Job) -> bool:
        data = await asyncio.to_thread(job.weights_path.read_bytes)
        job.weights_path.unlink(missing_ok=True)   # handed over: the client keeps them now
        for offset in range(0, max(len(data), 1), WEIGHTS_CHUNK):
            piece = Weights(job_id=job.id, offset=offset, total=len(data), data=data[offset:offset + WEIGHTS_CHUNK])
            if not await self._deliver(peer, piece):
                return False
        return True

    async def _deliver(self, peer: Peer, msg: messages.Message) -> bool:
        """Send, waiting while the client's queue is full; False once it is gone or stuck."""
        endpoint, identity = peer
        payload, deadline = messages.encode(msg), time.monotonic() + SEND_PATIENCE_S
        try:
            while not endpoint.channel.send_nowait(identity, payload):
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.01)
        except PeerGone:
            return False
        return True

    def _send(self, peer: Peer, msg: messages.Message) -> None:
        self._send_frame(peer, messages.encode(msg))

    def _send_frame(self, peer: Peer, frame: bytes) -> None:
        endpoint, identity = peer
        try:
            endpoint.channel.send_nowait(identity, frame)
        except PeerGone:
            pass   # it asked and left: nobody to answer


def _failed(job_id: int, exc: LeptonError) -> JobUpdate:
    data = {"message": str(exc)[:60000], "exit_code": exc.exit_code, "error": type(exc).__name__}
    return JobUpdate(job_id=job_id, kind="failed", data=Plain(data))
