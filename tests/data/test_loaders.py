"""Unit tests for leptonrt.data.loaders: every spec form, and every way a file can be bad."""

import gzip
import importlib.machinery
import importlib.util
import math
import os
import struct

import numpy as np
import pytest

from leptonrt.data.loaders import Dataset, load_dataset
from leptonrt.errors import ConfigError, DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


# --- helpers ----------------------------------------------------------------------


def idx_bytes(array, magic=None):
    """Encode a uint8 array as an IDX file (optionally with a forged magic number)."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path, data, gz=False):
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_mnist(directory, gz=False, n_train=20, n_test=10, seed=0):
    """Write a tiny 4x4 MNIST-layout dataset; returns the raw arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8),
        TRAIN_LABELS: rng.integers(0, 10, n_train, dtype=np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        TEST_LABELS: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays[TRAIN_LABELS][0] = 9  # pin n_classes to 10
    for name, array in arrays.items():
        write(directory / name, idx_bytes(array), gz=gz)
    return arrays


def save_npz(tmp_path, **arrays):
    """Write ``arrays`` to an .npz; returns its spec and its path."""
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return f"npz:{path}", str(path)


def data_error(spec, **kwargs):
    """Load ``spec`` expecting a DataError; check it is one line and return its text."""
    with pytest.raises(DataError) as info:
        load_dataset(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_well_formed(ds):
    assert isinstance(ds, Dataset)
    for x in (ds.x_train, ds.x_test):
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.ndim == 2
        assert x.shape[1] == ds.n_features
    for y in (ds.y_train, ds.y_test):
        assert y.dtype == np.int64 and y.flags.c_contiguous and y.ndim == 1
        assert y.min() >= 0 and y.max() < ds.n_classes
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)


def softmax_regression_accuracy(ds, steps=300, lr=0.5):
    """Full-batch gradient descent on a linear softmax model; returns test accuracy."""
    w = np.zeros((ds.n_features, ds.n_classes), dtype=np.float32)
    b = np.zeros(ds.n_classes, dtype=np.float32)
    onehot = np.eye(ds.n_classes, dtype=np.float32)[ds.y_train]
    for _ in range(steps):
        logits = ds.x_train @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / len(p)
        w -= lr * ds.x_train.T @ grad
        b -= lr * grad.sum(axis=0)
    return float(((ds.x_test @ w + b).argmax(axis=1) == ds.y_test).mean())


# --- digits -----------------------------------------------------------------------


def test_digits_has_1797_rows_of_64_features_in_10_classes():
    ds = load_dataset("digits")
    assert_well_formed(ds)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.n_features == 64 and ds.n_classes == 10
    assert set(np.unique(np.concatenate([ds.y_train, ds.y_test]))) == set(range(10))


def test_digits_pixels_are_scaled_into_the_unit_interval():
    ds = load_dataset("digits")
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert 0.0 <= ds.x_test.min() and ds.x_test.max() <= 1.0


def test_digits_test_split_gets_the_rounded_fraction_of_rows():
    assert len(load_dataset("digits").x_test) == round(1797 * 0.2)
    assert len(load_dataset("digits", test_fraction=0.5).x_test) == round(1797 * 0.5)


def test_digits_split_is_the_same_for_the_same_seed():
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)


def test_digits_split_differs_between_seeds():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert not np.array_equal(a.x_test, b.x_test)


def test_digits_without_scikit_learn_asks_to_pip_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install scikit-learn" in data_error("digits")


def test_digits_falls_back_to_load_digits_when_the_csv_is_missing(monkeypatch, tmp_path):
    fake = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: fake)
    ds = load_dataset("digits")
    assert len(ds.x_train) + len(ds.x_test) == 1797 and ds.x_train.max() == 1.0


def test_a_corrupt_bundled_digits_csv_is_a_data_error_naming_it(monkeypatch, tmp_path):
    data_dir = tmp_path / "datasets" / "data"
    data_dir.mkdir(parents=True)
    write(data_dir / "digits.csv", b"1,2,3\n4,5,6\n", gz=True)
    fake = importlib.machinery.ModuleSpec("sklearn", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: fake)
    assert "digits.csv.gz" in data_error("digits")


# --- test_fraction ----------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, math.nan, "0.2", True])
def test_a_test_fraction_outside_zero_to_one_is_a_config_error(fraction):
    with pytest.raises(ConfigError):
        load_dataset("synthetic:100,2,2", test_fraction=fraction)


