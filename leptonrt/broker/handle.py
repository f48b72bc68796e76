"""What a job's owner holds, whether the job runs here or on a running broker: no torch, no
sockets, so a client imports it in milliseconds."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ..errors import LeptonError

_DONE = object()  # ends a job's event stream


class BrokerClosed(LeptonError):
    """The broker was shut down before this job could finish (we closed it, nothing broke)."""

    exit_code = 75   # EX_TEMPFAIL: nothing wrong with the job; submit it again to a running broker


class JobHandle:
    """What a job's owner holds, here or on a running broker (``leptonrt.connect``): a
    stream of events that ends when the job does, and its outcome."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._events: asyncio.Queue = asyncio.Queue()
        self._result: asyncio.Future = loop.create_future()

    def _emit(self, event: object) -> None:
        self._events.put_nowait(event)

    def _end(self, result: dict | None = None, error: BaseException | None = None) -> None:
        """Settle the outcome (once) and end the event stream."""
        if self._result.done():
            return
        if error is not None:
            self._result.set_exception(error)
            self._result.exception()   # an outcome nobody awaits is no "exception never retrieved"
        else:
            self._result.set_result(result)
        self._events.put_nowait(_DONE)

    async def events(self) -> AsyncIterator[object]:
        """Epoch results, split changes, lost and recovered actors as they happen; ends when the job does."""
        while (event := await self._events.get()) is not _DONE:
            yield event

    async def result(self) -> dict:
        """The result dict (as ``--json-out`` writes it); raises if the job failed."""
        return await asyncio.shield(self._result)

    def done(self) -> bool:
        return self._result.done()
