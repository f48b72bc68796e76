"""csv: and parquet: tables: the label column, numeric features, the split, and every way a
table can be bad (each one line naming the file, and the column where one is to blame)."""

import gzip
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from leptonrt.data import tables
from leptonrt.data.loaders import load_dataset
from leptonrt.errors import DataError


def write_csv(path, text):
    path.write_text(text)
    return f"csv:{path}"


def rows_csv(n=40, label="label"):
    """Two numeric features (an int and a float) and a class id in 0..2."""
    return f"f_int,f_float,{label}\n" + "".join(f"{i},{i * 0.25 - 3},{i % 3}\n" for i in range(n))


def refusal(spec, **kwargs):
    """Load ``spec`` expecting a one-line DataError (exit 66); return its text."""
    with pytest.raises(DataError) as info:
        load_dataset(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 66
    return message


# --- what loads ---------------------------------------------------------------------


def test_a_csv_gives_float32_features_int64_labels_and_a_seeded_split(tmp_path):
    spec = write_csv(tmp_path / "t.csv", rows_csv(40))
    ds = load_dataset(spec, test_fraction=0.25, seed=1)
    assert ds.x_train.shape == (30, 2) and ds.x_test.shape == (10, 2) and ds.n_classes == 3
    assert ds.x_train.dtype == np.float32 and ds.x_train.flags.c_contiguous
    assert ds.y_train.dtype == np.int64 and set(np.concatenate([ds.y_train, ds.y_test])) == {0, 1, 2}
    again, other = load_dataset(spec, test_fraction=0.25, seed=1), load_dataset(spec, test_fraction=0.25, seed=2)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    assert not np.array_equal(ds.x_test, other.x_test)


def test_csv_features_are_standardised_with_the_train_statistics(tmp_path):
    ds = load_dataset(write_csv(tmp_path / "t.csv", rows_csv(200)))
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1, atol=1e-5)


def test_a_parquet_of_uint8_pixels_is_scaled_to_0_1_like_an_npz(tmp_path):
    pixels = np.arange(60, dtype=np.uint8).reshape(20, 3) * 4
    table = pa.table({"p0": pixels[:, 0], "p1": pixels[:, 1], "p2": pixels[:, 2], "digit": np.arange(20) % 4})
    pq.write_table(table, tmp_path / "t.parquet")
    ds = load_dataset(f"parquet:{tmp_path / 't.parquet'}", label_column="digit")
    assert ds.n_features == 3 and ds.n_classes == 4 and len(ds.x_train) + len(ds.x_test) == 20
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    assert sorted(np.concatenate([ds.x_train, ds.x_test])[:, 0] * 255) == pytest.approx(sorted(pixels[:, 0]))


def test_the_label_column_option_picks_which_column_is_the_label(tmp_path):
    text = "a,b,kind\n" + "".join(f"{i % 5},{i},{i % 2}\n" for i in range(30))
    spec = write_csv(tmp_path / "t.csv", text)
    by_kind = load_dataset(spec, label_column="kind")
    by_a = load_dataset(spec, label_column="a")
    assert (by_kind.n_classes, by_kind.n_features) == (2, 2)
    assert (by_a.n_classes, by_a.n_features) == (5, 2)
    assert "no label column 'label'" in refusal(spec)


def test_integral_float_labels_and_boolean_features_are_accepted(tmp_path):
    text = "flag,x,label\n" + "".join(f"{'true' if i % 2 else 'false'},{i},{float(i % 3)}\n" for i in range(12))
    ds = load_dataset(write_csv(tmp_path / "t.csv", text))
    assert ds.n_classes == 3 and ds.n_features == 2


def test_a_gzipped_csv_is_read_through(tmp_path):
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress(rows_csv(20).encode()))
    assert load_dataset(f"csv:{path}").n_features == 2


# --- what is refused ----------------------------------------------------------------


BAD_CSVS = {
    "empty": ("", "is empty"),
    "header only": ("a,label\n", "has a header but no rows"),
    "string feature": ("a,b,label\n1,x,0\n2,y,1\n", "column 'b' holds string values"),
    "empty cell": ("a,label\n1,0\n,1\n", "column 'a' has 1 empty or null value(s) (the first in data row 2)"),
    "NaN": ("a,label\n1,0\nnan,1\n", "column 'a' has 1 empty or null value(s)"),
    "infinity": ("a,label\n1,0\ninf,1\n", "column 'a' holds NaN or infinite values"),
    "no label column": ("a,b\n1,2\n3,4\n", "no label column 'label' (columns: 'a', 'b'"),
    "single class": ("a,label\n1,2\n2,2\n", "label column 'label' holds a single class (2)"),
    "fractional label": ("a,label\n1,0.5\n2,1\n", "label column 'label' holds non-integral float labels"),
    "negative label": ("a,label\n1,-1\n2,1\n", "label column 'label' labels span [-1, 1]"),
    "string label": ("a,label\n1,cat\n2,dog\n", "label column 'label' holds string values"),
    "missing label": ("a,label\n1,\n2,1\n", "label column 'label' has 1 empty or null value(s)"),
    "only a label": ("label\n0\n1\n", "no feature columns"),
    "repeated column": ("a,a,label\n1,2,0\n3,4,1\n", "column 'a' appears more than once"),
    "ragged row": ("a,label\n1,0,7\n", "not a readable csv file (CSV parse error"),
}


