"""The broker's socket to its actors: a ROUTER driven straight from the event loop.

zmq.asyncio wraps every poll, receive and send in futures (a poll builds a poller too). At
the few hundred messages a second of a running job (load reports in, grants out) that was
most of the broker's CPU, about a quarter of a millisecond a wait on a 2-core box: time
taken from the actors it serves, which have every core between them. Here the ROUTER is a
plain socket. Receives and sends never block (a ROUTER drops what it cannot route), and
waiting is one reader callback on the socket's file descriptor plus a timer.

That descriptor only says "something changed": it is cleared by reading ``EVENTS``, and
fires again only after the next change. So ``EVENTS`` is read before every wait (a message
may be queued already) and in every callback (so a level-triggered loop does not spin).
"""

from __future__ import annotations

import asyncio
import errno
from typing import Callable

import zmq


class PeerGone(Exception):
    """A send named a peer that is not connected (any more)."""


SEND_HWM = 1000   # messages queued for one peer before sends to it fail (it is not reading)


class Channel:
    """A bound ROUTER socket with non-blocking I/O and a cheap ``wait_readable``.

    ROUTER_MANDATORY is set: a send to a peer that is gone, or that has stopped reading,
    fails (``send_nowait`` says False, or raises PeerGone) instead of vanishing, so the
    caller can act on it.
    """

    def __init__(self, address: str, max_frame_bytes: int, ctx: zmq.Context | None = None,
                 configure: Callable[[zmq.Socket], None] | None = None) -> None:
        self._own_ctx = ctx is None
        self.ctx = zmq.Context() if ctx is None else ctx
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # a longer frame disconnects the peer before libzmq buffers any more of it
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        if configure is not None:
            configure(self.sock)   # options that must be set before the socket binds (CURVE)
        self._loop: asyncio.AbstractEventLoop | None = None   # where our reader is registered
        self._waiter: asyncio.Future | None = None
        try:
            self.sock.bind(address)
        except zmq.ZMQError:
            self.close()
            raise

    def send_nowait(self, identity: bytes, payload: bytes) -> bool:
        """Queue one message for one peer; False if its queue is full (it is not reading).
        Raises PeerGone if no such peer is connected."""
        try:
            self.sock.send_multipart([identity, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                raise PeerGone(identity) from None
            raise
        return True

    def recv_nowait(self, copy: bool = True) -> list | None:
        """The next message's frames (``zmq.Frame``s when not ``copy``: they carry the
        connection's metadata), or None if none is queued."""
        try:
            return self.sock.recv_multipart(flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return None

    async def wait_readable(self, timeout_ms: int) -> bool:
        """Wait until a message is queued (True) or ``timeout_ms`` passes (False)."""
        if self._queued():
            return True
        if timeout_ms <= 0:
            return False
        if self._waiter is not None:   # one reader: a second would take the first one's wake-up
            raise RuntimeError("Channel.wait_readable is already being awaited")
        loop = asyncio.get_running_loop()
        self._watch(loop)
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout_ms / 1000, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return self._queued()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.FD)
        self._loop = None
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def _queued(self) -> bool:
        return bool(self.sock.get(zmq.EVENTS) & zmq.POLLIN)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Register the reader on ``loop`` (once; again if the caller moved to another loop)."""
        if loop is self._loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.FD)
        loop.add_reader(self.sock.FD, self._on_change)
        self._loop = loop

    def _on_change(self) -> None:
        if self._queued() and self._waiter is not None:   # reading EVENTS also clears the descriptor
            _resolve(self._waiter)


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
