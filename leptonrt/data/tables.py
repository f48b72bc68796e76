"""``csv:PATH`` and ``parquet:PATH``: a table whose label column holds class ids and whose
every other column is a numeric feature, read with pyarrow.

The file is opened by ``files.open_regular`` (a FIFO or a device is refused before it is
read) and handed to pyarrow as a file object; a ``.csv.gz`` is gunzipped on the way. The
table has no test split of its own, so its rows are split here as an npz's ``x, y`` are,
and normalised the same way. What can be wrong with a table is wrong with one column, so
each refusal is one line naming the file and the column.
"""

from __future__ import annotations

import collections
import gzip
import os
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pa_parquet

from . import arrays
from .arrays import Dataset
from .files import file_error, open_regular, reading

FORMATS = ("csv", "parquet")
_SHOWN_COLUMNS = 8  # columns named when the label column is missing


def load_table(kind: str, path: str, label_column: str, seed: int, test_fraction: float) -> Dataset:
    """The table at ``path`` (``kind``: csv or parquet), split by ``seed`` and normalised."""
    x, y = table_arrays(path, read_table(kind, path), label_column)
    where = f"bad dataset file {path}"
    x_tr, y_tr, x_te, y_te = arrays.split(where, x, y, seed, test_fraction)
    x_tr, x_te = arrays.normalise(where, x_tr, x_te)
    return arrays.make(x_tr, y_tr, x_te, y_te, arrays.n_classes(where, y))


def read_table(kind: str, path: str) -> pa.Table:
    """The whole table; every OS or pyarrow failure is one line naming the file."""
    with reading(path, f"not a readable {kind} file", also=(pa.ArrowException,)), open_regular(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise file_error(path, "is empty")
        if kind == "parquet":
            return pa_parquet.read_table(f)
        return _read_csv(path, f)


def _read_csv(path: str, f: BinaryIO) -> pa.Table:
    if not path.endswith(".gz"):
        return pa_csv.read_csv(f)
    with gzip.GzipFile(fileobj=f, mode="rb") as unzipped:
        return pa_csv.read_csv(unzipped)


def table_arrays(path: str, table: pa.Table, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (rows, features), of the columns' common numeric dtype, and the int64 labels."""
    names = table.column_names
    repeated = next((n for n, count in collections.Counter(names).items() if count > 1), None)
    if repeated is not None:
        raise file_error(path, f"column {repeated!r} appears more than once")
    if label_column not in names:
        shown = ", ".join(map(repr, names[:_SHOWN_COLUMNS])) + (", ..." if len(names) > _SHOWN_COLUMNS else "")
        raise file_error(path, f"no label column {label_column!r} (columns: {shown}; --label-column names another)")
    if table.num_rows == 0:
        raise file_error(path, "has a header but no rows")
    feature_names = [n for n in names if n != label_column]
    if not feature_names:
        raise file_error(path, f"no feature columns: {label_column!r} is its only column")
    y = _label_values(path, label_column, table.column(label_column))
    columns = [_feature_values(path, n, table.column(n)) for n in feature_names]
    x = np.empty((table.num_rows, len(columns)), dtype=np.result_type(*columns))  # (rows, features)
    for j, column in enumerate(columns):
        x[:, j] = column
    return x, y


def _feature_values(path: str, name: str, column: pa.ChunkedArray) -> np.ndarray:
    """A numeric (integer, float or boolean) column without nulls, NaNs or infinities."""
    what = f"column {name!r}"
    _refuse_nulls(path, what, column)
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise file_error(path, f"{what} holds {kind} values; every column but the label must be numeric")
    values = column.to_numpy()
    if values.dtype.kind == "f" and not (finite := np.isfinite(values)).all():
        first = int(np.argmin(finite))
        raise file_error(path, f"{what} holds NaN or infinite values (the first in data row {first + 1})")
    return values


def _label_values(path: str, name: str, column: pa.ChunkedArray) -> np.ndarray:
    """Class ids: integers >= 0 (integral floats too), at least two different ones."""
    what = f"label column {name!r}"
    _refuse_nulls(path, what, column)
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise file_error(path, f"{what} holds {kind} values; labels must be integer class ids")
    y = arrays.labels(f"bad dataset file {path}", what, column.to_numpy())
    classes = np.unique(y)
    if len(classes) < 2:
        raise file_error(path, f"{what} holds a single class ({classes[0]}); need at least 2")
    return y


def _refuse_nulls(path: str, what: str, column: pa.ChunkedArray) -> None:
    """Empty cells (and, in a csv, NaN, NA, null...: pyarrow reads those as null too)."""
    if column.null_count:
        first = int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
        raise file_error(path, f"{what} has {column.null_count:,} empty or null value(s) "
                               f"(the first in data row {first + 1})")
