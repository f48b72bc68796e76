"""Load a dataset from a spec string into normalised, C-contiguous numpy arrays.

Spec forms::

    digits                 scikit-learn's bundled 8x8 digits (1,797 x 64, 10 classes)
    mnist:DIR              MNIST / Fashion-MNIST IDX files (optionally .gz) in DIR
    npz:PATH               x_train, y_train, x_test, y_test -- or x, y to be split
    csv:PATH               a table with a header: the label column and numeric features,
    parquet:PATH           split here (``label_column`` names the label; default "label")
    py:pkg.mod:function    ``function()`` returns the arrays an npz would hold
    synthetic:N,D,C        a seeded, learnable task: N samples, D features, C classes

Every user mistake (missing or corrupt file, bad shapes, bad labels) becomes a one-line
``DataError`` naming the file (and the column, in a table); raw numpy / zipfile / gzip /
pyarrow / OS errors never escape. A ``py:`` spec runs the user's code: only from the
modules ``allowed`` lists (a ConfigError, before anything is imported, otherwise).
"""

from __future__ import annotations

import importlib.util
import io
import math
import os
import struct
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np

from leptonrt.errors import ConfigError, DataError
from leptonrt.imports import ANY

from . import arrays, pyfunc, tables
from .arrays import Dataset
from .files import file_error, open_regular, read_bytes, reading

__all__ = ["VALID_FORMS", "Dataset", "expected_nbytes", "load_dataset", "reads_label_column"]

VALID_FORMS = "digits, mnist:DIR, npz:PATH, csv:PATH, parquet:PATH, py:package.module:function, synthetic:N,D,C"
# Synthetic tasks: size of the teacher's hidden layer and share of flipped labels.
_TEACHER_HIDDEN = 64
_LABEL_NOISE = 0.05
_CHUNK_ROWS = 65_536
_MAX_SYNTHETIC_VALUES = 2_000_000_000
_MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_IDX_KIND = {1: "labels", 3: "images"}


def load_dataset(spec: str, *, seed: int = 0, test_fraction: float = 0.2, label_column: str = "label",
                 allowed: Iterable[str] | None = ANY) -> Dataset:
    """Load the dataset ``spec`` names; ``seed`` drives every random split and draw.

    ``test_fraction`` is used where the source has no test split of its own
    (digits, npz with ``x, y``, csv, parquet, py: with ``x, y``, synthetic); MNIST always
    tests on its t10k files. ``label_column`` matters to csv and parquet only.
    ``allowed``: the modules a ``py:`` spec may run code from (``ANY``: this is the
    user's own process; a broker passes the list its owner gave).
    """
    _check_test_fraction(test_fraction)
    scheme, sep, arg = spec.partition(":")
    if spec == "digits":
        return _load_digits(seed, test_fraction)
    if sep and arg and scheme == "mnist":
        return _load_mnist(arg)
    if sep and arg and scheme == "npz":
        return _load_npz(arg, seed, test_fraction)
    if sep and arg and scheme in tables.FORMATS:
        return tables.load_table(scheme, arg, label_column, seed, test_fraction)
    if sep and arg and scheme == pyfunc.SCHEME:
        return pyfunc.load_from_code(spec, seed, test_fraction, allowed)
    if sep and scheme == "synthetic":
        return _load_synthetic(spec, arg, seed, test_fraction)
    raise DataError(f"bad dataset spec {spec!r}: valid forms are {VALID_FORMS}")


def reads_label_column(spec: str) -> bool:
    """Whether ``label_column`` changes what ``load_dataset(spec)`` returns (csv, parquet)."""
    scheme, sep, _ = spec.partition(":")
    return bool(sep) and scheme in tables.FORMATS


def expected_nbytes(spec: str) -> int | None:
    """Bytes of the arrays ``load_dataset(spec)`` will return, where the spec alone says
    (synthetic specs, checked as ``load_dataset`` checks them); None where only the files
    (or, for ``py:``, the code) do."""
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


# --- digits -----------------------------------------------------------------------


def _load_digits(seed: int, test_fraction: float) -> Dataset:
    """The 1,797 scikit-learn digits, pixels 0..16 scaled to [0, 1]."""
    pixels, labels, source = _digits_arrays()
    x = (pixels / np.float32(16)).astype(np.float32)
    where = f"bad dataset file {source}"
    x_tr, y_tr, x_te, y_te = arrays.split(where, x, labels, seed, test_fraction)
    return arrays.make(x_tr, y_tr, x_te, y_te, arrays.n_classes(where, labels))


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
    n_classes = arrays.n_classes(f"bad dataset file {os.path.join(directory, '*-labels-idx1-ubyte')}", y_tr, y_te)
    return arrays.make(x_tr, y_tr, x_te, y_te, n_classes)


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
    return arrays.from_arrays(f"bad dataset file {path}", _read_npz(path), seed, test_fraction)


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
        wanted = arrays.layout(npz.files)
        if wanted is None:
            present = ", ".join(sorted(npz.files)) or "nothing"
            raise file_error(path, f"holds {present}; expected {arrays.EXPECTED_NAMES}")
        return {name: npz[name] for name in wanted}


# --- synthetic --------------------------------------------------------------------


def _load_synthetic(spec: str, arg: str, seed: int, test_fraction: float) -> Dataset:
    """A seeded task whose labels come from a random teacher network."""
    n, d, c = _parse_synthetic(spec, arg)
    x, y = _synthetic_task(n, d, c, seed)
    # Rows are i.i.d. draws already, so slicing is as good as a permutation and copies nothing.
    n_train = n - arrays.count_test_rows(f"bad dataset spec {spec!r}", n, test_fraction)
    return arrays.make(x[:n_train], y[:n_train], x[n_train:], y[n_train:], c)


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
