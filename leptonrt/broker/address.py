"""Where a running broker listens: the per-user default, and who may listen where.

The default is an ``ipc://`` socket in a private runtime directory (mode 0700, owned by
the user), so only that user can submit jobs. A ``tcp://`` address, loopback included
(every local user can reach loopback), admits only clients whose CURVE key is allowed
(``leptonrt keys``).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ..errors import ConfigError, UsageError


def runtime_dir() -> Path:
    """The user's private leptonrt directory, created 0700 if missing and checked if not."""
    base = os.environ.get("LEPTONRT_RUNTIME_DIR")
    if base:
        path = Path(base)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "leptonrt"
    else:
        path = Path(tempfile.gettempdir()) / f"leptonrt-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise ConfigError(f"cannot create the runtime directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(f"runtime directory {path} must be a directory owned by you with mode 0700 "
                          f"(it is {stat.filemode(info.st_mode)}); fix it or set LEPTONRT_RUNTIME_DIR")
    return path


def default_address() -> str:
    return f"ipc://{runtime_dir()}/broker.sock"


def ipc_path(address: str) -> Path | None:
    return Path(address.removeprefix("ipc://")) if address.startswith("ipc://") else None


def check_address(address: str) -> None:
    """A usable ``ipc://PATH`` or ``tcp://HOST:PORT``, or a UsageError saying why not."""
    if address.startswith("ipc://"):
        if not address[6:]:
            raise UsageError("an ipc address needs a path, e.g. ipc:///run/user/1000/leptonrt/broker.sock")
        return
    if address.startswith("tcp://"):
        host, sep, port = address[6:].rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) < 65536:
            return
    raise UsageError(f"expected ipc://PATH or tcp://HOST:PORT, got {address!r}")


def check_listen(address: str) -> None:
    """A usable address to listen on (TCP ones get CURVE: see leptonrt.curve)."""
    check_address(address)
