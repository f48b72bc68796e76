"""An agent's own copies of the head's datasets: filled once through the real exchange,
mapped like the broker's, reused, dropped, and never left behind in /dev/shm."""

import subprocess
import sys

import numpy as np
import pytest

from leptonrt.data.hostcache import HostCache
from leptonrt.data.shm import _NAME, SegmentReader, clean_stale, list_segments, new_run_id
from leptonrt.data.transfer import CHUNK, WINDOW, Receiver, Sender, make_offer
from leptonrt.errors import ConfigError, DataError, Interrupted
from leptonrt.messages import CACHE_ARRAYS, CacheChunk, CacheHave
from tests.data.test_transfer import digits_offer, fill


@pytest.fixture
def run_id():
    run = new_run_id()
    yield run
    assert list_segments(run) == []


@pytest.fixture
def cache(run_id):
    c = HostCache(run_id, budget_bytes=64 * 1024 * 1024)
    yield c
    c.close()


def mapped(info):
    """The arrays an actor on this host would see."""
    reader = SegmentReader()
    return reader, {name: reader.attach(getattr(info, name).segment, getattr(info, name).dtype,
                                        getattr(info, name).shape) for name in CACHE_ARRAYS}


def fill_into(cache, offer, arrays):
    sender, receiver = Sender(offer, arrays), Receiver(offer, cache.sink(offer))
    fill(sender, receiver)
    assert sender.done
    return receiver.result


def test_digits_fill_the_host_cache_and_its_actors_map_identical_arrays(cache, run_id):
    offer, arrays = digits_offer()
    info = fill_into(cache, offer, arrays)
    assert cache.has(offer.fingerprint) and cache.info(offer.fingerprint) == info
    assert (info.spec, info.n_features, info.n_classes) == ("digits", 64, 10)
    reader, seen = mapped(info)
    assert all(seen[n].tobytes() == arrays[n].tobytes() and seen[n].dtype == arrays[n].dtype for n in CACHE_ARRAYS)
    del seen
    reader.close()
    names = list_segments(run_id)
    assert len(names) == 4 and all(_NAME.match(n) and n.startswith(f"leptonrt-{run_id}-host.") for n in names)
    assert cache.statistics().total_bytes == sum(a.nbytes for a in offer.arrays)


def test_a_larger_dataset_crosses_in_default_chunks_beyond_one_window(cache):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.standard_normal((12_000, 256), dtype=np.float32),
              "y_train": rng.integers(0, 7, 12_000), "x_test": rng.standard_normal((300, 256), dtype=np.float32),
              "y_test": rng.integers(0, 7, 300)}
    offer = make_offer("synthetic:12300,256,7", 256, 7, arrays)
    assert arrays["x_train"].nbytes > WINDOW * CHUNK
    info = fill_into(cache, offer, arrays)
    reader, seen = mapped(info)
    assert all(np.array_equal(seen[n], arrays[n]) for n in CACHE_ARRAYS)
    del seen
    reader.close()


def test_a_second_offer_of_the_same_data_is_answered_from_the_cache_with_no_chunk(cache):
    offer, arrays = digits_offer()
    fill_into(cache, offer, arrays)
    again, _ = digits_offer()  # the same content, hashed anew: the same fingerprint
    assert again.fingerprint == offer.fingerprint and cache.has(again.fingerprint)
    sender = Sender(again, arrays)
    sender.start()
    assert sender.handle(CacheHave(fingerprint=again.fingerprint)) == []
    assert sender.done and sender.sent_chunks == 0


def test_a_dataset_that_does_not_fit_the_budget_is_refused_before_anything_is_written(run_id):
    offer, arrays = digits_offer()
    cache = HostCache(run_id, budget_bytes=sum(a.nbytes for a in offer.arrays) - 1)
    try:
        with pytest.raises(ConfigError, match=r"dataset 'digits' needs 4\d\d,\d\d\d bytes .* budget of"):
            cache.sink(offer)
        assert list_segments(run_id) == [] and cache.statistics().reserved_bytes == 0
    finally:
        cache.close()


def test_a_fill_that_fails_its_hash_leaves_nothing(cache, run_id):
    offer, arrays = digits_offer()
    receiver = Receiver(offer, cache.sink(offer))
    assert len(list_segments(run_id)) == 4  # allocated whole before the first chunk

    def corrupt(msg):
        return CacheChunk(fingerprint=msg.fingerprint, array=msg.array, offset=msg.offset,
                          data=bytes(len(msg.data))) if isinstance(msg, CacheChunk) and msg.array == "y_test" else msg

    with pytest.raises(DataError, match="y_test .* arrived with SHA-256"):
        fill(Sender(offer, arrays), receiver, corrupt)
    assert not cache.has(offer.fingerprint) and list_segments(run_id) == []
    assert cache.statistics().reserved_bytes == 0
    fill_into(cache, offer, arrays)  # and the next offer fills it afresh
    assert cache.has(offer.fingerprint)


def test_drop_unlinks_a_dataset_and_close_unlinks_the_rest_and_any_fill_under_way(run_id):
    cache = HostCache(run_id, budget_bytes=64 * 1024 * 1024)
    offer, arrays = digits_offer()
    fill_into(cache, offer, arrays)
    cache.drop(offer.fingerprint)
    assert not cache.has(offer.fingerprint) and list_segments(run_id) == []
    fill_into(cache, offer, arrays)
    other, other_arrays = digits_offer(chunk_bytes=CHUNK)
    other = make_offer("digits-again", other.n_features, other.n_classes, other_arrays)
    receiver, sender = Receiver(other, cache.sink(other)), Sender(other, other_arrays)
    sender.start()
    (credit,) = receiver.start()
    first = sender.handle(credit)[0]
    assert len(list_segments(run_id)) == 8
    cache.close()
    assert list_segments(run_id) == []
    with pytest.raises(Interrupted, match="closed"):
        receiver.handle(first)
    with pytest.raises(Interrupted, match="closed"):
        cache.sink(offer)


KILLED_AGENT = """
import os, numpy as np
from leptonrt.data.hostcache import HostCache
from leptonrt.data.shm import new_run_id
from leptonrt.data.transfer import Receiver, Sender, make_offer
arrays = {"x_train": np.ones((8, 2), np.float32), "y_train": np.zeros(8, np.int64),
          "x_test": np.ones((2, 2), np.float32), "y_test": np.ones(2, np.int64)}
offer = make_offer("tiny", 2, 2, arrays)
cache = HostCache(new_run_id(), budget_bytes=1 << 20)
sender, receiver = Sender(offer, arrays), Receiver(offer, cache.sink(offer))
sender.start()
pending = receiver.start()
while pending:
    pending = [r for m in pending for out in sender.handle(m) for r in receiver.handle(out)]
print(cache.info(offer.fingerprint).x_train.segment, flush=True)
os._exit(9)  # killed: close() never runs
"""


def test_the_segments_of_a_killed_agent_are_cleaned_like_a_brokers():
    out = subprocess.run([sys.executable, "-c", KILLED_AGENT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 9, out.stderr
    segment = out.stdout.strip()
    assert segment in list_segments()
    assert segment in clean_stale() and segment not in list_segments()
