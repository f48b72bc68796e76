"""A host agent's copies of the head's datasets, in its own named shared memory.

The head fills this cache once per dataset (``leptonrt.data.transfer``); the agent's local
actors then map its segments exactly as the head's actors map the broker's, and later
jobs on the same data reuse them. Entries are keyed by the offer's content fingerprint,
so whatever is held under a fingerprint is exactly what an offer of it describes::

    cache = HostCache(new_run_id())          # segments named leptonrt-<agent pid>x<token>-host.*
    if cache.has(offer.fingerprint): reply CacheHave
    else: receiver = Receiver(offer, cache.sink(offer))   # ConfigError here when it cannot fit
    ...   receiver.result == cache.info(offer.fingerprint) once the fill is checked
    cache.drop(fingerprint); cache.close()   # close() unlinks every segment and aborts fills

Budget: like ``DatasetCache``, at most ``budget_bytes`` of shared memory (held datasets
plus fills under way); ``sink`` refuses a dataset that does not fit with a ConfigError
before it creates a segment. Nothing is evicted behind the head's back: the head says
what to ``drop``. Segment names carry the agent's run id (``shm.new_run_id``), so the
segments of a killed agent are removed by the next ``shm.clean_stale()`` on the host.

Used from one thread (the agent's event loop): the work per chunk is one copy into the
mapping.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from leptonrt.errors import ConfigError, InternalError, Interrupted, ProtocolError
from leptonrt.messages import ArrayRef, CacheOffer, DatasetInfo

from .cache import default_budget_bytes
from .shm import SegmentWriter

__all__ = ["HeldDataset", "HostCache", "HostCacheStatistics"]


@dataclass(frozen=True)
class HeldDataset:
    """One dataset this host holds, as ``statistics()`` reports it."""

    fingerprint: str  # the offer's content fingerprint
    spec: str  # the dataset spec the head loaded it from
    nbytes: int  # bytes of shared memory its four arrays take


@dataclass(frozen=True)
class HostCacheStatistics:
    """What the agent's cache holds; the fingerprints are what it tells the head it has."""

    entries: tuple[HeldDataset, ...]  # in the order they were filled
    total_bytes: int  # bytes the entries hold
    reserved_bytes: int  # bytes set aside for fills under way
    budget_bytes: int  # most bytes of shared memory the cache may hold


@dataclass
class _Entry:
    record: HeldDataset
    info: DatasetInfo
    segments: list[str]


