"""The broker as a service: clients submit jobs, follow them and ask for snapshots.

``leptonrt up`` wraps an embedded ``Broker`` in a ``Service``: a ROUTER socket on the
service address, separate from the actors' private socket. A client's ``Submit`` is
answered with ``Accepted`` (or ``Rejected``, with the exit code the client should end
with), then the job's epochs, split changes and outcome stream back on that connection.
``StatusRequest`` is answered with the latest statistics snapshot. A client that goes
away loses only its stream: its job stays queued and runs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import asdict

import zmq
import zmq.asyncio

from ..config import TrainJob
from ..errors import ConfigError, LeptonError, ProtocolError
from . import protocol
from .address import check_listen, ipc_path
from .embedded import Broker, BrokerClosed, Job
from .protocol import Accepted, JobUpdate, Rejected, StatusReply, StatusRequest, Submit
from .run import ActorLost, EpochEvent, Recovered, SplitChanged

PROBE_MS = 500   # how long a stale-socket probe waits for an answer


async def probe(address: str, secret: str = "", wait_ms: int = PROBE_MS) -> dict | None:
    """The snapshot of a broker answering at ``address``, or None if none answers."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        await sock.send(protocol.encode(StatusRequest(token=secret)))
        while await sock.poll(wait_ms):
            try:
                msg = protocol.decode(await sock.recv())
            except ProtocolError:
                continue
            if isinstance(msg, StatusReply):
                return json.loads(msg.snapshot_json)
            if isinstance(msg, Rejected):
                return {"rejected": msg.message}
        return None
    except zmq.ZMQError:
        return None
    finally:
        sock.close(linger=0)
        ctx.term()


class Service:
    """Serves one Broker to clients at ``address`` until closed."""

    def __init__(self, broker: Broker, address: str, secret: str = "") -> None:
        check_listen(address, secret)
        self.broker, self.address, self.secret = broker, address, secret
        self._forwarders: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self.bad_messages = 0

    async def __aenter__(self) -> "Service":
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    async def start(self) -> None:
        path = ipc_path(self.address)
        if path is not None and path.exists():
            if await probe(self.address, self.secret) is not None:
                raise ConfigError(f"another leptonrt broker is already serving at {self.address}")
            path.unlink(missing_ok=True)   # left behind by a broker that was killed
        self.ctx = zmq.asyncio.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)
        try:
            self.router.bind(self.address)
        except zmq.ZMQError as exc:
            self.router.close(linger=0)
            self.ctx.term()
            raise ConfigError(f"cannot listen on {self.address}: {exc}") from None
        self._owns_path = path
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="leptonrt-service")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._forwarders) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._forwarders.clear()
        if self._task is not None:
            self._task = None
            self.router.close(linger=0)
            self.ctx.term()
            if self._owns_path is not None:
                self._owns_path.unlink(missing_ok=True)

    async def _serve(self) -> None:
        while True:
            frames = await self.router.recv_multipart()
            if len(frames) != 2:
                self.bad_messages += 1
                continue
            identity = frames[0]
            try:
                msg = protocol.decode(frames[1])
            except ProtocolError as exc:
                self.bad_messages += 1
                await self._send(identity, Rejected(message=f"bad request: {exc}"[:4000], exit_code=70))
                continue
            if isinstance(msg, (Submit, StatusRequest)) and not hmac.compare_digest(msg.token, self.secret):
                await self._send(identity, Rejected(message="wrong or missing token (LEPTONRT_TOKEN)", exit_code=78))
            elif isinstance(msg, Submit):
                await self._submit(identity, msg)
            elif isinstance(msg, StatusRequest):
                snapshot = self.broker.snapshot().to_dict()
                await self._send(identity, StatusReply(snapshot_json=json.dumps(snapshot)))
            else:
                self.bad_messages += 1

    async def _submit(self, identity: bytes, msg: Submit) -> None:
        try:
            spec = TrainJob.from_dict(json.loads(msg.job_json))
            job = await self.broker.submit(spec)
        except json.JSONDecodeError:
            await self._send(identity, Rejected(message="the job is not valid JSON", exit_code=78))
            return
        except LeptonError as exc:
            code = 69 if isinstance(exc, BrokerClosed) else exc.exit_code
            await self._send(identity, Rejected(message=str(exc)[:4000], exit_code=code))
            return
        ahead = sum(j.state in ("queued", "running") for j in self.broker.jobs() if j.id < job.id)
        await self._send(identity, Accepted(job_id=job.id, ahead=ahead))
        task = asyncio.get_running_loop().create_task(self._forward(identity, job), name=f"leptonrt-job-{job.id}")
        self._forwarders.add(task)
        task.add_done_callback(self._forwarders.discard)

    async def _forward(self, identity: bytes, job: Job) -> None:
        kinds = {EpochEvent: "epoch", SplitChanged: "split", ActorLost: "lost", Recovered: "recovered"}
        async for event in job.events():
            kind = kinds.get(type(event))
            if kind is not None:
                await self._send(identity, JobUpdate(job_id=job.id, kind=kind, data_json=json.dumps(asdict(event))))
        try:
            result = await job.result()
        except LeptonError as exc:
            data = {"message": str(exc), "exit_code": exc.exit_code, "error": type(exc).__name__}
            await self._send(identity, JobUpdate(job_id=job.id, kind="failed", data_json=json.dumps(data)))
        else:
            await self._send(identity, JobUpdate(job_id=job.id, kind="finished", data_json=json.dumps(result)))

    async def _send(self, identity: bytes, msg: protocol.Message) -> None:
        try:
            await self.router.send_multipart([identity, protocol.encode(msg)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass   # the client is gone or not reading; its job goes on