# --- mnist ------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_files_round_trip(tmp_path, gz):
    raw = make_mnist(tmp_path, gz=gz)
    ds = load_dataset(f"mnist:{tmp_path}", test_fraction=0.9)  # ignored: t10k is the test split
    assert_well_formed(ds)
    assert ds.x_train.shape == (20, 16) and ds.x_test.shape == (10, 16) and ds.n_classes == 10
    np.testing.assert_allclose(ds.x_train, raw[TRAIN_IMAGES].reshape(20, 16) / 255, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, raw[TEST_LABELS])


def test_idx_files_may_mix_plain_and_gzip(tmp_path):
    raw = make_mnist(tmp_path)
    os.remove(tmp_path / TEST_IMAGES)
    write(tmp_path / TEST_IMAGES, idx_bytes(raw[TEST_IMAGES]), gz=True)
    x_test = load_dataset(f"mnist:{tmp_path}").x_test
    np.testing.assert_allclose(x_test, raw[TEST_IMAGES].reshape(10, 16) / 255)


def test_a_missing_idx_file_is_a_data_error_naming_it(tmp_path):
    make_mnist(tmp_path)
    os.remove(tmp_path / TRAIN_LABELS)
    message = data_error(f"mnist:{tmp_path}")
    assert TRAIN_LABELS in message and "not found" in message


def test_a_missing_mnist_directory_is_a_data_error(tmp_path):
    assert "missing" in data_error(f"mnist:{tmp_path / 'missing'}")


@pytest.mark.parametrize(
    "name, magic, expected",
    [
        (TRAIN_IMAGES, 0x01000803, "0x00000803"),  # first bytes not zero
        (TRAIN_IMAGES, 0x00000D03, "0x00000803"),  # float payload, not ubyte
        (TRAIN_IMAGES, 0x00000801, "0x00000803"),  # labels where images belong
        (TEST_LABELS, 0x00000803, "0x00000801"),  # images where labels belong
    ],
)
def test_a_wrong_idx_magic_number_is_a_data_error_naming_the_file(tmp_path, name, magic, expected):
    raw = make_mnist(tmp_path)
    write(tmp_path / name, idx_bytes(raw[name], magic=magic))
    message = data_error(f"mnist:{tmp_path}")
    assert name in message and f"bad magic number 0x{magic:08X}" in message and expected in message


def test_truncated_idx_data_is_a_data_error_giving_both_sizes(tmp_path):
    raw = make_mnist(tmp_path)
    write(tmp_path / TRAIN_IMAGES, idx_bytes(raw[TRAIN_IMAGES])[:-1])
    message = data_error(f"mnist:{tmp_path}")
    assert TRAIN_IMAGES in message
    assert "truncated: header says 320 bytes of data, file has 319" in message


def test_trailing_bytes_after_idx_data_are_a_data_error(tmp_path):
    raw = make_mnist(tmp_path)
    write(tmp_path / TEST_LABELS, idx_bytes(raw[TEST_LABELS]) + b"\0")
    message = data_error(f"mnist:{tmp_path}")
    assert TEST_LABELS in message and "header says 10 bytes of data, file has 11" in message


@pytest.mark.parametrize("length", [0, 3, 10])
def test_a_truncated_idx_header_is_a_data_error(tmp_path, length):
    raw = make_mnist(tmp_path)
    write(tmp_path / TRAIN_IMAGES, idx_bytes(raw[TRAIN_IMAGES])[:length])
    message = data_error(f"mnist:{tmp_path}")
    assert TRAIN_IMAGES in message and "truncated" in message


def test_mismatched_image_and_label_counts_name_both_files_and_counts(tmp_path):
    raw = make_mnist(tmp_path)
    write(tmp_path / TRAIN_LABELS, idx_bytes(raw[TRAIN_LABELS][:19]))
    message = data_error(f"mnist:{tmp_path}")
    assert TRAIN_IMAGES in message and TRAIN_LABELS in message
    assert "19 labels" in message and "20 images" in message


