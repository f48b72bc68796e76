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

import zmq


class Channel:
    """A bound ROUTER socket with non-blocking I/O and a cheap ``wait_readable``."""

    def __init__(self, address: str, max_message_bytes: int) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None   # where our reader is registered
        self._waiter: asyncio.Future | None = None
        try:
            self.sock.bind(address)
        except zmq.ZMQError:
            self.close()
            raise

    def send_nowait(self, identity: bytes, payload: bytes) -> bool:
        """Queue one message for one actor; False if it cannot take it (gone, or far behind)."""
        try:
            self.sock.send_multipart([identity, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def recv_nowait(self) -> list[bytes] | None:
        """The next message's frames, or None if none is queued."""
        try:
            return self.sock.recv_multipart(flags=zmq.NOBLOCK)
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
