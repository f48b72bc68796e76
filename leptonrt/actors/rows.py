"""Rows by value on a streaming host (``join --data stream``): the agent's desk, and each
actor's line to it.

The head streams each actor's rows to the agent (``BatchRows``, credited per actor); the
agent holds them in one ``data.stream.BatchReceiver`` per actor. An actor asks for the
piece it trains next (``PieceWanted``) on a private ipc socket in the agent's 0700 run
directory and gets it whole (``PieceRows``) once its every frame is there; taking it is
what frees the window, so the credit the agent sends the head follows what the actor has
consumed. One request per actor is outstanding: a newer one replaces it (the actor moved
on), one of a newer job or generation drops what was held and credits the window anew.
The actor waits only on the piece it needs now, polling its broker meanwhile
(``Rows.wait``), so a regroup or a lost head is seen as while it waits for a grant.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq

from .. import messages
from ..data.stream import BatchReceiver
from ..errors import ConfigError, LeptonError, ProtocolError
from ..messages import ACTOR_LIMITS, ROWS_LIMITS, BatchRows, Message, PieceRows, PieceWanted

ENV = "LEPTONRT_ROWS"   # where an actor of a streaming host asks for its rows


class Desk:
    """The agent's side: the actors' requests in, their pieces out, credits for the head."""

    def __init__(self, ctx: zmq.Context, run_dir: Path) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.set(zmq.MAXMSGSIZE, ACTOR_LIMITS.frame_bytes)   # requests are small
        self.sock.set(zmq.ROUTER_MANDATORY, 1)
        self.endpoint = f"ipc://{run_dir / 'rows'}"
        self.sock.bind(self.endpoint)
        self._receivers: dict[int, BatchReceiver] = {}            # rank -> its rows held
        self._wanted: dict[int, tuple[bytes, PieceWanted]] = {}   # rank -> the actor's request
        self.refused = 0   # frames or requests dropped as bad

    def frame(self, msg: BatchRows) -> list[Message]:
        """One frame from the head; the credit to send back."""
        receiver = self._receivers.get(msg.rank)
        if receiver is None or receiver.job_id != msg.job_id:
            return []   # no actor of that job asked yet, or it is over: late frames
        try:
            receiver.handle(msg)
        except ProtocolError:
            self.refused += 1
            return []
        return self._answer(msg.rank)

    def requests(self) -> list[Message]:
        """Every request waiting on the socket; the credit to send the head."""
        out: list[Message] = []
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            try:
                want = messages.decode(frames[-1], ACTOR_LIMITS) if len(frames) == 2 else None
            except ProtocolError:
                want = None
            if not isinstance(want, PieceWanted):
                self.refused += 1
                continue
            out += self._want(frames[0], want)
        return out

    def close(self) -> None:
        self.sock.close(0)

    def _want(self, identity: bytes, want: PieceWanted) -> list[Message]:
        receiver, out = self._receivers.get(want.rank), []
        if receiver is None or receiver.job_id != want.job_id:
            try:
                receiver = BatchReceiver(want.job_id, want.rank, want.n_features, want.batch_size,
                                         generation=want.generation)
            except LeptonError:   # a batch wider than an agent holds: the head never streams it
                self.refused += 1
                return []
            self._receivers[want.rank] = receiver
            out += receiver.start()
        elif want.generation > receiver.generation:
            out += receiver.regroup(want.generation)
        elif want.generation < receiver.generation:
            return []   # of a group that is gone
        self._wanted[want.rank] = (identity, want)
        return out + self._answer(want.rank)

    def _answer(self, rank: int) -> list[Message]:
        """The piece the actor waits for, if it is all there now; the credit it frees."""
        if rank not in self._wanted:
            return []
        identity, want = self._wanted[rank]
        rows, credit = self._receivers[rank].take(want.step, want.start, want.stop)
        if rows is not None:
            del self._wanted[rank]
            reply = PieceRows(job_id=want.job_id, rank=rank, generation=want.generation, step=want.step,
                              start=want.start, stop=want.stop, x=rows.x.tobytes(), y=rows.y.tobytes())
            try:
                self.sock.send_multipart([identity, messages.encode(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass   # the actor is gone: its replacement asks again
        return credit


class Rows:
    """The actor's side: ask the agent for a piece, wait for it while the broker is polled."""

    def __init__(self, job_id: int, n_features: int, batch_size: int) -> None:
        endpoint = os.environ.get(ENV)
        if not endpoint:
            raise ConfigError("this actor was welcomed to take its rows by value, but its agent named no "
                              f"rows socket ({ENV})")
        self.job_id, self.n_features, self.batch_size = job_id, n_features, batch_size
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.set(zmq.MAXMSGSIZE, ROWS_LIMITS.frame_bytes)
        self.sock.connect(endpoint)
        self._asked: PieceWanted | None = None

    def ask(self, rank: int, generation: int, step: int, start: int, stop: int) -> None:
        """Ask for a piece (again only if it is another one than the last asked)."""
        want = PieceWanted(job_id=self.job_id, rank=rank, generation=generation, step=step, start=start, stop=stop,
                           n_features=self.n_features, batch_size=self.batch_size)
        if want != self._asked:
            self.sock.send(messages.encode(want))
            self._asked = want

    def wait(self, rank: int, generation: int, step: int, start: int, stop: int, poll_ms: int,
             meanwhile: Callable[[], bool]) -> tuple[np.ndarray, np.ndarray] | None:
        """The piece's rows (x float32 (b, D), y int64 (b,)); None once ``meanwhile`` (called
        every ``poll_ms`` while they have not come) says to stop waiting."""
        self.ask(rank, generation, step, start, stop)
        key = (self.job_id, rank, generation, step, start, stop)
        while True:
            if self.sock.poll(poll_ms):
                got = self._take()
                if got is not None and (got.job_id, got.rank, got.generation, got.step, got.start, got.stop) == key:
                    self._asked = None
                    x = np.frombuffer(got.x, np.float32).reshape(stop - start, self.n_features)   # (b, D)
                    return x, np.frombuffer(got.y, np.int64)
                continue   # a piece asked for before a regroup: not this one
            if not meanwhile():
                return None

    def close(self) -> None:
        self.sock.close(0)

    def _take(self) -> PieceRows | None:
        try:
            msg = messages.decode(self.sock.recv(), ROWS_LIMITS)
        except ProtocolError:
            return None
        return msg if isinstance(msg, PieceRows) else None
