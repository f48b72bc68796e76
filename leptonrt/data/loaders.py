"""Load a dataset from a spec string into normalised, C-contiguous numpy arrays.

Spec forms::

    digits               scikit-learn's bundled 8x8 digits (1,797 x 64, 10 classes)
    mnist:DIR            MNIST / Fashion-MNIST IDX files (optionally .gz) in DIR
    npz:PATH             x_train, y_train, x_test, y_test -- or x, y to be split
    synthetic:N,D,C      a seeded, learnable task: N samples, D features, C classes

Every user mistake (missing or corrupt file, bad shapes, bad labels) becomes a one-line
``DataError`` naming the file; raw numpy / zipfile / gzip / OS errors never escape.
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from leptonrt.errors import ConfigError, DataError

from .files import file_error, open_regular, read_bytes, reading

VALID_FORMS = "digits, mnist:DIR, npz:PATH, synthetic:N,D,C"
# A label this large would mean an output layer of absurd width; it is a data bug.
MAX_CLASSES = 65_536
# Synthetic tasks: size of the teacher's hidden layer and share of flipped labels.
_TEACHER_HIDDEN = 64
_LABEL_NOISE = 0.05
_CHUNK_ROWS = 65_536
_MAX_SYNTHETIC_VALUES = 2_000_000_000
_MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_KIND = {1: "labels", 3: "images"}
_NPZ_SPLIT = ("x_train", "y_train", "x_test", "y_test")
_NPZ_WHOLE = ("x", "y")


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


def load_dataset(spec: str, *, seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """Load the dataset ``spec`` names; ``seed`` drives every random split and draw.

    ``test_fraction`` is used where the source has no test split of its own
    (digits, npz with ``x, y``, synthetic); MNIST always tests on its t10k files.
    """
    _check_test_fraction(test_fraction)
    scheme, sep, arg = spec.partition(":")
    if spec == "digits":
        return _load_digits(seed, test_fraction)
    if sep and arg and scheme == "mnist":
        return _load_mnist(arg)
    if sep and arg and scheme == "npz":
        return _load_npz(arg, seed, test_fraction)
    if sep and scheme == "synthetic":
        return _load_synthetic(spec, arg, seed, test_fraction)
    raise DataError(f"bad dataset spec {spec!r}: valid forms are {VALID_FORMS}")


def expected_nbytes(spec: str) -> int | None:
    """Bytes of the arrays ``load_dataset(spec)`` will return, where the spec alone says
    (synthetic specs, checked as ``load_dataset`` checks them); None where only the files do."""
    scheme, sep, arg = spec.partition(":")
    if not (sep and scheme == "synthetic"):
        return None
    n, d, _classes = _parse_synthetic(spec, arg)
    # float32 features and an int64 label per row, train and test rows together
    return n * (d * np.dtype(np.float32).itemsize + np.dtype(np.int64).itemsize)


# --- shared helpers ---------------------------------------------------------------


def _check_test_fraction(test_fraction: float) -> None:
    """A test fraction is a setting, so a bad one is a ConfigError, not a DataError."""
    ok = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not ok or not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")


def _n_classes(path: str, *labels: np.ndarray) -> int:
    """Classes = largest label + 1; a dataset with a single class cannot be trained on."""
    top = max(int(y.max()) for y in labels if y.size)
    if top + 1 < 2:
        raise file_error(path, f"labels define {top + 1} class; need at least 2")
    return top + 1


def _test_count(where: str, n: int, test_fraction: float) -> int:
    """Test rows: ``round(n * test_fraction)``, at least 1, leaving at least 1 to train on."""
    n_test = max(1, round(n * test_fraction))
    if n_test >= n:
        problem = f"{n} samples are too few to split with test_fraction={test_fraction}"
        raise DataError(f"{where}: {problem}")
    return n_test


def _split(
    where: str, x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random split of ``x, y`` into train and test rows."""
    n_test = _test_count(where, len(x), test_fraction)
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _make(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, n_classes: int
) -> Dataset:
    """Build a Dataset, guaranteeing the dtypes and layout the caller relies on."""
    return Dataset(
        x_train=np.ascontiguousarray(x_tr, dtype=np.float32),
        y_train=np.ascontiguousarray(y_tr, dtype=np.int64),
        x_test=np.ascontiguousarray(x_te, dtype=np.float32),
        y_test=np.ascontiguousarray(y_te, dtype=np.int64),
        n_classes=n_classes,
    )


