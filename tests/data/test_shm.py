"""Shared-memory segments: written once, mapped without copying, never left behind."""

import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from leptonrt.data.cache import DatasetCache
from leptonrt.data.shm import SegmentReader, SegmentWriter, clean_stale, list_segments, new_run_id, shm_dir
from leptonrt.errors import DataError, Interrupted

READER = textwrap.dedent("""
    import hashlib, sys
    from leptonrt.data.shm import SegmentReader
    arr = SegmentReader().attach(sys.argv[1], "float32", (256, 64))
    print(hashlib.sha256(arr.tobytes()).hexdigest(), flush=True)
    sys.stdin.readline()          # the parent changes one value in place meanwhile
    print(hashlib.sha256(arr.tobytes()).hexdigest(), float(arr[3, 5]), flush=True)
""")


@pytest.fixture
def writer():
    w = SegmentWriter(new_run_id())
    yield w
    w.close()


def test_arrays_round_trip_through_a_segment(writer):
    data = np.arange(24, dtype=np.float32).reshape(4, 6)
    name = writer.put("x", data)
    reader = SegmentReader()
    out = reader.attach(name, "float32", (4, 6))
    assert np.array_equal(out, data) and not out.flags.writeable
    del out
    reader.close()


def test_two_processes_read_identical_bytes_from_the_same_pages(writer):
    data = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    name = writer.put("shared", data)
    procs = [subprocess.Popen([sys.executable, "-c", READER, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        first = [p.stdout.readline().split()[0] for p in procs]
        assert first[0] == first[1]
        # write through our own mapping; a reader holding a private copy would not see it
        with open(shm_dir() / name, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
            np.frombuffer(mm, dtype=np.float32).reshape(256, 64)[3, 5] = 1234.5
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        second = [p.stdout.readline().split() for p in procs]
        assert second[0][0] == second[1][0] != first[0]
        assert float(second[0][1]) == 1234.5 and float(second[1][1]) == 1234.5
    finally:
        for p in procs:
            p.stdin.close()
            assert p.wait(timeout=30) == 0


def test_close_unlinks_every_segment_of_the_run():
    w = SegmentWriter(new_run_id())
    w.put("a", np.zeros(3, np.int64))
    w.put("b", np.zeros((0, 4), np.float32))   # empty arrays are fine too
    assert len(list_segments(w.run_id)) == 2
    w.close()
    assert list_segments(w.run_id) == []


def test_remove_unlinks_only_the_segments_it_names(writer):
    keep, drop = writer.put("keep", np.ones(2, np.float32)), writer.put("drop", np.ones(2, np.float32))
    writer.remove([drop])
    assert list_segments(writer.run_id) == [keep]


def test_a_closed_writer_creates_no_more_segments():
    w = SegmentWriter(new_run_id())
    w.close()
    with pytest.raises(Interrupted):
        w.put("late", np.ones(2, np.float32))
    assert list_segments(w.run_id) == []


def test_segments_of_a_dead_broker_are_cleaned_and_live_ones_kept(writer):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = shm_dir() / f"leptonrt-{dead.stdout.strip()}x00-k.x_train"
    stale.write_bytes(b"\0" * 8)
    live = writer.put("live", np.ones(2, np.float32))
    removed = clean_stale()
    assert stale.name in removed and not stale.exists()
    assert (shm_dir() / live).exists()


def test_a_missing_or_short_segment_is_a_clear_error(writer):
    reader = SegmentReader()
    with pytest.raises(DataError, match="cannot open"):
        reader.attach("leptonrt-1x0-nothing", "float32", (2,))
    name = writer.put("small", np.ones(2, np.float32))
    with pytest.raises(DataError, match="expected 40"):
        reader.attach(name, "float32", (10,))
    with pytest.raises(DataError, match="refusing"):
        reader.attach("../etc/passwd", "float32", (1,))


def test_the_cache_reads_storage_once_per_dataset_and_cleans_up():
    cache = DatasetCache(new_run_id())
    try:
        first = cache.get("synthetic:50,4,3", seed=1)
        again = cache.get("synthetic:50,4,3", seed=1)
        other = cache.get("synthetic:50,4,3", seed=2)
        assert first == again and first != other and cache.loads == 2
        assert first.x_train.shape == [40, 4] and first.n_classes == 3
    finally:
        cache.close()
    assert not any(os.path.exists(shm_dir() / ref.segment) for ref in (first.x_train, other.y_test))
