"""The single-point dataset cache: each dataset is read and decoded once, by the broker.

Arrays go into named shared memory keyed by what determines their contents (spec, seed,
test fraction), so every local actor and every later job on the same data maps the same
pages instead of re-reading storage.
"""

from __future__ import annotations

import hashlib

from ..messages import ArrayRef, DatasetInfo
from .loaders import Dataset, load_dataset
from .shm import SegmentWriter


def _key(spec: str, seed: int, test_fraction: float) -> str:
    digest = hashlib.sha256(f"{spec}|{seed}|{test_fraction!r}".encode()).hexdigest()
    return digest[:12]


class DatasetCache:
    """Owns a run's dataset segments; ``close()`` unlinks all of them."""

    def __init__(self, run_id: str) -> None:
        self._writer = SegmentWriter(run_id)
        self._entries: dict[str, DatasetInfo] = {}
        self.loads = 0  # how many times storage was actually read

    def get(self, spec: str, *, seed: int = 0, test_fraction: float = 0.2) -> DatasetInfo:
        """The shared-memory description of a dataset, loading it on first use."""
        key = _key(spec, seed, test_fraction)
        if key not in self._entries:
            dataset = load_dataset(spec, seed=seed, test_fraction=test_fraction)
            self.loads += 1
            self._entries[key] = self._publish(key, spec, dataset)
        return self._entries[key]

    def _publish(self, key: str, spec: str, ds: Dataset) -> DatasetInfo:
        refs = {}
        for name in ("x_train", "y_train", "x_test", "y_test"):
            array = getattr(ds, name)
            segment = self._writer.put(f"{key}.{name}", array)
            refs[name] = ArrayRef(segment=segment, dtype=str(array.dtype), shape=list(array.shape))
        return DatasetInfo(spec=spec, n_features=ds.n_features, n_classes=ds.n_classes, **refs)

    def close(self) -> None:
        """Unlink every segment of this cache."""
        self._writer.close()
        self._entries.clear()
