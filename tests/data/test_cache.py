"""The dataset cache: a byte budget, pins, least-recently-used eviction, nothing leaked.

Most tests use a fake loader (the cache's ``loader`` seam) whose datasets have a known
size: ``rows`` training rows of one float32 feature and one test row, so
12 * rows + 12 bytes in all.
"""

import asyncio
import dataclasses
import threading

import numpy as np
import pytest

from leptonrt.data.cache import CacheStatistics, DatasetCache, default_budget_bytes
from leptonrt.data.loaders import Dataset
from leptonrt.data.shm import list_segments, new_run_id
from leptonrt.errors import ConfigError, DataError, InternalError, Interrupted

ROWS = 100
SIZE = 12 * ROWS + 12  # bytes of one fake dataset


def fake_dataset(rows=ROWS):
    return Dataset(x_train=np.zeros((rows, 1), np.float32), y_train=np.arange(rows) % 2,
                   x_test=np.zeros((1, 1), np.float32), y_test=np.zeros(1, np.int64), n_classes=2)


class FakeLoader:
    """Records each spec it is asked for; returns a dataset of ``rows.get(spec, ROWS)`` rows."""

    def __init__(self, rows=None):
        self.calls, self.rows = [], rows or {}

    def __call__(self, spec, *, seed, test_fraction, **_settings):
        self.calls.append(spec)
        return fake_dataset(self.rows.get(spec, ROWS))


@pytest.fixture
def run_id():
    rid = new_run_id()
    yield rid
    assert list_segments(rid) == [], "a test left segments behind"


@pytest.fixture
def make_cache(run_id):
    caches = []

    def make(budget_bytes=10 * SIZE, loader=None):
        cache = DatasetCache(run_id, budget_bytes=budget_bytes, loader=loader or FakeLoader())
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def segments_of(info):
    return [ref.segment for ref in (info.x_train, info.y_train, info.x_test, info.y_test)]


def cached_specs(cache):
    return [entry.spec for entry in cache.statistics().entries]


def test_the_least_recently_used_dataset_is_unlinked_to_make_room(make_cache, run_id):
    cache = make_cache(budget_bytes=2 * SIZE)
    a, b = cache.get("npz:a"), cache.get("npz:b")
    cache.get("npz:a")  # a is now more recent than b
    cache.get("npz:c")
    assert cached_specs(cache) == ["npz:a", "npz:c"]
    assert not set(segments_of(b)) & set(list_segments(run_id))
    assert set(segments_of(a)) <= set(list_segments(run_id))
    assert cache.statistics().evictions == 1


def test_only_as_many_entries_as_needed_are_evicted(make_cache):
    cache = make_cache(budget_bytes=3 * SIZE)
    for name in "abc":
        cache.get(f"npz:{name}")
    cache.get("npz:d")
    assert cached_specs(cache) == ["npz:b", "npz:c", "npz:d"]


def test_an_evicted_dataset_is_read_again_when_wanted_again(make_cache):
    loader = FakeLoader()
    cache = make_cache(budget_bytes=SIZE, loader=loader)
    first = cache.get("npz:a")
    cache.get("npz:b")
    assert cache.get("npz:a") == first  # same key, so the same segment names, new pages
    assert loader.calls == ["npz:a", "npz:b", "npz:a"]


async def test_a_pinned_dataset_survives_while_older_unpinned_ones_go(make_cache):
    cache = make_cache(budget_bytes=2 * SIZE)
    pinned = await cache.acquire("npz:a")
    cache.get("npz:b")
    cache.get("npz:c")  # a is the least recently used, but a job holds it
    assert cached_specs(cache) == ["npz:a", "npz:c"]
    cache.release(pinned)
    cache.get("npz:d")  # released: a counts as used at its release, after c
    assert cached_specs(cache) == ["npz:a", "npz:d"]


async def test_no_room_while_jobs_hold_the_budget_is_refused_and_evicts_nothing(make_cache):
    # the big one would fit in the whole budget, but b is pinned and a alone is not enough
    cache = make_cache(budget_bytes=2 * SIZE, loader=FakeLoader(rows={"npz:big": 2 * ROWS}))
    cache.get("npz:a")
    async with cache.using("npz:b"):
        with pytest.raises(ConfigError) as info:
            await cache.acquire("npz:big")
        assert "held by running jobs" in str(info.value)
        assert cached_specs(cache) == ["npz:a", "npz:b"]
    assert [e.in_use for e in cache.statistics().entries] == [False, False]


def test_a_dataset_larger_than_the_whole_budget_is_a_config_error_naming_both(make_cache):
    cache = make_cache(budget_bytes=SIZE - 1)
    with pytest.raises(ConfigError) as info:
        cache.get("npz:a")
    message = str(info.value)
    assert info.value.exit_code == 78 and "\n" not in message
    assert f"{SIZE:,} bytes" in message and f"{SIZE - 1:,} bytes" in message
    assert "--cache-bytes" in message
    assert cache.statistics() == CacheStatistics((), 0, 0, SIZE - 1, loads=1, evictions=0)


def test_a_synthetic_spec_too_big_for_the_budget_is_refused_before_it_is_generated(make_cache):
    loader = FakeLoader()
    cache = make_cache(budget_bytes=1_000_000, loader=loader)
    with pytest.raises(ConfigError) as info:
        cache.get("synthetic:1000000,100,10")
    assert "408,000,000 bytes" in str(info.value)
    assert loader.calls == [] and cache.statistics().loads == 0


def test_a_bad_synthetic_spec_is_still_a_data_error(make_cache):
    with pytest.raises(DataError):
        make_cache(loader=FakeLoader()).get("synthetic:5,0,2")


