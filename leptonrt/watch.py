"""The loop around the view: redraw a broker's screen, or print a line, until told to stop.

``watch`` redraws a ``rich.live.Live`` at most four times a second on a terminal, and prints
a plain line every few seconds anywhere else. On a terminal it reads keys
(``leptonrt.terminal``): ``e`` shows or hides the event log, ``q`` quits where quitting is
the viewer's to decide (``top``; in ``up`` the view is the broker's own, and Ctrl-C is what
stops it). What is drawn is ``leptonrt.view``'s, from one snapshot at a time.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from typing import Awaitable, Callable, Union

from rich.console import Console
from rich.live import Live

from .broker.stats import Snapshot
from .terminal import KeyReader
from .view import Screen, plain_line, render

MAX_REFRESH_HZ = 4.0
HINT_S = 4.0               # how long a key's hint stays on the screen

SnapshotSource = Callable[[], Union[Snapshot, Awaitable[Snapshot]]]


async def _fetch(get_snapshot: SnapshotSource) -> Snapshot:
    snap = get_snapshot()
    if inspect.isawaitable(snap):
        snap = await snap
    return snap  # type: ignore[return-value]


async def _stopped(stop: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds; True as soon as ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout)
    except asyncio.TimeoutError:
        return stop.is_set()
    return True


class _Controls:
    """What the keys change: the event log shown or not, a hint, quitting."""

    def __init__(self, stop: asyncio.Event, can_quit: bool, events: int) -> None:
        self.stop, self.can_quit, self.events = stop, can_quit, events
        self.show_events = True
        self.hint, self.hint_until = "", 0.0
        self.pressed = asyncio.Event()   # redraw now

    def on_key(self, key: str) -> None:
        if key in "qQ":
            if self.can_quit:
                self.stop.set()
            else:
                self.hint = "q does not stop the broker: Ctrl-C does (the running job stops at a step boundary)"
                self.hint_until = time.monotonic() + HINT_S
        elif key in "eE":
            self.show_events = not self.show_events
        self.pressed.set()

    def footer(self, keys: bool) -> str:
        if self.hint and time.monotonic() < self.hint_until:
            return self.hint
        if not keys:
            return ""
        events = "e hide events" if self.show_events else "e show events"
        return f"q quit · {events}" if self.can_quit else f"{events} · Ctrl-C stops the broker"

    def screen(self, snap: Snapshot, keys: bool) -> Screen:
        return render(snap, events=self.events if self.show_events else 0, footer=self.footer(keys))

    async def wait(self, timeout: float) -> None:
        """Until ``timeout`` passes, a key is pressed, or the view is stopped."""
        waits = [asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self.pressed.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self.pressed.clear()


async def watch(get_snapshot: SnapshotSource, *, stop: asyncio.Event, console: Console | None = None,
                plain: bool | None = None, refresh_hz: float = 4.0, plain_every_s: float = 5.0,
                can_quit: bool = True, keys_fd: int | None = None, events: int = 5) -> None:
    """Show snapshots from ``get_snapshot`` (plain or async callable) until ``stop`` is set.

    On a terminal (and unless ``plain`` is True) the screen is redrawn at most ``refresh_hz``
    times a second, never more than four, and keys are read from ``keys_fd`` (standard input
    by default; see ``leptonrt.terminal``): ``e`` toggles the event log, ``q`` sets ``stop``
    if ``can_quit``, else shows a hint. Otherwise ``plain_line`` is printed at the start,
    every ``plain_every_s`` seconds, and once more at the end. Errors from ``get_snapshot``
    (a ``LeptonError`` when the broker is gone, say) propagate to the caller.
    """
    if refresh_hz <= 0 or plain_every_s <= 0:
        raise ValueError("refresh_hz and plain_every_s must be positive")
    console = console or Console()
    if console.is_terminal and plain is not True:
        await _watch_live(get_snapshot, stop, console, 1.0 / min(refresh_hz, MAX_REFRESH_HZ), can_quit,
                          _stdin_fd() if keys_fd is None else keys_fd, events)
        return

    def emit(snap: Snapshot) -> None:
        console.print(plain_line(snap), markup=False, highlight=False, soft_wrap=True)

    emit(await _fetch(get_snapshot))
    while not await _stopped(stop, plain_every_s):
        emit(await _fetch(get_snapshot))
    emit(await _fetch(get_snapshot))


async def _watch_live(get_snapshot: SnapshotSource, stop: asyncio.Event, console: Console, interval: float,
                      can_quit: bool, keys_fd: int | None, events: int) -> None:
    controls = _Controls(stop, can_quit, events)
    with KeyReader(keys_fd, controls.on_key) as keys:
        with Live(controls.screen(await _fetch(get_snapshot), keys.active), console=console,
                  auto_refresh=False) as live:
            while not stop.is_set():
                await controls.wait(interval)
                if not stop.is_set():
                    live.update(controls.screen(await _fetch(get_snapshot), keys.active), refresh=True)


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):   # no standard input (closed, or replaced by a test)
        return None


__all__ = ["watch"]
