"""Dataset paths that are not regular files are refused before anything reads them.

A FIFO opened for reading blocks until a writer appears, and a device such as /dev/zero
never ends; either wedged the loader (and with it Ctrl-C). Each test carries a timeout so
a wedge fails the test instead of hanging the run.
"""

import os
import socket
import tempfile

import numpy as np
import pytest

from leptonrt.data import files
from leptonrt.data.loaders import load_dataset
from leptonrt.errors import DataError

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs"),
    pytest.mark.timeout(20),
]

TRAIN_IMAGES = "train-images-idx3-ubyte"


def refusal(spec):
    """Load ``spec`` expecting a one-line DataError (exit 66); return its text."""
    with pytest.raises(DataError) as info:
        load_dataset(spec)
    assert info.value.exit_code == 66
    message = str(info.value)
    assert "\n" not in message
    return message


def mnist_dir(directory):
    """A tiny valid MNIST-layout directory (train and test IDX files)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 4, 4), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(
                d.to_bytes(4, "big") for d in array.shape)
            (directory / name).write_bytes(header + array.tobytes())


def test_a_fifo_as_npz_file_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    message = refusal(f"npz:{fifo}")
    assert str(fifo) in message and "FIFO" in message


def test_a_symlink_to_a_fifo_is_refused_too(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "data.npz").symlink_to(tmp_path / "pipe")
    assert "FIFO" in refusal(f"npz:{tmp_path / 'data.npz'}")


@pytest.mark.parametrize("name", [TRAIN_IMAGES, "t10k-labels-idx1-ubyte"])
def test_a_fifo_in_place_of_an_idx_file_is_refused(tmp_path, name):
    mnist_dir(tmp_path)
    os.remove(tmp_path / name)
    os.mkfifo(tmp_path / name)
    message = refusal(f"mnist:{tmp_path}")
    assert name in message and "FIFO" in message


def test_a_gzipped_idx_name_that_is_a_fifo_is_refused(tmp_path):
    mnist_dir(tmp_path)
    os.remove(tmp_path / TRAIN_IMAGES)
    os.mkfifo(tmp_path / f"{TRAIN_IMAGES}.gz")
    assert f"{TRAIN_IMAGES}.gz" in refusal(f"mnist:{tmp_path}")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_character_device_is_refused_by_name():
    message = refusal("npz:/dev/zero")
    assert "/dev/zero" in message and "character device" in message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_idx_file_linked_to_dev_zero_is_refused_instead_of_read_forever(tmp_path):
    mnist_dir(tmp_path)
    os.remove(tmp_path / TRAIN_IMAGES)
    (tmp_path / TRAIN_IMAGES).symlink_to("/dev/zero")
    assert "character device" in refusal(f"mnist:{tmp_path}")


def test_a_unix_socket_as_npz_file_is_refused():
    # tmp_path can be longer than the 108 bytes a socket address allows
    with tempfile.TemporaryDirectory(prefix="lr-") as directory:
        path = os.path.join(directory, "s.npz")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            assert "socket" in refusal(f"npz:{path}")


def test_a_fifo_swapped_in_after_the_check_is_caught_after_opening(tmp_path, monkeypatch):
    """stat() sees a regular file; by the time it is opened a FIFO has taken its place."""
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((4, 2)), y=np.arange(4) % 2)
    real_stat = os.stat

    def stat_then_swap(target, *args, **kwargs):
        result = real_stat(target, *args, **kwargs)
        if os.fspath(target) == str(path):
            os.remove(path)
            os.mkfifo(path)
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    assert "FIFO" in refusal(f"npz:{path}")


def test_open_regular_gives_a_blocking_readable_file(tmp_path):
    path = tmp_path / "plain"
    path.write_bytes(b"abc")
    with files.open_regular(str(path)) as f:
        assert f.read() == b"abc"
        assert os.get_blocking(f.fileno())


def test_a_regular_npz_still_loads(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.ones((10, 3)), y=np.arange(10) % 2)
    assert load_dataset(f"npz:{path}").n_features == 3
