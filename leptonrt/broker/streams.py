"""The head's side of a job's rows by value (``join --data stream``), with no I/O.

One ``data.stream.BatchFeeder`` per actor of a streaming host (its Welcome says
``rows_by_value``). The shell shows ``before``
every message the job's core sends to an actor, before it goes out, and sends what comes
back to that actor's agent: a Welcome or Regroup (or Standby) moves the actor's feeder to
its generation first (the head before its Regroup, as ``data.stream`` orders it); a Grant
plans the actor's pieces of the granted steps, cut from the grant's split exactly as the
actor cuts them (``batches.piece``). The agent's ``BatchCredit`` comes in through
``credit``, and the frames it allows go out.

The frames travel on the agent's link, not the actor's socket: the agent is the one that
holds and credits them (the actor asks it for a piece when it trains it), so the shells on
both ends only move bytes, and one host's window is one connection's. Splits change only
where grants change them: an actor that streams never votes for an early switch
(``actors.loop``), so a Resplit takes effect where the grants already out end, and
every step's piece is the one its grant planned.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..batches import batch_rows, piece, steps_per_epoch
from ..data.stream import BatchFeeder
from ..errors import ProtocolError
from ..messages import BatchCredit, Grant, Message, Regroup, Standby, Welcome


class Streams:
    """The rows of one job's streaming actors. ``hosts`` maps each rank of another host to
    that host; a rank streams once a Welcome says so (``rows_by_value``), so a host that
    comes back mid-job streams or not as its new agent said."""

    def __init__(self, job_id: int, x_train: np.ndarray, y_train: np.ndarray, order: Callable[[int], np.ndarray],
                 batch_size: int, hosts: dict[int, str]) -> None:
        self.job_id, self.hosts = job_id, dict(hosts)
        self._x, self._y, self._order = x_train, y_train, order
        self._n, self._batch = len(x_train), batch_size
        self._spe = steps_per_epoch(len(x_train), batch_size)
        self._feeders: dict[int, BatchFeeder] = {}
        self._ranks: dict[bytes, int] = {}   # a streaming actor's connection -> its rank (from its Welcome)
        self.sent_before = 0   # frames sent by feeders since dropped (their host came back holding the data)

    def before(self, identity: bytes, msg: Message) -> list[tuple[str, Message]]:
        """``msg`` is about to go to the actor ``identity``: (host, frame) to send its agent."""
        if isinstance(msg, Welcome) and msg.rank in self.hosts:
            self._welcomed(msg)
        if isinstance(msg, (Welcome, Regroup)) and msg.rank in self._feeders:
            self._ranks[identity] = msg.rank
            self._move(msg.rank, msg.generation)
            return []
        rank = self._ranks.get(identity)
        if rank is None:
            return []
        if isinstance(msg, Standby):
            self._move(rank, msg.generation)
            return []
        if isinstance(msg, Grant):
            pieces = [(g, *piece(msg.split, batch_rows(self._n, self._batch, g % self._spe), rank))
                      for g in range(msg.first_step, msg.end_step)]
            return [(self.hosts[rank], frame) for frame in self._feeders[rank].plan(pieces)]
        return []

    def credit(self, host: str, msg: BatchCredit) -> list[tuple[str, Message]]:
        """A host's credit for one of its actors; ProtocolError if that actor is not its."""
        if msg.job_id != self.job_id or self.hosts.get(msg.rank) != host or msg.rank not in self._feeders:
            raise ProtocolError(f"host {host} credited rows of job {msg.job_id} rank {msg.rank}, "
                                "not one of its actors'")
        return [(host, frame) for frame in self._feeders[msg.rank].handle(msg)]

    def sent_frames(self) -> int:
        return self.sent_before + sum(f.sent_frames for f in self._feeders.values())

    def _welcomed(self, msg: Welcome) -> None:
        if msg.rows_by_value and msg.rank not in self._feeders:
            self._feeders[msg.rank] = BatchFeeder(self.job_id, msg.rank, self._x, self._y, self._order, self._batch,
                                                  generation=msg.generation)
        elif not msg.rows_by_value and msg.rank in self._feeders:
            self.sent_before += self._feeders.pop(msg.rank).sent_frames

    def _move(self, rank: int, generation: int) -> None:
        feeder = self._feeders[rank]
        if generation != feeder.generation:
            feeder.regroup(generation)
