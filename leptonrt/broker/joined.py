"""The half of the actor pool that other hosts' actors add (``leptonrt join``).

Their agents and actors reach the pool's own channel over CURVE (``remote``); who they
are is the name their key is allowed under. This part decides what their messages mean
for the pool (``hosts.HostTable``, pure), keeps their actors in the pool's lists while
they are here, loses all of a host's actors at once, and fills each host's dataset cache
before a job (``fill``). ``JoinedHosts`` is a part of ``pool.ActorPool``, kept here so that
each file reads as one story; it works on the state ``ActorPool.__init__`` sets up.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import zmq

from .. import messages as protocol
from ..actors.devices import ActorPlan
from ..data.shm import SegmentReader
from ..data.stream import BatchReceiver
from ..errors import ConfigError, DataError, ProtocolError
from ..messages import HostBeat
from .channel import PeerGone
from .events import Send
from .fill import JobData
from .hosts import HostJoined, HostLost, RemoteExit
from .streams import Streams

_BEAT = protocol.encode(HostBeat())


class JoinedHosts:
    """Joined hosts' actors in the pool: their hosts' comings and goings, and their data."""

    def _sender_host(self, frame) -> str | None:
        """The host a message came from: None for the private ipc channel (this host), else
        the name its CURVE key is allowed under now."""
        if isinstance(frame, bytes):
            return None
        try:
            frame.get("User-Id")
        except zmq.ZMQError:   # no ZAP verdict: the private ipc endpoint
            return None
        name = self._auth.sender(frame) if self._auth is not None else None
        if name is None:
            raise ProtocolError("the sender's key is no longer allowed")
        return name

    def tick(self) -> None:
        """The passing of time: hosts silent for too long are lost, and so are those whose
        agent's connection is gone (a beat to it cannot be routed: it died, or closed it)."""
        now = time.monotonic()
        self._apply_hosts(self.hosts.tick(now))
        if now - self._probed < self.hosts.beat_s / 2:
            return
        self._probed = now
        for host in list(self.hosts.hosts.values()):
            try:
                self.channel.send_nowait(host.identity, _BEAT)
            except PeerGone:
                self._apply_hosts(self.hosts.lose(host.name, "its agent's connection closed"))

    def _apply_hosts(self, effects: list) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.send(effect.identity, effect.message)
            elif isinstance(effect, HostJoined):
                self._joined(effect)
                if self.job_data is not None:   # mid-job (it came back): its data before its actors' Welcome
                    streams = self.hosts.hosts[effect.name].hello.data == "stream"
                    for message in self.job_data.joined(effect.name, test_only=streams):
                        self.send(self.hosts.hosts[effect.name].identity, message)
                self.host_events.append(f"host {effect.name} joined: {len(effect.actors)} actor(s), "
                                        + ", ".join(a.device for a in effect.actors))
            elif isinstance(effect, HostLost):
                self.host_events.append(effect.why)
                self._remote_exited(effect.actors, effect.why, effect.name)
            elif isinstance(effect, RemoteExit):
                self._remote_exited((effect.actor_id,), effect.how)

    def _joined(self, joined: HostJoined) -> None:
        for actor in joined.actors:
            if actor.actor_id not in self.plans:
                self.ids.append(actor.actor_id)
                self.restarts[actor.actor_id] = 0
            self.plans[actor.actor_id] = ActorPlan(actor.device, None, actor.threads)
            self.remote[actor.actor_id] = actor
            self._live_remote.add(actor.actor_id)   # the agent starts them as it is welcomed

    def _remote_exited(self, actor_ids: tuple[str, ...], how: str, host: str | None = None) -> None:
        ended = tuple(a for a in actor_ids if a in self._live_remote)
        for actor_id in ended:
            self._live_remote.discard(actor_id)
            self.hellos.pop(actor_id, None)
        if ended:
            self._remote_exits.append((ended, how, host))

    def _forget_departed(self) -> None:
        """Between jobs: the actors of hosts that are gone leave the pool (a job's world is who is here)."""
        gone = [a for a in self.remote if a.partition("/")[0] not in self.hosts.hosts]
        for actor_id in gone:
            self.ids.remove(actor_id)
            for table in (self.plans, self.remote, self.restarts, self.known, self.hellos):
                table.pop(actor_id, None)

    async def fill_hosts(self, data: protocol.DatasetInfo, timeout_s: float = 600.0) -> dict[str, protocol.DatasetInfo]:
        """Fill every joined host's cache with ``data`` (a host that holds it answers at once;
        one that streams its training rows gets the test split alone); actor id -> where its
        host holds the data, for its Welcome. A host that refuses fails the job with its
        reason (its exit code); one that leaves meanwhile is left out."""
        self._forget_departed()
        self.job_actors = set(self.ids)   # the job's actors: who is here now
        hosts = sorted({a.host for a in self.remote.values()} & set(self.hosts.hosts))
        if not hosts:
            return {}
        streaming = {h for h in hosts if self.hosts.hosts[h].hello.data == "stream"}
        # both offers, so a host that comes back mid-job is filled whichever way it joins
        self._fills = fills = [await self._offers.fills(data, [h for h in hosts if h not in streaming]),
                               await self._offers.fills(data, sorted(streaming), test_only=True)]
        started = time.monotonic()
        try:
            for part in fills:
                for name, message in part.start():
                    self.send(self.hosts.hosts[name].identity, message)
            deadline = time.monotonic() + timeout_s
            while pending := [h for part in fills for h in part.pending(set(self.hosts.hosts))]:
                if time.monotonic() > deadline:
                    raise DataError(f"filling the caches of hosts {', '.join(pending)} took over {timeout_s:.0f} s")
                await self.idle(100)
            for name, refused in (item for part in fills for item in part.refused.items()):
                kind = ConfigError if refused.exit_code == ConfigError.exit_code else DataError
                raise kind(f"host {name} cannot hold the dataset: {refused.message}")
            held = {name: info for part in fills for name, info in part.held.items()}
            sent = sum(sender.sent_chunks for part in fills for sender in part.senders.values())
            self.host_events.append(f"dataset {data.spec}: hosts {', '.join(sorted(held))} hold it "
                                    + (f"({sent} chunks sent in {time.monotonic() - started:.3f} s)" if sent
                                       else "already")
                                    + (f"; {', '.join(sorted(streaming))} its test split (rows by value)"
                                       if streaming else ""))
            self.job_data = JobData(data, fills[0].offer, fills[1].offer, held)
            for name in held:
                self._data_of_host(name)
            return self.job_data.data_of
        finally:
            self._fills = None
            for part in fills:
                part.close()

    def check_streamable(self, data: protocol.DatasetInfo, batch_size: int) -> None:
        """ConfigError, before anything is sent, when a streaming host is here and a whole batch
        of this data is more than its agent holds per actor (the receiver's own rule)."""
        if any(h.hello.data == "stream" for h in self.hosts.hosts.values()):
            BatchReceiver(0, 0, data.n_features, batch_size)

    async def open_streams(self, data: protocol.DatasetInfo, job_id: int, batch_size: int, seed: int,
                           actor_ids: list[str]) -> None:
        """Rows by value for the job's actors on streaming hosts (``streams``), in a job with
        actors of other hosts (one may come back streaming)."""
        hosts = {rank: self.remote[a].host for rank, a in enumerate(actor_ids) if a in self.remote}
        if not hosts:
            return
        self._stream_reader = reader = SegmentReader()
        x = reader.attach(data.x_train.segment, data.x_train.dtype, data.x_train.shape)
        y = reader.attach(data.y_train.segment, data.y_train.dtype, data.y_train.shape)
        order = _orders(len(x), seed)
        if any(self.hosts.hosts[h].hello.data == "stream" for h in set(hosts.values()) if h in self.hosts.hosts):
            await asyncio.to_thread(order, 0)   # imports torch, off the loop: only a job that streams pays
        self.streams = Streams(job_id, x, y, order, batch_size, hosts)

    def stream_ahead(self, identity: bytes, message: protocol.Message) -> None:
        """``message`` goes to an actor next: first what its rows by value need its agent to get."""
        if self.streams is not None:
            for host, frame in self.streams.before(identity, message):
                self._to_agent(host, frame)

    def _credited(self, host: str, message: protocol.BatchCredit) -> None:
        if self.streams is not None:   # else the job is over: a late credit is nobody's
            for to, frame in self.streams.credit(host, message):
                self._to_agent(to, frame)

    def _to_agent(self, host: str, message: protocol.Message) -> None:
        joined = self.hosts.hosts.get(host)
        if joined is not None:   # a host gone is lost by the pool; its rows with it
            self.send(joined.identity, message)

    def job_ended(self) -> None:
        """The job is over: what its data was on each host is no longer news."""
        if self.job_data is not None:
            self.job_data.close()
        if self.streams is not None:
            if self.streams.sent_frames():
                self.host_events.append(f"rows by value: {self.streams.sent_frames()} frames sent")
            self.streams = None
            self._stream_reader.close()
        self.job_data, self.released, self.job_actors = None, [], None

    def _data_of_host(self, host: str) -> None:
        """Tell the job where ``host``'s actors find its data (its copy, once it holds one)."""
        if self.job_data is not None and host in self.job_data.held:
            for actor_id, actor in self.remote.items():
                if actor.host == host:
                    self.job_data.data_of[actor_id] = self.job_data.held[host]


def _orders(n_train: int, seed: int):
    """Each epoch's permutation, as the actors derive it (``nn.order``: torch, imported at the
    first call), as numpy indices; the last one is kept."""
    last: list = [None, None]

    def order(epoch: int) -> np.ndarray:
        if last[0] != epoch:
            from ..nn.order import epoch_permutation
            last[:] = [epoch, epoch_permutation(n_train, seed, epoch).numpy()]
        return last[1]
    return order
