"""``leptonrt.connect``: the embedded Broker's interface, against a running ``leptonrt up``.

    async with leptonrt.connect() as broker:          # the default address, or connect(ADDR)
        job = await broker.submit(leptonrt.TrainJob(dataset="digits", epochs=5))
        async for event in job.events():
            ...
        result = await job.result()

One DEALER socket carries everything; a reader task sorts replies and job updates. A
broker that stops answering is noticed by a status probe within a few seconds, and every
waiting call then raises ``NoDeviceError`` instead of hanging.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import socket
import time
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import messages as protocol
from .broker.address import check_address, default_address, ipc_path
from .broker.handle import JobHandle
from .broker.events import ActorLost, EpochEvent, Progress, Recovered, SplitChanged
from .broker.stats import Snapshot
from .errors import ConfigError, LeptonError, NoDeviceError, ProtocolError
from .messages import (SERVICE_LIMITS, Accepted, Acknowledged, CancelRequest, JobUpdate, Rejected, StatusReply,
                       StatusRequest, StopRequest, Submit, Weights)
from .config import TrainJob

SILENCE_S = 2.0   # probe a quiet broker this often...
DEAD_S = 6.0      # ...and give up on it after this long without a word


class RemoteJobFailed(LeptonError):
    """A job submitted to a running broker failed there; carries the broker's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RemoteJob(JobHandle):
    """A job on a running broker: follow its events, await its result."""

    def __init__(self, job_id: int, ahead: int, loop: asyncio.AbstractEventLoop, save: str | None = None) -> None:
        super().__init__(loop)
        self.id, self.ahead = job_id, ahead
        self._save, self._weights = save, bytearray()   # where the client writes the weights, and them so far

    def _receive(self, msg: Weights | JobUpdate) -> None:
        if isinstance(msg, JobUpdate):
            self._update(msg)
        elif msg.offset == len(self._weights) and msg.offset + len(msg.data) <= msg.total:
            self._weights += msg.data

    def _update(self, msg: JobUpdate) -> None:
        data = dict(msg.data)
        if msg.kind == "finished" and self._save is not None:
            try:
                if not self._weights:
                    raise ProtocolError("the broker finished the job but sent no weights")
                _write_atomically(self._save, bytes(self._weights))
            except LeptonError as exc:
                self._end(error=exc)
                return
        if msg.kind == "epoch":
            data["shares"] = tuple(data["shares"])
            self._emit(EpochEvent(**data))
        elif msg.kind == "progress":
            self._emit(Progress(**data))
        elif msg.kind == "split":
            data["split"] = tuple(data["split"])
            self._emit(SplitChanged(**data))
        elif msg.kind == "lost":
            self._emit(ActorLost(**data))
        elif msg.kind == "recovered":
            self._emit(Recovered(**data))
        elif msg.kind == "finished":
            self._end(result=data)
        else:
            self._end(error=RemoteJobFailed(data.get("message", "job failed"), int(data.get("exit_code", 1))))


