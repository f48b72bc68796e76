"""Reading dataset files: regular files only, and every failure one line naming the file.

A path that is not a regular file is refused before anything reads it: opening a FIFO
for reading blocks until some writer appears, and a device such as /dev/zero never
ends, so either would wedge the load (and with it Ctrl-C). The path is checked with
``stat``, opened with ``O_NONBLOCK`` (so even a FIFO swapped in after that check cannot
block the open) and checked again on the open descriptor, which is what is then read.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from leptonrt.errors import DataError

# What np.load / zipfile / gzip raise on a corrupt file; all mean "unusable data".
CORRUPT = (EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError)
_OS_REASONS = (
    (FileNotFoundError, "file not found"),
    (IsADirectoryError, "is a directory, expected a file"),
    (PermissionError, "permission denied"),
    (NotADirectoryError, "a parent of this path is not a directory"),
)
_NOT_REGULAR: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "is a directory, expected a file"),
    (stat.S_ISFIFO, "is a FIFO (named pipe), not a regular file"),
    (stat.S_ISCHR, "is a character device, not a regular file"),
    (stat.S_ISBLK, "is a block device, not a regular file"),
    (stat.S_ISSOCK, "is a socket, not a regular file"),
)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
# O_NOCTTY: a terminal device must never become our controlling terminal by being opened.
_OPEN_FLAGS = (os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))


def data_error(where: str, problem: object) -> DataError:
    """``WHERE: PROBLEM`` as one printable line: runs of whitespace in ``problem`` become
    one space, other control characters (a decoder quoting binary bytes) a ``?``."""
    text = "".join(c if c.isprintable() else "?" for c in " ".join(str(problem).split()))
    return DataError(f"{where}: {text}")


def file_error(path: str, problem: object) -> DataError:
    """The one-line error every bad file gets: ``bad dataset file PATH: PROBLEM``."""
    return data_error(f"bad dataset file {path}", problem)


@contextlib.contextmanager
def reading(path: str, corrupt: str, also: tuple[type[Exception], ...] = ()) -> Iterator[None]:
    """Turn the OS / decoder errors raised while reading ``path`` into DataErrors;
    ``also``: a decoder's own exception types (pyarrow's), which mean the same."""
    try:
        yield
    except OSError as exc:
        reason = next((r for t, r in _OS_REASONS if isinstance(exc, t)), None)
        raise file_error(path, reason or f"{corrupt} ({exc})") from exc
    except (*CORRUPT, *also) as exc:
        raise file_error(path, f"{corrupt} ({exc})") from exc


def _refuse_unless_regular(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        reason = next((r for test, r in _NOT_REGULAR if test(mode)), "is not a regular file")
        raise file_error(path, reason)


def open_regular(path: str) -> BinaryIO:
    """Open ``path`` for binary reading if, and only if, it is a regular file.

    OS errors are left to the caller (``reading`` turns them into DataErrors); a path
    that is not a regular file is a DataError before any byte of it is read.
    """
    _refuse_unless_regular(path, os.stat(path).st_mode)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)
        if _NONBLOCK:  # no effect on a regular file's reads; cleared so the file is ordinary
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str) -> bytes:
    """Read a whole regular file, gunzipping it when its name ends in ``.gz``."""
    gzipped = path.endswith(".gz")
    with reading(path, "corrupt gzip data" if gzipped else "cannot read"), open_regular(path) as f:
        if gzipped:
            with gzip.GzipFile(fileobj=f, mode="rb") as unzipped:
                return unzipped.read()
        return f.read()