def test_a_synthetic_dataset_exactly_the_size_of_the_budget_fits(run_id):
    # 50 rows of 4 float32 features and an int64 label: 50 * (16 + 8) bytes
    cache = DatasetCache(run_id, budget_bytes=1200)
    try:
        info = cache.get("synthetic:50,4,3", seed=1)
        assert info.x_train.shape == [40, 4] and cache.statistics().total_bytes == 1200
    finally:
        cache.close()
    with pytest.raises(ConfigError):
        DatasetCache(run_id, budget_bytes=1199).get("synthetic:50,4,3", seed=1)


def test_statistics_list_each_entry_with_its_size_use_and_recency(make_cache):
    cache = make_cache(budget_bytes=5 * SIZE)
    cache.get("npz:a", seed=3, test_fraction=0.5)
    cache.get("npz:b")
    stats = cache.statistics()
    first, second = stats.entries
    assert (first.spec, first.seed, first.test_fraction, first.nbytes, first.users, first.in_use) == \
        ("npz:a", 3, 0.5, SIZE, 0, False)
    assert first.last_used < second.last_used
    assert (stats.total_bytes, stats.reserved_bytes, stats.budget_bytes, stats.loads) == (2 * SIZE, 0, 5 * SIZE, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.total_bytes = 0


def test_a_tables_label_column_is_part_of_its_key_and_other_specs_ignore_it(make_cache, run_id):
    """Two jobs on one csv with different label columns train on different data."""
    seen = []

    def loader(spec, *, seed, test_fraction, label_column, allowed):
        seen.append((spec, label_column, allowed))
        return fake_dataset()

    cache = make_cache(loader=loader)
    by_label, by_kind = cache.get("csv:t.csv"), cache.get("csv:t.csv", label_column="kind")
    assert cache.get("csv:t.csv", label_column="kind") == by_kind
    cache.get("npz:d.npz")
    cache.get("npz:d.npz", label_column="kind")   # no columns in an npz: the same data
    assert seen == [("csv:t.csv", "label", ()), ("csv:t.csv", "kind", ()), ("npz:d.npz", "label", ())]
    assert not set(segments_of(by_label)) & set(segments_of(by_kind))
    assert [e.label_column for e in cache.statistics().entries] == ["label", "kind", None]


def test_the_cache_hands_its_loader_the_modules_its_owner_allowed(run_id):
    seen = []
    cache = DatasetCache(run_id, budget_bytes=10 * SIZE, allowed_imports=["mypkg"],
                         loader=lambda spec, **settings: seen.append(settings["allowed"]) or fake_dataset())
    try:
        cache.get("py:mypkg.data:make")
    finally:
        cache.close()
    assert seen == [("mypkg",)]


def test_close_unlinks_every_segment_and_refuses_later_loads(make_cache, run_id):
    cache = make_cache()
    cache.get("npz:a")
    cache.get("npz:b")
    assert len(list_segments(run_id)) == 8
    cache.close()
    assert list_segments(run_id) == []
    with pytest.raises(Interrupted):
        cache.get("npz:c")


def test_releasing_what_no_job_holds_is_our_bug(make_cache):
    cache = make_cache()
    info = cache.get("npz:a")
    with pytest.raises(InternalError):
        cache.release(info)


def test_a_loader_error_reaches_the_caller_and_leaves_no_reservation(make_cache):
    def broken(spec, *, seed, test_fraction, **_settings):
        raise DataError(f"bad dataset file {spec}: corrupt")

    cache = make_cache(loader=broken)
    with pytest.raises(DataError, match="corrupt"):
        cache.get("npz:a")
    assert cache.statistics().reserved_bytes == 0 and cache.statistics().entries == ()


def test_the_default_budget_is_positive_and_a_bad_budget_is_a_config_error(run_id):
    assert default_budget_bytes() > 0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            DatasetCache(run_id, budget_bytes=bad)


class BlockedLoader:
    """A load that blocks until the test opens ``gate``."""

    def __init__(self):
        self.started, self.gate = threading.Event(), threading.Event()

    def __call__(self, spec, *, seed, test_fraction, **_settings):
        self.started.set()
        self.gate.wait()
        return fake_dataset()


def load_threads():
    return [t for t in threading.enumerate() if t.name.startswith("leptonrt-load")]


async def test_a_blocked_load_can_be_cancelled_at_once(make_cache, run_id):
    loader = BlockedLoader()
    cache = make_cache(loader=loader)
    task = asyncio.create_task(cache.acquire("npz:a"))
    await asyncio.to_thread(loader.started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not loader.gate.is_set()  # the await returned while the read was still blocked
    (thread,) = load_threads()
    assert thread.daemon  # so nothing joins it at exit
    loader.gate.set()
    await asyncio.to_thread(thread.join)
    # the finished load is kept, unpinned: nobody holds what the cancelled job asked for
    assert [(e.spec, e.in_use) for e in cache.statistics().entries] == [("npz:a", False)]


async def test_a_load_finishing_after_close_leaves_no_segment(make_cache, run_id):
    loader = BlockedLoader()
    cache = make_cache(loader=loader)
    task = asyncio.create_task(cache.acquire("npz:a"))
    await asyncio.to_thread(loader.started.wait)
    cache.close()
    loader.gate.set()
    with pytest.raises(Interrupted):
        await task
    assert list_segments(run_id) == []


async def test_two_jobs_wanting_one_dataset_share_a_single_load(make_cache):
    loader = BlockedLoader()
    cache = make_cache(loader=loader)
    first = asyncio.create_task(cache.acquire("npz:a"))
    await asyncio.to_thread(loader.started.wait)
    second = asyncio.create_task(cache.acquire("npz:a"))
    loader.gate.set()
    assert await first == await second
    assert cache.statistics().entries[0].users == 2 and cache.statistics().loads == 1
