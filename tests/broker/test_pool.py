"""When the pool starts its spare: never in the first seconds of a job, which it would slow."""

import pytest

from leptonrt.broker.pool import ActorPool


@pytest.fixture
def pool():
    """An ActorPool of 2 CPU actors whose processes are only noted, never started."""
    pool = ActorPool(gpus="none", cpu_actors=2)
    pool.started_ids = []
    pool.supervisor = type("Noted", (), {"spawn": lambda _self, actor_id, *a, **k: pool.started_ids.append(actor_id)})()
    return pool


def test_the_spare_starts_while_the_pool_is_idle_and_one_at_a_time(pool):
    pool._start_spare()   # what the idle loop calls between jobs
    pool._start_spare()
    pool.job_running(2 * ActorPool.SPARE_AFTER_S)
    assert pool.started_ids == ["spare"]


def test_a_short_job_gets_no_spare_and_a_long_one_does(pool):
    pool.job_running(ActorPool.SPARE_AFTER_S - 0.5)
    assert pool.started_ids == []
    pool.job_running(ActorPool.SPARE_AFTER_S)
    assert pool.started_ids == ["spare"]


def test_a_spare_that_died_or_was_adopted_is_replaced_at_the_next_good_moment(pool):
    pool._start_spare()
    assert pool.exited("spare")
    assert pool.started_ids == ["spare"]   # not at once: a job may be running
    pool.job_running(1.0)
    assert pool.started_ids == ["spare"]
    pool.job_running(ActorPool.SPARE_AFTER_S + 1)
    assert pool.started_ids == ["spare", "spare"]


def test_a_job_that_runs_long_enough_gets_a_spare_and_a_short_one_none(monkeypatch, no_leftovers):
    import asyncio

    from leptonrt.actors.spawn import Supervisor
    from leptonrt.broker.runner import JobRunner
    from leptonrt.config import TrainJob

    started = []
    spawn = Supervisor.spawn
    monkeypatch.setattr(Supervisor, "spawn", lambda self, actor_id, *a, **k: (started.append(actor_id),
                                                                              spawn(self, actor_id, *a, **k))[1])
    job = TrainJob(dataset="synthetic:4000,16,3", hidden=(16,), batch_size=32, epochs=3)
    asyncio.run(JobRunner(job, gpus="none", cpu_actors=2).run())
    assert sorted(started) == ["a0", "a1"]          # a job of a second or two: no spare
    started.clear()
    monkeypatch.setattr(ActorPool, "SPARE_AFTER_S", 0.2)
    asyncio.run(JobRunner(job, gpus="none", cpu_actors=2).run())
    assert sorted(started) == ["a0", "a1", "spare"]
