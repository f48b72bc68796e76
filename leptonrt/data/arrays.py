"""From arrays a source gave to a ``Dataset``: the checks, the split and the normalising
every loader shares, so every format ends up with the same guarantees.

Each check takes ``where``, the start of its error message (``bad dataset file PATH``,
``bad dataset py:pkg.mod:make``), and raises a one-line ``DataError`` that goes on from it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .files import data_error

# A label this large would mean an output layer of absurd width; it is a data bug.
MAX_CLASSES = 65_536
# The two layouts a set of named arrays may have: its own split, or one to split here.
SPLIT_NAMES = ("x_train", "y_train", "x_test", "y_test")
WHOLE_NAMES = ("x", "y")
EXPECTED_NAMES = f"{', '.join(SPLIT_NAMES)} or {', '.join(WHOLE_NAMES)}"


@dataclass(frozen=True)
class Dataset:
    """A train/test split ready to copy into shared memory."""

    x_train: np.ndarray  # float32, C-contiguous, (n_train, n_features), normalised
    y_train: np.ndarray  # int64, (n_train,), values in [0, n_classes)
    x_test: np.ndarray  # float32, C-contiguous, (n_test, n_features)
    y_test: np.ndarray  # int64, (n_test,)
    n_classes: int  # number of output classes, >= 2

    @property
    def n_features(self) -> int:
        """Width of one input row."""
        return int(self.x_train.shape[1])


def layout(names: Iterable[str]) -> tuple[str, ...] | None:
    """Which names to take from a set holding ``names``: a split of its own wins; None if neither."""
    names = set(names)
    return next((wanted for wanted in (SPLIT_NAMES, WHOLE_NAMES) if names >= set(wanted)), None)


def from_arrays(where: str, arrays: Mapping[str, np.ndarray], seed: int, test_fraction: float) -> Dataset:
    """``x_train, y_train, x_test, y_test``, or ``x, y`` split here by ``seed``: checked,
    normalised, and laid out as a Dataset."""
    if "x_train" not in arrays:
        x, y = pair(where, arrays, "x", "y")
        x_tr, y_tr, x_te, y_te = split(where, x, y, seed, test_fraction)
    else:
        x_tr, y_tr = pair(where, arrays, "x_train", "y_train")
        x_te, y_te = pair(where, arrays, "x_test", "y_test")
    check_split_shapes(where, x_tr, x_te)
    x_tr, x_te = normalise(where, x_tr, x_te)
    return make(x_tr, y_tr, x_te, y_te, n_classes(where, y_tr, y_te))


def n_classes(where: str, *labels: np.ndarray) -> int:
    """Classes = largest label + 1; a dataset with a single class cannot be trained on."""
    top = max(int(y.max()) for y in labels if y.size)
    if top + 1 < 2:
        raise data_error(where, f"labels define {top + 1} class; need at least 2")
    return top + 1


def count_test_rows(where: str, n: int, test_fraction: float) -> int:
    """Test rows: ``round(n * test_fraction)``, at least 1, leaving at least 1 to train on."""
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        raise data_error(where, f"{n} samples are too few to split with test_fraction={test_fraction}")
    return n_test


def split(
    where: str, x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random split of ``x, y`` into train and test rows."""
    n_test = count_test_rows(where, len(x), test_fraction)
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def make(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, classes: int
) -> Dataset:
    """Build a Dataset, guaranteeing the dtypes and layout the caller relies on."""
    return Dataset(
        x_train=np.ascontiguousarray(x_tr, dtype=np.float32),
        y_train=np.ascontiguousarray(y_tr, dtype=np.int64),
        x_test=np.ascontiguousarray(x_te, dtype=np.float32),
        y_test=np.ascontiguousarray(y_te, dtype=np.int64),
        n_classes=classes,
    )


def pair(
    where: str, arrays: Mapping[str, np.ndarray], x_name: str, y_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validated features and labels, one label per row."""
    x, y = features(where, x_name, arrays[x_name]), labels(where, y_name, arrays[y_name])
    if len(x) != len(y):
        raise data_error(where, f"{x_name} has {len(x)} rows but {y_name} has {len(y)}")
    return x, y


def features(where: str, name: str, x: np.ndarray) -> np.ndarray:
    """Numeric, at least 2-D (trailing dims flattened), finite, non-empty rows."""
    if x.dtype.kind not in "biuf":
        raise data_error(where, f"{name} has dtype {x.dtype}; expected a numeric array")
    if x.ndim < 2:
        raise data_error(where, f"{name} has shape {x.shape}; expected (samples, features...)")
    x = x.reshape(len(x), math.prod(x.shape[1:]))
    if x.shape[1] == 0:
        raise data_error(where, f"{name} has shape {x.shape}; expected at least 1 feature")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise data_error(where, f"{name} contains NaN or infinite values")
    return x


def labels(where: str, name: str, y: np.ndarray) -> np.ndarray:
    """1-D integer labels (integral floats accepted) in [0, MAX_CLASSES)."""
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        raise data_error(where, f"{name} has shape {y.shape} and dtype {y.dtype}; expected 1-D integers")
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.floor(y)).all()):
        raise data_error(where, f"{name} holds non-integral float labels")
    if y.size and (y.min() < 0 or y.max() >= MAX_CLASSES):
        raise data_error(where, f"{name} labels span [{y.min()}, {y.max()}]; expected 0..{MAX_CLASSES - 1}")
    return y.astype(np.int64)


def check_split_shapes(where: str, x_tr: np.ndarray, x_te: np.ndarray) -> None:
    """Both splits non-empty, with the same width."""
    if len(x_tr) == 0 or len(x_te) == 0:
        raise data_error(where, f"empty split: {len(x_tr)} train rows, {len(x_te)} test rows")
    if x_tr.shape[1] != x_te.shape[1]:
        raise data_error(where, f"x_train has {x_tr.shape[1]} features but x_test has {x_te.shape[1]}")


def normalise(where: str, x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, ...]:
    """uint8 pixels are scaled by 1/255; anything else is standardised with train stats."""
    if x_tr.dtype == np.uint8 and x_te.dtype == np.uint8:
        shift, scale = np.float32(0), np.float32(255)
    else:
        shift = x_tr.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = x_tr.std(axis=0, dtype=np.float64)
        # A feature constant to float32 (a spread float32 cannot hold, or below the resolution
        # of its values) carries no signal; dividing by 1 leaves it near 0 instead of blowing
        # its rounding up to infinity.
        resolution = np.finfo(np.float32).eps * np.abs(x_tr).max(axis=0)
        flat = (std < np.finfo(np.float32).tiny) | (std <= resolution)
        scale = np.where(flat, 1.0, std).astype(np.float32)
    out = tuple((x.astype(np.float32) - shift) / scale for x in (x_tr, x_te))
    if not all(np.isfinite(z).all() for z in out):
        raise data_error(where, "x values overflow float32 after normalising")
    return out
