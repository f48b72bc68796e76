"""Blocking work awaited from asyncio without ever holding up shutdown.

``asyncio.to_thread`` runs work in the loop's default executor, whose threads are
joined when the loop closes and again at interpreter exit: one read that never returns
(a hung network filesystem, a device) keeps the process alive through every Ctrl-C,
and when it finally returns the thread posts its result to a closed loop ("Event loop
is closed"). Here each piece of work gets its own daemon thread, which nothing joins;
its result comes back through ``call_soon_threadsafe``, and a closed loop is expected
rather than an error. Cancelling the await returns at once; the thread finishes (or
not) on its own, and ``on_abandoned`` gets a result nobody waited for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_in_daemon_thread(work: Callable[[], T], *, name: str,
                               on_abandoned: Callable[[T], None] | None = None) -> T:
    """Run ``work()`` in a new daemon thread called ``name`` and return its result.

    ``on_abandoned(result)`` runs on the loop if the awaiting task was cancelled before
    ``work`` returned (to undo what the result holds); it is not called if ``work``
    raised, or if the loop has closed meanwhile.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(value: T | None, error: BaseException | None) -> None:  # on the loop
        if future.cancelled():
            if error is None and on_abandoned is not None:
                on_abandoned(value)  # type: ignore[arg-type]
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def thread_main() -> None:
        value, error = None, None
        try:
            value = work()
        except BaseException as exc:  # delivered to the awaiter, never printed by the thread
            error = exc
        try:
            loop.call_soon_threadsafe(deliver, value, error)
        except RuntimeError:
            pass  # the loop closed while we worked: nobody is waiting any more

    threading.Thread(target=thread_main, name=name, daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        # Cancelled after the result arrived but before this task resumed: deliver() saw a
        # live future, so undoing the result falls to us.
        if future.done() and not future.cancelled() and future.exception() is None and on_abandoned:
            on_abandoned(future.result())
        raise