@pytest.mark.parametrize("damage", ["not gzip", "cut short", "bad crc"])
def test_a_corrupt_gzip_idx_file_is_a_data_error_naming_it(tmp_path, damage):
    raw = make_mnist(tmp_path, gz=True)
    packed = gzip.compress(idx_bytes(raw[TRAIN_IMAGES]))
    broken = {
        "not gzip": b"this is not gzip data",
        "cut short": packed[: len(packed) // 2],
        "bad crc": packed[:-8] + bytes(8),
    }[damage]
    (tmp_path / f"{TRAIN_IMAGES}.gz").write_bytes(broken)
    message = data_error(f"mnist:{tmp_path}")
    assert f"{TRAIN_IMAGES}.gz" in message and "gzip" in message


def test_a_directory_in_place_of_an_idx_file_is_a_data_error(tmp_path):
    make_mnist(tmp_path)
    os.remove(tmp_path / TEST_IMAGES)
    (tmp_path / TEST_IMAGES).mkdir()
    assert TEST_IMAGES in data_error(f"mnist:{tmp_path}")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_idx_file_is_a_data_error(tmp_path):
    make_mnist(tmp_path)
    os.chmod(tmp_path / TRAIN_IMAGES, 0)
    assert "permission denied" in data_error(f"mnist:{tmp_path}")


def test_idx_labels_of_a_single_class_are_a_data_error(tmp_path):
    raw = make_mnist(tmp_path)
    for name in (TRAIN_LABELS, TEST_LABELS):
        write(tmp_path / name, idx_bytes(np.zeros_like(raw[name])))
    assert "at least 2" in data_error(f"mnist:{tmp_path}")


# --- npz --------------------------------------------------------------------------


def test_npz_with_train_and_test_arrays_keeps_that_split(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (30, 5, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, (7, 5, 5), dtype=np.uint8)
    y_train, y_test = np.arange(30) % 3, np.arange(7) % 4
    spec, _ = save_npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    ds = load_dataset(spec)
    assert_well_formed(ds)
    assert ds.x_train.shape == (30, 25) and ds.x_test.shape == (7, 25) and ds.n_classes == 4
    np.testing.assert_allclose(ds.x_test, x_test.reshape(7, 25) / 255, rtol=1e-6)  # uint8 -> /255


def test_npz_with_x_and_y_is_split_by_test_fraction_deterministically(tmp_path):
    spec, _ = save_npz(tmp_path, x=np.random.default_rng(0).normal(5, 3, (100, 4)), y=np.arange(100) % 2)
    a, b, c = (load_dataset(spec, test_fraction=0.25, seed=s) for s in (7, 7, 8))
    assert_well_formed(a)
    assert len(a.x_train) == 75 and len(a.x_test) == 25
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)


def test_npz_floats_are_standardised_with_the_train_statistics(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.normal(10, 4, (200, 3)), rng.normal(20, 1, (50, 3))
    x_train[:, 2] = x_test[:, 2] = 7.0  # a constant feature must not become NaN
    y = np.arange(250) % 2
    spec, _ = save_npz(tmp_path, x_train=x_train, y_train=y[:200], x_test=x_test, y_test=y[200:])
    ds = load_dataset(spec)
    np.testing.assert_allclose(ds.x_train[:, :2].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train[:, :2].std(axis=0), 1, atol=1e-5)
    expected = (x_test[:, :2] - x_train[:, :2].mean(axis=0)) / x_train[:, :2].std(axis=0)
    np.testing.assert_allclose(ds.x_test[:, :2], expected, rtol=1e-5, atol=1e-5)
    assert np.all(ds.x_train[:, 2] == 0) and np.all(ds.x_test[:, 2] == 0)


def test_npz_float_labels_with_integral_values_are_accepted(tmp_path):
    spec, _ = save_npz(tmp_path, x=np.eye(10), y=np.arange(10.0) % 3)
    ds = load_dataset(spec)
    assert ds.y_train.dtype == np.int64 and ds.n_classes == 3


def test_npz_missing_arrays_name_what_is_present_and_what_is_expected(tmp_path):
    spec, path = save_npz(tmp_path, x_train=np.eye(3), y_train=np.arange(3), inputs=np.eye(3))
    message = data_error(spec)
    assert path in message and "holds inputs, x_train, y_train" in message
    assert "expected x_train, y_train, x_test, y_test or x, y" in message


def test_npz_x_and_y_of_different_lengths_give_both_lengths(tmp_path):
    spec, path = save_npz(tmp_path, x=np.ones((10, 2)), y=np.arange(9) % 2)
    message = data_error(spec)
    assert path in message and "10" in message and "9" in message


@pytest.mark.parametrize(
    "arrays, problem",
    [
        ({"x": np.ones(10), "y": np.arange(10) % 2}, "x has shape (10,)"),
        ({"x": np.ones((10, 2)), "y": np.zeros((10, 1), dtype=int)}, "y has shape (10, 1)"),
        ({"x": np.ones((10, 0)), "y": np.arange(10) % 2}, "at least 1 feature"),
        ({"x": np.array(["a"] * 10).reshape(10, 1), "y": np.arange(10) % 2}, "numeric"),
        ({"x": np.ones((10, 2)), "y": np.arange(10) * 0.5}, "non-integral"),
        ({"x": np.ones((10, 2)), "y": np.arange(10) - 1}, "labels span [-1, 8]"),
        ({"x": np.ones((10, 2)), "y": np.zeros(10, dtype=int)}, "at least 2"),
    ],
)
def test_npz_arrays_of_the_wrong_shape_or_kind_are_data_errors(tmp_path, arrays, problem):
    spec, path = save_npz(tmp_path, **arrays)
    message = data_error(spec)
    assert path in message and problem in message


def test_npz_object_arrays_are_refused_without_unpickling(tmp_path):
    x = np.empty((4, 2), dtype=object)
    x[:] = 1.0
    spec, path = save_npz(tmp_path, x=x, y=np.arange(4) % 2)
    assert path in data_error(spec)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_npz_nan_or_inf_in_x_is_a_data_error(tmp_path, bad):
    x = np.ones((10, 2))
    x[3, 1] = bad
    spec, path = save_npz(tmp_path, x=x, y=np.arange(10) % 2)
    assert "NaN or infinite" in data_error(spec)


def test_npz_train_and_test_feature_counts_must_agree(tmp_path):
    y_train, y_test = np.arange(5) % 2, np.array([0, 1])
    x_train, x_test = np.ones((5, 3)), np.ones((2, 4))
    spec, _ = save_npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert "x_train has 3 features but x_test has 4" in data_error(spec)


def test_npz_with_an_empty_train_set_is_a_data_error(tmp_path):
    y_train, y_test = np.zeros(0, dtype=int), np.array([0, 1])
    x_train, x_test = np.ones((0, 3)), np.ones((2, 3))
    spec, _ = save_npz(tmp_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert "0 train rows" in data_error(spec)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"just some text\n", "not a zip file"),
        (b"PK\x03\x04 but then nothing sensible", "not a readable .npz archive"),
        (None, "not a zip file"),  # a bare .npy array
    ],
)
def test_npz_files_that_are_not_npz_archives_are_data_errors(tmp_path, content, problem):
    path = tmp_path / "d.npz"
    if content is None:
        with open(path, "wb") as f:
            np.save(f, np.eye(3))
    else:
        path.write_bytes(content)
    message = data_error(f"npz:{path}")
    assert str(path) in message and problem in message