# --- digits -----------------------------------------------------------------------


def _load_digits(seed: int, test_fraction: float) -> Dataset:
    """The 1,797 scikit-learn digits, pixels 0..16 scaled to [0, 1]."""
    pixels, labels, source = _digits_arrays()
    x = (pixels / np.float32(16)).astype(np.float32)
    x_tr, y_tr, x_te, y_te = _split(f"bad dataset file {source}", x, labels, seed, test_fraction)
    return _make(x_tr, y_tr, x_te, y_te, _n_classes(source, labels))


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, str]:
    """Raw digits pixels, labels and where they came from."""
    # find_spec instead of import: importing sklearn costs about a second.
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn")
    for location in spec.submodule_search_locations or []:
        path = os.path.join(location, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return (*_parse_digits_csv(path), path)
    return (*_digits_via_sklearn(), "digits (sklearn.datasets.load_digits)")


def _parse_digits_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 64 pixel values then the label."""
    text = read_bytes(path).decode("ascii", errors="replace")
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise file_error(path, f"not a digits table ({exc})") from exc
    if table.shape[0] == 0 or table.shape[1] != 65:
        raise file_error(path, f"expected rows of 64 pixels and a label, got shape {table.shape}")
    return table[:, :64], table[:, 64].astype(np.int64)


def _digits_via_sklearn() -> tuple[np.ndarray, np.ndarray]:
    """Fallback for a scikit-learn install without the bundled csv file."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from exc
    try:
        bunch = load_digits()
    except (OSError, ValueError) as exc:
        raise DataError(f"dataset 'digits': sklearn.datasets.load_digits failed ({exc})") from exc
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


# --- mnist (IDX files) ------------------------------------------------------------


def _load_mnist(directory: str) -> Dataset:
    """MNIST-layout IDX files; train on ``train-*``, test on ``t10k-*``."""
    if not os.path.isdir(directory):
        raise DataError(f"bad dataset directory {directory}: not found or not a directory")
    x_tr, y_tr = _read_idx_pair(directory, _MNIST_TRAIN)
    x_te, y_te = _read_idx_pair(directory, _MNIST_TEST)
    if x_tr.shape[1] != x_te.shape[1]:
        test_path = os.path.join(directory, _MNIST_TEST[0])
        problem = f"images have {x_te.shape[1]} pixels, train images have {x_tr.shape[1]}"
        raise file_error(test_path, problem)
    n_classes = _n_classes(os.path.join(directory, "*-labels-idx1-ubyte"), y_tr, y_te)
    return _make(x_tr, y_tr, x_te, y_te, n_classes)


def _read_idx_pair(directory: str, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """One split's images, flattened and scaled to [0, 1], and its labels."""
    images_path, labels_path = (_find_idx(directory, name) for name in names)
    images = _parse_idx(images_path, read_bytes(images_path), ndims=3)
    labels = _parse_idx(labels_path, read_bytes(labels_path), ndims=1)
    if len(images) != len(labels):
        problem = f"has {len(labels)} labels but {images_path} has {len(images)} images"
        raise file_error(labels_path, problem)
    if len(images) == 0 or images.shape[1] * images.shape[2] == 0:
        raise file_error(images_path, f"no data (shape {images.shape})")
    x = images.reshape(len(images), -1).astype(np.float32)
    x /= np.float32(255)
    return x, labels.astype(np.int64)


def _find_idx(directory: str, name: str) -> str:
    """The plain file if present, else its ``.gz``; neither is an error naming the plain one."""
    path = os.path.join(directory, name)
    for candidate in (path, path + ".gz"):
        if os.path.lexists(candidate):
            return candidate
    raise file_error(path, "file not found (nor with .gz)")


def _parse_idx(path: str, data: bytes, ndims: int) -> np.ndarray:
    """Decode an unsigned-byte IDX file: 0x00 0x00 0x08 ndims, big-endian sizes, payload."""
    if len(data) < 4:
        raise file_error(path, f"truncated: {len(data)} bytes, too short for an IDX header")
    # Two zero bytes, type 0x08 (unsigned byte, the only one MNIST uses), number of dims.
    magic, expected = int.from_bytes(data[:4], "big"), 0x0800 | ndims
    if magic != expected:
        want = f"0x{expected:08X} for {_IDX_KIND[ndims]}"
        problem = f"bad magic number 0x{magic:08X} (expected {want})"
        raise file_error(path, problem)
    header = 4 + 4 * ndims
    if len(data) < header:
        raise file_error(path, f"truncated: header needs {header} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndims}I", data[4:header])
    want, have = math.prod(dims), len(data) - header
    if want != have:
        problem = "truncated" if have < want else "trailing bytes"
        raise file_error(path, f"{problem}: header says {want} bytes of data, file has {have}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


# --- npz --------------------------------------------------------------------------


def _load_npz(path: str, seed: int, test_fraction: float) -> Dataset:
    """An .npz holding a train/test split, or ``x, y`` to split here."""
    arrays = _read_npz(path)
    if "x" in arrays:
        x, y = _pair(path, arrays, "x", "y")
        x_tr, y_tr, x_te, y_te = _split(f"bad dataset file {path}", x, y, seed, test_fraction)
    else:
        x_tr, y_tr = _pair(path, arrays, "x_train", "y_train")
        x_te, y_te = _pair(path, arrays, "x_test", "y_test")
    _check_split_shapes(path, x_tr, x_te)
    x_tr, x_te = _normalise(path, x_tr, x_te)
    return _make(x_tr, y_tr, x_te, y_te, _n_classes(path, y_tr, y_te))


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays we need from the archive; pickled objects are refused."""
    # Check for a zip ourselves: given anything else, np.load would try .npy, then pickle.
    with reading(path, "cannot read"), open_regular(path) as f:
        if f.read(2) != b"PK":
            raise file_error(path, "not an .npz archive (not a zip file)")
        f.seek(0)
        return _npz_arrays(path, f)


def _npz_arrays(path: str, f: BinaryIO) -> dict[str, np.ndarray]:
    """Every array we need, read while ``f`` (already checked to be a zip) is open."""
    with reading(path, "not a readable .npz archive"), np.load(f, allow_pickle=False) as npz:
        names = set(npz.files)
        wanted = _NPZ_SPLIT if names >= set(_NPZ_SPLIT) else _NPZ_WHOLE
        if not names >= set(wanted):
            present = ", ".join(sorted(names)) or "nothing"
            expected = f"{', '.join(_NPZ_SPLIT)} or {', '.join(_NPZ_WHOLE)}"
            raise file_error(path, f"holds {present}; expected {expected}")
        return {name: npz[name] for name in wanted}


def _pair(
    path: str, arrays: dict[str, np.ndarray], x_name: str, y_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validated features and labels, one label per row."""
    x, y = _features(path, x_name, arrays[x_name]), _labels(path, y_name, arrays[y_name])
    if len(x) != len(y):
        raise file_error(path, f"{x_name} has {len(x)} rows but {y_name} has {len(y)}")
    return x, y


def _features(path: str, name: str, x: np.ndarray) -> np.ndarray:
    """Numeric, at least 2-D (trailing dims flattened), finite, non-empty rows."""
    if x.dtype.kind not in "biuf":
        raise file_error(path, f"{name} has dtype {x.dtype}; expected a numeric array")
    if x.ndim < 2:
        raise file_error(path, f"{name} has shape {x.shape}; expected (samples, features...)")
    x = x.reshape(len(x), math.prod(x.shape[1:]))
    if x.shape[1] == 0:
        raise file_error(path, f"{name} has shape {x.shape}; expected at least 1 feature")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise file_error(path, f"{name} contains NaN or infinite values")
    return x


def _labels(path: str, name: str, y: np.ndarray) -> np.ndarray:
    """1-D integer labels (integral floats accepted) in [0, MAX_CLASSES)."""
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        problem = f"{name} has shape {y.shape} and dtype {y.dtype}; expected 1-D integers"
        raise file_error(path, problem)
    if y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.floor(y)).all()):
        raise file_error(path, f"{name} holds non-integral float labels")
    if y.size and (y.min() < 0 or y.max() >= MAX_CLASSES):
        problem = f"{name} labels span [{y.min()}, {y.max()}]; expected 0..{MAX_CLASSES - 1}"
        raise file_error(path, problem)
    return y.astype(np.int64)


def _check_split_shapes(path: str, x_tr: np.ndarray, x_te: np.ndarray) -> None:
    """Both splits non-empty, with the same width."""
    if len(x_tr) == 0 or len(x_te) == 0:
        raise file_error(path, f"empty split: {len(x_tr)} train rows, {len(x_te)} test rows")
    if x_tr.shape[1] != x_te.shape[1]:
        problem = f"x_train has {x_tr.shape[1]} features but x_test has {x_te.shape[1]}"
        raise file_error(path, problem)


def _normalise(path: str, x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, ...]:
    """uint8 pixels are scaled by 1/255; anything else is standardised with train stats."""
    if x_tr.dtype == np.uint8 and x_te.dtype == np.uint8:
        shift, scale = np.float32(0), np.float32(255)
    else:
        shift = x_tr.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = x_tr.std(axis=0, dtype=np.float64)
        # A constant feature carries no signal; dividing by 1 leaves it at 0 instead of NaN.
        scale = np.where(std == 0, 1.0, std).astype(np.float32)
    out = tuple((x.astype(np.float32) - shift) / scale for x in (x_tr, x_te))
    if not all(np.isfinite(z).all() for z in out):
        raise file_error(path, "x values overflow float32 after normalising")
    return out


# --- synthetic --------------------------------------------------------------------


def _load_synthetic(spec: str, arg: str, seed: int, test_fraction: float) -> Dataset:
    """A seeded task whose labels come from a random teacher network."""
    n, d, c = _parse_synthetic(spec, arg)
    x, y = _synthetic_task(n, d, c, seed)
    # Rows are i.i.d. draws already, so slicing is as good as a permutation and copies nothing.
    n_train = n - _test_count(f"bad dataset spec {spec!r}", n, test_fraction)
    return _make(x[:n_train], y[:n_train], x[n_train:], y[n_train:], c)


def _parse_synthetic(spec: str, arg: str) -> tuple[int, int, int]:
    """``N,D,C`` with N >= C >= 2, D >= 1 and N * D within reason."""
    try:
        n, d, c = (int(part) for part in arg.split(","))
    except ValueError as exc:
        problem = f"expected synthetic:N,D,C with integers; valid forms are {VALID_FORMS}"
        raise DataError(f"bad dataset spec {spec!r}: {problem}") from exc
    if c < 2 or d < 1 or n < c or n * d > _MAX_SYNTHETIC_VALUES:
        limits = f"need C >= 2, D >= 1, N >= C and N*D <= {_MAX_SYNTHETIC_VALUES:,}"
        raise DataError(f"bad dataset spec {spec!r}: {limits}")
    return n, d, c


def _synthetic_task(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, 1); y = argmax of a mostly linear random teacher, with 5% of labels flipped.

    The teacher is drawn before x, so it depends only on (D, C, seed): datasets of
    different N from one seed are the same task.
    """
    rng = np.random.default_rng(seed)
    linear = rng.standard_normal((d, c), dtype=np.float32)
    # Equal column norms give each class logit the same spread, so classes stay balanced.
    linear /= np.linalg.norm(linear, axis=0, keepdims=True)
    # A tanh layer on top bends the class boundaries, so an MLP can beat a linear model;
    # its pre-activations have std 2 (saturating) and its share of the logits stays small.
    hidden = rng.standard_normal((d, _TEACHER_HIDDEN), dtype=np.float32)
    hidden *= np.float32(2 / math.sqrt(d))
    out = rng.standard_normal((_TEACHER_HIDDEN, c), dtype=np.float32)
    out *= np.float32(0.5 / math.sqrt(_TEACHER_HIDDEN))
    x = rng.standard_normal((n, d), dtype=np.float32)  # (n, d)
    logits = x @ linear  # (n, c)
    for start in range(0, n, _CHUNK_ROWS):  # chunked so the (n, hidden) activations stay small
        rows = slice(start, start + _CHUNK_ROWS)
        logits[rows] += np.tanh(x[rows] @ hidden) @ out
    y = logits.argmax(axis=1).astype(np.int64)
    flip = rng.random(n) < _LABEL_NOISE
    y[flip] = rng.integers(0, c, size=int(flip.sum()))
    return x, y
