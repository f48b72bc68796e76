"""The single-point dataset cache: each dataset is read and decoded once, by the broker.

Arrays go into named shared memory keyed by what determines their contents (spec, seed,
test fraction, and the label column of a table), so every local actor and every later job
on the same data maps the same pages instead of re-reading storage.

The cache holds at most ``budget_bytes`` of shared memory. A job pins the dataset it
trains on (``acquire`` / ``release``, or ``using``); when a new dataset needs room the
least recently used unpinned entries are unlinked first, and a dataset that cannot fit
even then is refused with a ConfigError before its segments are written (before it is
even generated, for a synthetic spec). Recency is a use counter, not a clock.

A ``py:`` spec runs code in this process: only from the modules ``allowed_imports`` lists
(default none; see ``leptonrt.data.pyfunc``).

Loads run in worker threads while the event loop pins, releases, reports and closes, so
the cache's state is guarded by one lock, held only for bookkeeping and unlinks, never
while reading or copying data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from ..messages import ArrayRef, DatasetInfo
from ..errors import ConfigError, Interrupted, InternalError
from ..imports import allowed_modules
from .background import run_in_daemon_thread
from .loaders import Dataset, expected_nbytes, load_dataset, reads_label_column
from .shm import SegmentWriter, shm_dir

_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# Share of the memory available at start-up the cache may fill by default (see below).
_DEFAULT_SHARE = 0.5
_BUDGET_HINT = "up --cache-bytes N sets the budget"


def default_budget_bytes() -> int:
    """Half of the memory available now, and never more than the shm filesystem has free.

    Segments are memory (tmpfs pages, which cannot be paged out without swap). While a
    load copies a dataset in, the broker's heap holds a second copy of it, and the actors
    need room for models, batches and staging buffers: the other half is left for those
    and for the rest of the machine. Past the shm filesystem's free space a segment
    cannot be written at all.
    """
    import psutil  # imported here: only a broker that builds a cache needs it

    fs = os.statvfs(shm_dir())
    return int(min(psutil.virtual_memory().available * _DEFAULT_SHARE, fs.f_bavail * fs.f_frsize))


@dataclass(frozen=True)
class CachedDataset:
    """One dataset held in shared memory, as ``statistics()`` reports it."""

    spec: str  # the dataset spec it was loaded from
    seed: int  # seed of its split (and, for synthetic specs, of its draw)
    test_fraction: float  # share of rows held out, where the source has no test split
    label_column: str | None  # the label column of a csv/parquet table; None for other specs
    nbytes: int  # bytes of shared memory its four arrays take
    users: int  # jobs holding it now; an entry with users > 0 is never evicted
    in_use: bool  # users > 0
    last_used: int  # the cache's use counter when it was last acquired or released


@dataclass(frozen=True)
class CacheStatistics:
    """What the cache holds; feeds ``status --json``."""

    entries: tuple[CachedDataset, ...]  # least recently used first: the eviction order
    total_bytes: int  # bytes of shared memory the entries hold
    reserved_bytes: int  # bytes set aside for loads being written now
    budget_bytes: int  # most bytes of shared memory the cache may hold
    loads: int  # how many times storage was read or a synthetic set generated
    evictions: int  # entries unlinked to make room for another


@dataclass
class _Entry:
    record: CachedDataset  # what statistics() shows; replaced as users and recency change
    info: DatasetInfo  # what a job is given
    segments: list[str]  # the segment names, for unlinking


@dataclass(frozen=True)
class _Wanted:
    """What fixes a dataset's contents: the cache's key."""

    spec: str
    seed: int
    test_fraction: float
    label_column: str | None  # None where the spec has no columns to choose from

    @classmethod
    def of(cls, spec: str, seed: int, test_fraction: float, label_column: str) -> "_Wanted":
        return cls(spec, seed, test_fraction, label_column if reads_label_column(spec) else None)

    def segment_prefix(self) -> str:
        """A short name for its segments (entries are found by the whole key, never by this)."""
        text = json.dumps([self.spec, self.seed, self.test_fraction, self.label_column])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _nbytes(ds: Dataset) -> int:
    return sum(getattr(ds, name).nbytes for name in _ARRAYS)


class DatasetCache:
    """Owns a run's dataset segments within a byte budget; ``close()`` unlinks all of them.

    ``budget_bytes``: most bytes of shared memory held at once (default
    :func:`default_budget_bytes`). ``loader``: how a spec becomes arrays (a seam for tests).
    ``allowed_imports``: the modules a ``py:`` dataset may run code from; the default, none,
    is what a cache that serves other people's jobs needs (``ANY``: a local run's own code).
    """

    def __init__(self, run_id: str, *, budget_bytes: int | None = None,
                 loader: Callable[..., Dataset] = load_dataset,
                 allowed_imports: Iterable[str] | None = ()) -> None:
        budget = default_budget_bytes() if budget_bytes is None else budget_bytes
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"the dataset cache budget must be a positive number of bytes, got {budget!r}")
        self.budget_bytes = budget
        self._writer = SegmentWriter(run_id)
        self._loader = loader
        self.allowed_imports = allowed_modules(allowed_imports)
        self._lock = threading.Lock()
        self._entries: dict[_Wanted, _Entry] = {}
        self._loading: dict[_Wanted, threading.Event] = {}  # key -> set when its load ends
        self._reserved = 0
        self._uses = 0  # the use counter that orders entries by recency
        self._closed = False
        self.loads = 0
        self.evictions = 0

    # -- what jobs call ------------------------------------------------------------

    async def acquire(self, spec: str, *, seed: int = 0, test_fraction: float = 0.2,
                      label_column: str = "label") -> DatasetInfo:
        """The dataset's shared-memory description, pinned until ``release``; loads it
        first if needed, in a daemon thread, so cancelling this returns at once."""
        work = functools.partial(self._obtain, _Wanted.of(spec, seed, test_fraction, label_column))
        return await run_in_daemon_thread(work, name=f"leptonrt-load {spec[:64]}", on_abandoned=self.release)

    def release(self, info: DatasetInfo) -> None:
        """Unpin a dataset ``acquire`` returned; it stays cached until it is evicted."""
        with self._lock:
            if self._closed:
                return  # close() already unlinked everything
            entry = next((e for e in self._entries.values() if e.info == info), None)
            if entry is None or entry.record.users == 0:
                raise InternalError(f"released dataset {info.spec!r}, which no job holds")
            self._touch(entry, -1)

    @contextlib.asynccontextmanager
    async def using(self, spec: str, *, seed: int = 0, test_fraction: float = 0.2,
                    label_column: str = "label") -> AsyncIterator[DatasetInfo]:
        """``async with cache.using(spec) as info:`` pins the dataset for the block."""
        info = await self.acquire(spec, seed=seed, test_fraction=test_fraction, label_column=label_column)
        try:
            yield info
        finally:
            self.release(info)

    def get(self, spec: str, *, seed: int = 0, test_fraction: float = 0.2, label_column: str = "label") -> DatasetInfo:
        """Blocking and unpinned (a later load may evict it): for scripts and tests."""
        info = self._obtain(_Wanted.of(spec, seed, test_fraction, label_column))
        self.release(info)
        return info

    def statistics(self) -> CacheStatistics:
        """An immutable snapshot of what is cached."""
        with self._lock:
            entries = tuple(sorted((e.record for e in self._entries.values()), key=lambda r: r.last_used))
            return CacheStatistics(entries=entries, total_bytes=sum(r.nbytes for r in entries),
                                   reserved_bytes=self._reserved, budget_bytes=self.budget_bytes,
                                   loads=self.loads, evictions=self.evictions)

    def close(self) -> None:
        """Unlink every segment of this cache; a load still running is refused when it ends."""
        with self._lock:
            self._closed = True
            self._entries.clear()
        self._writer.close()

    # -- loading (in a worker thread) ------------------------------------------------

    def _obtain(self, key: _Wanted) -> DatasetInfo:
        """Pin the cached entry, waiting for a load of the same key already under way,
        or load it ourselves."""
        while True:
            with self._lock:
                self._check_open(key.spec)
                entry = self._entries.get(key)
                if entry is not None:
                    self._touch(entry, +1)
                    return entry.info
                under_way = self._loading.get(key)
                if under_way is None:
                    done = self._loading[key] = threading.Event()
                    break
            under_way.wait()
        try:
            return self._load(key)
        finally:
            with self._lock:
                del self._loading[key]
            done.set()

    def _load(self, key: _Wanted) -> DatasetInfo:
        """Read, make room, write the segments, and enter the dataset pinned once."""
        spec = key.spec
        size, dataset = expected_nbytes(spec), None
        if size is None:  # only the files say how big it is
            dataset = self._read(key)
            size = _nbytes(dataset)
        self._make_room(spec, size)
        try:
            if dataset is None:  # the spec said how big it would be: generate it only now
                dataset = self._read(key)
            if _nbytes(dataset) != size:
                raise InternalError(f"dataset {spec!r} holds {_nbytes(dataset):,} bytes, {size:,} expected")
            info, segments = self._publish(key, dataset)
        except BaseException:
            with self._lock:
                self._reserved -= size
            raise
        record = CachedDataset(spec=spec, seed=key.seed, test_fraction=key.test_fraction,
                               label_column=key.label_column, nbytes=size, users=1, in_use=True, last_used=0)
        return self._enter(key, _Entry(record, info, segments))

    def _read(self, key: _Wanted) -> Dataset:
        dataset = self._loader(key.spec, seed=key.seed, test_fraction=key.test_fraction,
                               label_column=key.label_column or "label", allowed=self.allowed_imports)
        with self._lock:
            self.loads += 1
        return dataset

    def _publish(self, key: _Wanted, ds: Dataset) -> tuple[DatasetInfo, list[str]]:
        refs, segments, prefix = {}, [], key.segment_prefix()
        try:
            for name in _ARRAYS:
                array = getattr(ds, name)
                segments.append(self._writer.put(f"{prefix}.{name}", array))
                refs[name] = ArrayRef(segment=segments[-1], dtype=str(array.dtype), shape=list(array.shape))
        except BaseException:
            self._writer.remove(segments)  # a half-written dataset is no dataset
            raise
        return DatasetInfo(spec=key.spec, n_features=ds.n_features, n_classes=ds.n_classes, **refs), segments

    def _enter(self, key: _Wanted, entry: _Entry) -> DatasetInfo:
        with self._lock:
            self._reserved -= entry.record.nbytes
            if self._closed:  # closed while we wrote: close() has unlinked our segments
                self._check_open(entry.record.spec)
            self._entries[key] = entry
            self._touch(entry, 0)
        return entry.info

    # -- bookkeeping (under the lock) ----------------------------------------------

    def _make_room(self, spec: str, size: int) -> None:
        """Reserve ``size`` bytes, unlinking least recently used unpinned entries if needed;
        refuse (evicting nothing) when even that would not make enough room."""
        with self._lock:
            if size > self.budget_bytes:
                raise ConfigError(f"dataset {spec!r} needs {size:,} bytes of shared memory, more than "
                                  f"the cache's budget of {self.budget_bytes:,} bytes ({_BUDGET_HINT})")
            free = self.budget_bytes - self._reserved - sum(e.record.nbytes for e in self._entries.values())
            victims = []
            for key, entry in sorted(self._entries.items(), key=lambda item: item[1].record.last_used):
                if free >= size:
                    break
                if entry.record.users == 0:
                    victims.append(key)
                    free += entry.record.nbytes
            if free < size:
                held = self.budget_bytes - free
                raise ConfigError(f"dataset {spec!r} needs {size:,} bytes of shared memory; {held:,} of the "
                                  f"cache's {self.budget_bytes:,} are held by running jobs ({_BUDGET_HINT})")
            for key in victims:
                self._writer.remove(self._entries.pop(key).segments)
            self.evictions += len(victims)
            self._reserved += size

    def _touch(self, entry: _Entry, users_change: int) -> None:
        """Count one use of ``entry`` (and a pin or an unpin): it is now the most recent."""
        self._uses += 1
        users = entry.record.users + users_change
        entry.record = dataclasses.replace(entry.record, users=users, in_use=users > 0, last_used=self._uses)

    def _check_open(self, spec: str) -> None:
        if self._closed:
            raise Interrupted(f"the dataset cache closed while dataset {spec!r} was wanted")