class HostCache:
    """Owns an agent's dataset segments within a byte budget; ``close()`` unlinks all of them.

    ``budget_bytes``: most bytes of shared memory held at once (default: as the broker's
    cache, half the memory available now and no more than the shm filesystem has free).
    """

    def __init__(self, run_id: str, *, budget_bytes: int | None = None) -> None:
        budget = default_budget_bytes() if budget_bytes is None else budget_bytes
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ConfigError(f"the host's dataset cache budget must be a positive number of bytes, got {budget!r}")
        self.budget_bytes = budget
        self._writer = SegmentWriter(run_id)
        self._entries: dict[str, _Entry] = {}
        self._fills: dict[str, _Fill] = {}
        self._closed = False

    def has(self, fingerprint: str) -> bool:
        """Whether a checked copy of the dataset with this fingerprint is held."""
        return fingerprint in self._entries

    def info(self, fingerprint: str) -> DatasetInfo:
        """Where the held dataset lies in this host's shared memory, for its actors."""
        if fingerprint not in self._entries:
            raise InternalError(f"this host holds no dataset {fingerprint[:12]}")
        return self._entries[fingerprint].info

    def sink(self, offer: CacheOffer) -> "_Fill":
        """Reserve and allocate the offer's arrays for a ``transfer.Receiver`` to fill;
        ConfigError, before any segment exists, when they do not fit the budget."""
        self._check_open(offer.spec)
        if offer.fingerprint in self._entries:
            raise InternalError(f"dataset {offer.fingerprint[:12]} is held already; nothing to fill")
        if offer.fingerprint in self._fills:
            raise ProtocolError(f"dataset {offer.fingerprint[:12]} ({offer.spec!r}) is being filled already")
        size = sum(a.nbytes for a in offer.arrays)
        held = self._held_bytes()
        if held + size > self.budget_bytes:
            raise ConfigError(f"dataset {offer.spec!r} needs {size:,} bytes of shared memory; this host's cache "
                              f"holds {held:,} of its budget of {self.budget_bytes:,} bytes")
        fill = _Fill(self, offer)
        self._fills[offer.fingerprint] = fill
        return fill

    def drop(self, fingerprint: str) -> None:
        """Unlink a held dataset (actors that still map it keep their pages until they
        unmap); dropping one not held does nothing."""
        entry = self._entries.pop(fingerprint, None)
        if entry is not None:
            self._writer.remove(entry.segments)

    def statistics(self) -> HostCacheStatistics:
        """An immutable snapshot of what is held."""
        entries = tuple(e.record for e in self._entries.values())
        return HostCacheStatistics(entries=entries, total_bytes=sum(r.nbytes for r in entries),
                                   reserved_bytes=sum(f.nbytes for f in self._fills.values()),
                                   budget_bytes=self.budget_bytes)

    def close(self) -> None:
        """Abort the fills under way and unlink every segment; the cache takes nothing more."""
        self._closed = True
        for fill in list(self._fills.values()):
            fill.abort()
        self._entries.clear()
        self._writer.close()

    def _held_bytes(self) -> int:
        return sum(e.record.nbytes for e in self._entries.values()) + sum(f.nbytes for f in self._fills.values())

    def _check_open(self, spec: str) -> None:
        if self._closed:
            raise Interrupted(f"the host's dataset cache closed while dataset {spec!r} was wanted")

    def _enter(self, fill: "_Fill", segments: list[str]) -> DatasetInfo:
        """A fill checked and complete becomes a held dataset."""
        offer = fill.offer
        del self._fills[offer.fingerprint]
        refs = {a.name: ArrayRef(segment=segment, dtype=a.dtype, shape=list(a.shape))
                for a, segment in zip(offer.arrays, segments)}
        info = DatasetInfo(spec=offer.spec, n_features=offer.n_features, n_classes=offer.n_classes, **refs)
        record = HeldDataset(fingerprint=offer.fingerprint, spec=offer.spec, nbytes=fill.nbytes)
        self._entries[offer.fingerprint] = _Entry(record, info, segments)
        return info

    def _forget(self, fill: "_Fill", segments: list[str]) -> None:
        self._fills.pop(fill.offer.fingerprint, None)
        self._writer.remove(segments)


class _Fill:
    """One dataset being written: its segments exist, full size, from the start (a
    ``transfer.Sink``). Only ``finish`` makes it visible; ``abort`` unlinks it."""

    def __init__(self, cache: HostCache, offer: CacheOffer) -> None:
        self._cache, self.offer = cache, offer
        self.nbytes = sum(a.nbytes for a in offer.arrays)
        self._names: list[str] = []
        self._maps: dict[str, mmap.mmap] = {}
        self._open = True
        key = f"host.{offer.fingerprint[:16]}"
        try:
            for a in offer.arrays:
                name, self._maps[a.name] = cache._writer.allocate(f"{key}.{a.name}", a.nbytes)
                self._names.append(name)
        except BaseException:
            self.abort()  # a half-allocated dataset is no dataset
            raise

    def write(self, array: str, offset: int, data: bytes) -> None:
        """Copy ``data`` to ``offset`` of ``array``."""
        if not self._open:
            raise Interrupted(f"the fill of dataset {self.offer.spec!r} was closed")
        mm = self._maps[array]
        if offset < 0 or offset + len(data) > len(mm):
            raise InternalError(f"{len(data)} bytes at offset {offset} do not fit {array} ({len(mm)} bytes)")
        mm[offset:offset + len(data)] = data

    def finish(self) -> DatasetInfo:
        """Unmap the arrays and enter the dataset into the cache."""
        if not self._open:
            raise Interrupted(f"the fill of dataset {self.offer.spec!r} was closed")
        self._unmap()
        return self._cache._enter(self, self._names)

    def abort(self) -> None:
        """Unmap and unlink every segment of the fill; nothing of it stays."""
        if self._open:
            self._unmap()
            self._cache._forget(self, self._names)

    def _unmap(self) -> None:
        self._open = False
        for mm in self._maps.values():
            mm.close()
        self._maps.clear()