class RemoteBroker:
    """A connection to a running broker's service socket."""

    def __init__(self, address: str | None = None, *, server_key: str | Path | None = None,
                 keys: str | Path | None = None) -> None:
        self.address = address or default_address()
        check_address(self.address)
        # a TCP broker admits only allowed CURVE keys: its public key, and ours
        self.curve = self.address.startswith("tcp://")
        if self.curve and server_key is None:
            raise ConfigError(f"{self.address} is a TCP address: give the broker's public key "
                              "(--server-key FILE, from `leptonrt keys show` on the broker's host)")
        self.server_key, self.keys = server_key, keys
        self.sock = None
        self._jobs: dict[int, RemoteJob] = {}
        self._replies: asyncio.Queue = asyncio.Queue()   # Accepted / Rejected, in request order
        self._status: list[asyncio.Future] = []
        self._asks: list[asyncio.Future] = []   # requests answered Acknowledged (stop, cancel), in order
        self._reader: asyncio.Task | None = None
        self._heard = time.monotonic()
        self._dead: LeptonError | None = None
        self._submitting = 0
        self._early: dict[int, list[Weights | JobUpdate]] = {}   # updates that beat their Accepted to us

    async def __aenter__(self) -> "RemoteBroker":
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, SERVICE_LIMITS.frame_bytes)
        try:
            if self.curve:
                await self._connect_curve()
            else:
                _check_listening(self.address)
                self.sock.connect(self.address)
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="leptonrt-client")
            await self.status()   # fail now, clearly, if nobody is there
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _connect_curve(self) -> None:
        """Connect with CURVE and wait for the handshake: a broker that refuses our key is a
        clear ConfigError (78) at once, not silence."""
        from . import curve, keys
        curve.arm_client(self.sock, keys.read_public_key(self.server_key), keys.load_keypair(self.keys))
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                               | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                               | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        try:
            self.sock.connect(self.address)
            deadline = time.monotonic() + DEAD_S
            while (left := deadline - time.monotonic()) > 0:
                if not await monitor.poll(int(left * 1000) + 1):
                    break
                event = parse_monitor_message(await monitor.recv_multipart())["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return
                raise ConfigError(f"the broker at {self.address} refused this key (or the --server-key is not its "
                                  "key): on the broker's host, `leptonrt keys allow NAME FILE` with FILE this "
                                  "host's public.key")
            raise NoDeviceError(f"no leptonrt broker is answering at {self.address}")
        finally:
            self.sock.disable_monitor()
            monitor.close(linger=0)

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})
            self._reader = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.ctx.term()
            self.sock = None

    async def status(self) -> Snapshot:
        """The broker's current statistics snapshot."""
        self._check()
        future = asyncio.get_running_loop().create_future()
        self._status.append(future)
        await self.sock.send(protocol.encode(StatusRequest()))
        return Snapshot.from_dict(await future)

    async def stop(self) -> str:
        """Ask the broker to stop cleanly (any client that reaches it may); returns what it said.
        It goes on stopping after answering: wait for it to be gone if that matters."""
        return await self._ask(StopRequest())

    async def cancel(self, job_id: int) -> str:
        """Cancel a queued job, or stop the running one at a step boundary (its client's job
        then fails with exit code 3); returns what the broker said. An unknown or ended job
        raises ``RemoteJobFailed`` (78)."""
        return await self._ask(CancelRequest(job_id=job_id))

    async def _ask(self, request: protocol.Message) -> str:
        self._check()
        future = asyncio.get_running_loop().create_future()
        self._asks.append(future)
        await self.sock.send(protocol.encode(request))
        return await future

    async def submit(self, spec: TrainJob) -> RemoteJob:
        """Queue a job on the broker. The broker writes no file for a client: when ``spec``
        has a ``save`` path, the weights come back and are written here, by this process."""
        self._check()
        self._submitting += 1
        request = Submit(job=dataclasses.replace(spec, save=None), want_weights=spec.save is not None)
        try:
            await self.sock.send(protocol.encode(request))
            reply = await self._replies.get()
        finally:
            self._submitting -= 1
        if isinstance(reply, LeptonError):
            raise reply
        if isinstance(reply, Rejected):
            raise RemoteJobFailed(reply.message, reply.exit_code)
        job = RemoteJob(reply.job_id, reply.ahead, asyncio.get_running_loop(), spec.save)
        self._jobs[job.id] = job
        for update in self._early.pop(job.id, []):
            job._receive(update)
        return job

    def _check(self) -> None:
        if self._dead is not None:
            raise self._dead

    async def _read(self) -> None:
        probe_sent = 0.0
        try:
            while True:
                if await self.sock.poll(int(SILENCE_S * 1000 / 2)):
                    frame = await self.sock.recv()
                    self._heard = time.monotonic()
                    try:
                        msg = protocol.decode(frame, SERVICE_LIMITS)
                    except ProtocolError:
                        continue
                    self._dispatch(msg)
                    continue
                now = time.monotonic()
                if not (self._status or self._asks or self._submitting
                        or any(not j._result.done() for j in self._jobs.values())):
                    self._heard = now   # nothing is waiting on the broker: silence means nothing
                    continue
                quiet = now - self._heard
                if quiet > DEAD_S:
                    break
                if quiet > SILENCE_S and now - probe_sent > SILENCE_S:
                    probe_sent = now
                    await self.sock.send(protocol.encode(StatusRequest()))
                    self._status.append(asyncio.get_running_loop().create_future())   # a probe nobody awaits
        finally:
            self._fail_all(NoDeviceError(f"no leptonrt broker is answering at {self.address}"))

    def _dispatch(self, msg: protocol.Message) -> None:
        if isinstance(msg, StatusReply):
            while self._status:
                future = self._status.pop(0)
                if not future.done():
                    future.set_result(dict(msg.snapshot))
                    break
        elif isinstance(msg, Accepted):
            self._replies.put_nowait(msg)
        elif isinstance(msg, Acknowledged):
            if self._asks and not (future := self._asks.pop(0)).done():
                future.set_result(msg.message)
        elif isinstance(msg, Rejected):
            if self._asks and not self._submitting:   # a refused request of ours
                if not (future := self._asks.pop(0)).done():
                    future.set_exception(RemoteJobFailed(msg.message, msg.exit_code))
            elif self._status and not self._submitting:   # a refused status request
                future = self._status.pop(0)
                if not future.done():
                    future.set_exception(RemoteJobFailed(msg.message, msg.exit_code))
            else:
                self._replies.put_nowait(msg)
        elif isinstance(msg, (Weights, JobUpdate)):
            job = self._jobs.get(msg.job_id)
            if job is None:
                self._early.setdefault(msg.job_id, []).append(msg)
            else:
                job._receive(msg)

    def _fail_all(self, error: LeptonError) -> None:
        self._dead = error
        for future in self._status + self._asks:
            if not future.done():
                future.set_exception(error)
                future.exception()   # probes nobody awaits must not warn
        self._status.clear()
        self._asks.clear()
        for job in self._jobs.values():
            job._end(error=error)
        self._replies.put_nowait(error)


def _write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in its directory, renamed into place."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the weights to {target}: {exc.strerror or exc}") from None


def connect(address: str | None = None, *, server_key: str | Path | None = None,
            keys: str | Path | None = None) -> RemoteBroker:
    """``async with leptonrt.connect(ADDR) as broker``: submit/events/result on a running `up`.
    A ``tcp://`` address needs the broker's public key (``server_key``, a file) and our own
    key pair (``keys``, a directory; default: the user's)."""
    return RemoteBroker(address, server_key=server_key, keys=keys)


def _check_listening(address: str) -> None:
    """An ipc address nobody listens on is known at once: its socket file is missing, or a
    connect to it is refused (a broker that died left it). ZeroMQ would wait silently."""
    path = ipc_path(address)
    if path is None:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
                raise NoDeviceError(f"no leptonrt broker is answering at {address} "
                                    "(start one with `leptonrt up`)") from None
            raise NoDeviceError(f"cannot reach the leptonrt broker at {address}: {exc.strerror}") from None