def test_a_missing_npz_file_or_a_directory_is_a_data_error(tmp_path):
    assert "file not found" in data_error(f"npz:{tmp_path / 'nope.npz'}")
    assert "is a directory" in data_error(f"npz:{tmp_path}")


# --- synthetic --------------------------------------------------------------------


def test_synthetic_has_the_requested_shape_and_split():
    ds = load_dataset("synthetic:500,7,3", test_fraction=0.3)
    assert_well_formed(ds)
    assert ds.x_train.shape == (350, 7) and ds.x_test.shape == (150, 7) and ds.n_classes == 3


def test_synthetic_is_the_same_for_the_same_seed_and_differs_between_seeds():
    a, b, c = (load_dataset("synthetic:300,5,4", seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)


def test_synthetic_classes_are_all_present_and_roughly_balanced():
    counts = np.bincount(load_dataset("synthetic:4000,10,4").y_train, minlength=4)
    assert counts.min() > 0.5 * counts.mean()


def test_synthetic_is_learnable_well_above_chance():
    accuracy = softmax_regression_accuracy(load_dataset("synthetic:2000,20,4", seed=0))
    assert accuracy > 0.6  # chance is 0.25


@pytest.mark.parametrize(
    "spec",
    ["synthetic:", "synthetic:1,2", "synthetic:a,b,c", "synthetic:10,2,2.5", "synthetic:3,2,4",
     "synthetic:10,0,2", "synthetic:10,2,1", "synthetic:-10,2,2", "synthetic:100000,100000,2"],
)
def test_malformed_synthetic_specs_are_data_errors(spec):
    assert spec in data_error(spec)


def test_synthetic_with_too_few_samples_to_split_is_a_data_error():
    assert "too few" in data_error("synthetic:2,1,2", test_fraction=0.9)


# --- spec parsing -----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["", "mnist", "mnist:", "npz:", "csv:", "parquet:", "py:", "digits:extra", "imagenet:/data", "Digits"]
)
def test_unknown_specs_are_data_errors_listing_the_valid_forms(spec):
    message = data_error(spec)
    assert "digits, mnist:DIR, npz:PATH, csv:PATH, parquet:PATH, py:package.module:function" in message
    assert "synthetic:N,D,C" in message
