"""Keeping a service task alive: restart it when it dies of a bug, give up loudly when it
keeps dying. A half-alive broker (its process up, its service silently gone) is the
failure this exists to prevent."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from ..errors import InternalError

log = logging.getLogger("leptonrt")


async def supervise(serve: Callable[[], Awaitable[None]], *, name: str, restarts: int, window_s: float,
                    on_broken: Callable[[InternalError], None],
                    clock: Callable[[], float] = time.monotonic) -> None:
    """Run ``serve()`` until it is cancelled. Each time it raises, run it again, unless it
    has died more than ``restarts`` times within ``window_s`` seconds: then call
    ``on_broken`` with an InternalError that says so, and return."""
    deaths: list[float] = []
    while True:
        try:
            await serve()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:   # a bug of ours: logged with its traceback, then restarted
            now = clock()
            deaths = [t for t in deaths if now - t < window_s] + [now]
            log.exception("%s died (%d time(s) within %g s)", name, len(deaths), window_s)
            if len(deaths) > restarts:
                on_broken(InternalError(f"{name} died {len(deaths)} times within {window_s:g} s; last: {exc!r}"))
                return
