"""Single key presses from the terminal, for the live view (``q``, ``e``).

While a ``KeyReader`` is open its terminal is in cbreak mode: each key arrives as it is
pressed, unechoed, and Ctrl-C still raises SIGINT (so ``up``'s and ``top``'s signal
handling is untouched). The terminal's settings come back when it closes, whatever
happened meanwhile. It reads nothing when the descriptor is not a terminal, or when this
process is not in the terminal's foreground (a shell's background job would be stopped by
SIGTTOU for changing the settings, and by SIGTTIN for reading).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

try:
    import termios
    import tty
except ImportError:   # not a POSIX terminal: no keys
    termios = tty = None


class KeyReader:
    """Calls ``on_key(char)`` on the running loop for each key pressed at ``fd``."""

    def __init__(self, fd: int | None, on_key: Callable[[str], None]) -> None:
        self.fd, self.on_key = fd, on_key
        self.active = False
        self._saved: list | None = None

    def __enter__(self) -> "KeyReader":
        if not self._usable():
            return self
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)
        asyncio.get_running_loop().add_reader(self.fd, self._read)
        self.active = True
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.active:
            return
        self.active = False
        asyncio.get_running_loop().remove_reader(self.fd)
        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        except termios.error:   # the terminal went away (its window closed): nothing to restore
            pass

    def _usable(self) -> bool:
        if self.fd is None or termios is None or not os.isatty(self.fd):
            return False
        try:
            return os.tcgetpgrp(self.fd) == os.getpgrp()
        except OSError:   # a terminal, but not our controlling one: job control does not apply to it
            return True

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:   # the terminal hung up: stop listening, keep the view going
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        for char in data.decode(errors="ignore"):
            self.on_key(char)


__all__ = ["KeyReader"]