@pytest.mark.parametrize("case", BAD_CSVS)
def test_each_bad_csv_is_one_line_naming_the_file_and_the_column(tmp_path, case):
    text, says = BAD_CSVS[case]
    path = tmp_path / "bad.csv"
    message = refusal(write_csv(path, text))
    assert message.startswith(f"bad dataset file {path}: ") and says in message


@pytest.mark.parametrize("kind", tables.FORMATS)
def test_a_file_that_is_not_a_table_is_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "junk"
    path.write_bytes(bytes(range(256)) * 4)
    message = refusal(f"{kind}:{path}")
    assert message.startswith(f"bad dataset file {path}: not a readable {kind} file (")
    assert message.isprintable()


def test_a_parquet_nan_and_a_non_numeric_column_are_refused_by_name(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1.0, float("nan")], "label": [0, 1]}), path)
    assert "column 'x' holds NaN or infinite values" in refusal(f"parquet:{path}")
    pq.write_table(pa.table({"when": pa.array([1, 2], pa.timestamp("s")), "label": [0, 1]}), path)
    assert "column 'when' holds timestamp" in refusal(f"parquet:{path}")
    pq.write_table(pa.table({"x": pa.array([], pa.float64()), "label": pa.array([], pa.int64())}), path)
    assert "no rows" in refusal(f"parquet:{path}")


@pytest.mark.parametrize("kind", tables.FORMATS)
def test_missing_files_directories_and_devices_are_refused_before_reading(tmp_path, kind):
    assert "file not found" in refusal(f"{kind}:{tmp_path / 'nope'}")
    assert "is a directory" in refusal(f"{kind}:{tmp_path}")
    assert "character device" in refusal(f"{kind}:/dev/zero")


@pytest.mark.timeout(20)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "t.csv"
    os.mkfifo(fifo)
    assert "FIFO" in refusal(f"csv:{fifo}")


# --- round trip -----------------------------------------------------------------------


@st.composite
def tables_of_numbers(draw):
    """A table of 2-30 rows: 1-4 int or float feature columns and a label with >= 2 classes."""
    n = draw(st.integers(2, 30))
    n_features = draw(st.integers(1, 4))
    columns = {}
    for j in range(n_features):
        if draw(st.booleans()):
            values = st.integers(-10**6, 10**6)
        else:
            values = st.floats(-1e6, 1e6, allow_nan=False, width=64)
        columns[f"f{j}"] = draw(st.lists(values, min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n).filter(lambda ys: len(set(ys)) >= 2))
    return columns, labels


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables_of_numbers(), as_parquet=st.booleans())
@example(table=({"f0": [0.0, 0.0, 0.0, 1.401298464324817e-45]}, [0, 0, 0, 1]), as_parquet=False)   # found by CI
def test_any_numeric_table_comes_back_as_its_values_and_labels(tmp_path, table, as_parquet):
    columns, labels = table
    if as_parquet:
        path = tmp_path / "t.parquet"
        pq.write_table(pa.table({**columns, "label": labels}), path)
    else:
        path = tmp_path / "t.csv"
        lines = [",".join([*columns, "label"])]
        lines += [",".join([*(repr(columns[c][i]) for c in columns), str(labels[i])]) for i in range(len(labels))]
        path.write_text("\n".join(lines) + "\n")
    kind = "parquet" if as_parquet else "csv"
    x, y = tables.table_arrays(str(path), tables.read_table(kind, str(path)), "label")
    expected = np.array([columns[c] for c in columns], dtype=np.float64).T
    np.testing.assert_array_equal(x.astype(np.float64), expected)
    np.testing.assert_array_equal(y, labels)
    ds = load_dataset(f"{kind}:{path}", test_fraction=0.5)
    assert len(ds.x_train) + len(ds.x_test) == len(labels) and ds.n_classes == max(labels) + 1
    assert sorted(np.concatenate([ds.y_train, ds.y_test])) == sorted(labels)
