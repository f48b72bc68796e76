"""Named shared-memory arrays: the broker writes each array once, actors map it read-only.

We manage plain files under /dev/shm ourselves rather than using
``multiprocessing.shared_memory``: on Python < 3.13 every process that *attaches* a
segment registers it with its own resource tracker, which unlinks it when that process
exits — an actor's exit would destroy the broker's cache.

Segment names are ``leptonrt-<pid>x<token>-<key>``; the pid is the owning broker's, so a
later run can tell a stale segment (its owner is dead) from a live one.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import secrets
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..pids import pid_alive
from ..errors import DataError, Interrupted

PREFIX = "leptonrt-"
_NAME = re.compile(r"^leptonrt-(\d+)x[0-9a-f]+-[A-Za-z0-9_.]+$")


def shm_dir() -> Path:
    """Where segments live: /dev/shm on Linux, the temp dir elsewhere."""
    dev = Path("/dev/shm")
    return dev if dev.is_dir() else Path(tempfile.gettempdir())


def new_run_id() -> str:
    """A run id that names this process (for stale-segment cleanup) plus a random token."""
    return f"{os.getpid()}x{secrets.token_hex(4)}"


def clean_stale() -> list[str]:
    """Unlink segments whose owning broker process is gone; return their names."""
    removed = []
    for path in shm_dir().glob(PREFIX + "*"):
        match = _NAME.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def remove_segments_of(pid: int) -> list[str]:
    """Unlink every segment created by process ``pid`` (which the caller knows is dead,
    even if it is still an unreaped zombie that ``clean_stale`` would take for alive)."""
    removed = []
    for path in shm_dir().glob(f"{PREFIX}{pid}x*"):
        match = _NAME.match(path.name)
        if match and int(match.group(1)) == pid:
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def list_segments(run_id: str | None = None) -> list[str]:
    """Names of leptonrt segments present now (of one run, or of all runs)."""
    stem = PREFIX + (f"{run_id}-" if run_id else "")
    return sorted(p.name for p in shm_dir().glob(stem + "*"))


class SegmentWriter:
    """Creates a run's segments and unlinks all of them on ``close()``.

    Safe to use from several threads: loads run in worker threads while the event loop
    evicts and closes. Once closed it creates nothing more, so a load that outlives its
    cache cannot leave a segment behind.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._names: set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    def put(self, key: str, array: np.ndarray) -> str:
        """Copy ``array`` into a new segment named after ``key``; return the segment name."""
        data = np.ascontiguousarray(array)
        name, mm = self.allocate(key, data.nbytes)
        with mm:
            np.frombuffer(mm, dtype=np.uint8, count=data.nbytes)[:] = data.reshape(-1).view(np.uint8)
        return name

    def allocate(self, key: str, nbytes: int) -> tuple[str, mmap.mmap]:
        """A new segment named after ``key`` with ``nbytes`` bytes reserved, mapped for
        writing: the caller fills it and closes the map. Returns (segment name, map)."""
        name = f"{PREFIX}{self.run_id}-{key}"
        path = shm_dir() / name
        size = max(nbytes, 1)  # mmap cannot map zero bytes; an empty array gets 1 byte
        try:
            fd = self._create(name, path)
            try:
                _reserve(fd, size)
                return name, mmap.mmap(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            self.remove([name])
            raise DataError(f"cannot write shared-memory segment {path}: {exc.strerror}") from exc

    def _create(self, name: str, path: Path) -> int:
        with self._lock:  # a name is recorded before close() could miss it
            if self._closed:
                raise Interrupted(f"the dataset cache closed before segment {name} was written")
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            self._names.add(name)
            return fd

    def remove(self, names: list[str]) -> None:
        """Unlink these segments now (mapped readers keep their pages until they unmap)."""
        with self._lock:
            for name in names:
                (shm_dir() / name).unlink(missing_ok=True)
                self._names.discard(name)

    def close(self) -> None:
        """Unlink every segment this writer created, and create none from now on."""
        with self._lock:
            self._closed = True
            names = list(self._names)
        self.remove(names)


def _reserve(fd: int, size: int) -> None:
    """Give the segment its pages now: on a full tmpfs, writing through the mapping of a
    merely truncated file is SIGBUS, while fallocate fails cleanly with ENOSPC."""
    try:
        os.posix_fallocate(fd, 0, size)
    except (AttributeError, OSError) as exc:  # no fallocate here (macOS, some filesystems)
        if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)


class SegmentReader:
    """Maps segments read-only, without copying; keeps the mappings alive until closed."""

    def __init__(self) -> None:
        self._maps: list[mmap.mmap] = []

    def attach(self, segment: str, dtype: str, shape: tuple[int, ...] | list[int]) -> np.ndarray:
        """A read-only array backed directly by the segment's pages."""
        if not segment.startswith(PREFIX) or "/" in segment:
            raise DataError(f"refusing shared-memory segment name {segment!r}")
        path = shm_dir() / segment
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np.dtype(dtype).itemsize
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise DataError(f"cannot open shared-memory segment {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size < nbytes:
                raise DataError(f"shared-memory segment {path} holds {size} bytes, expected {nbytes}")
            mm = mmap.mmap(fd, max(size, 1), access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._maps.append(mm)
        return np.frombuffer(mm, dtype=dtype, count=count).reshape(shape)

    def close(self) -> None:
        """Drop the mappings; arrays obtained from ``attach`` must not be used afterwards."""
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:
                pass  # a live array still points into it; the OS unmaps at exit
        self._maps.clear()
