"""The embeddable Broker on the caller's loop: asyncio and uvloop, cancellation, queueing."""

import asyncio
import sys

import pytest
import uvloop

import leptonrt
from leptonrt import Broker, BrokerClosed, EpochEvent, TrainJob
from leptonrt.broker.runner import JobRunner
from leptonrt.errors import ConfigError, DataError, InternalError

pytestmark = pytest.mark.process
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
SMALL = TrainJob(dataset="synthetic:600,8,3", hidden=(16,), epochs=2, batch_size=64)


def run(loop_name, coro_fn):
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(coro_fn())


def _tasks():
    return {t.get_name() for t in asyncio.all_tasks()}


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_job_streams_its_epochs_and_leaves_no_task_behind(loop_name, no_leftovers):
    async def main():
        before = _tasks()
        async with Broker(gpus="none", cpu_actors=2) as broker:
            job = await broker.submit(SMALL)
            events = [e async for e in job.events()]
            result = await job.result()
        return before, _tasks(), events, result, job.state

    before, after, events, result, state = run(loop_name, main)
    assert before == after
    assert [e.epoch for e in events if isinstance(e, EpochEvent)] == [1, 2]
    assert result["epochs"] == 2 and len(result["actors"]) == 2 and state == "done"


def test_jobs_submitted_together_are_queued_and_finish_in_order(no_leftovers):
    async def main():
        async with Broker(gpus="none", cpu_actors=1) as broker:
            first, second = await broker.submit(SMALL), await broker.submit(SMALL)
            assert second.state == "queued"
            await second.result()
            return first, second

    first, second = run("asyncio", main)
    assert first.state == second.state == "done"
    assert first.id < second.id


class BuggyFirstRunner(JobRunner):
    """A runner with a bug of ours in its first job only (the --split nan of old: a crash, not an error)."""

    runs = 0

    async def run(self):
        BuggyFirstRunner.runs += 1
        if BuggyFirstRunner.runs == 1:
            raise ValueError("cannot convert float NaN to integer")
        return await super().run()


def test_a_job_that_dies_of_a_bug_fails_alone_and_the_next_job_runs(no_leftovers):
    async def main():
        async with Broker(gpus="none", cpu_actors=2, runner=BuggyFirstRunner) as broker:
            bad, good = await broker.submit(SMALL), await broker.submit(SMALL)
            with pytest.raises(InternalError, match="internal error") as failed:
                await bad.result()
            result = await good.result()
            return failed.value, result, broker.snapshot().state

    failed, result, state = run("asyncio", main)
    assert failed.exit_code == 70 and result["epochs"] == 2 and state == "serving"


def test_a_failing_job_raises_from_result_and_the_next_one_still_runs(no_leftovers):
    async def main():
        async with Broker(gpus="none", cpu_actors=1) as broker:
            bad = await broker.submit(TrainJob(dataset="npz:/nonexistent.npz", epochs=1))
            good = await broker.submit(SMALL)
            with pytest.raises(DataError):
                await bad.result()
            return (await good.result())["epochs"]

    assert run("asyncio", main) == 2


@pytest.mark.parametrize("loop_name", LOOPS)
def test_cancelling_the_host_mid_job_cleans_up_and_answers_every_job(loop_name, no_leftovers):
    async def host(jobs):
        async with Broker(gpus="none", cpu_actors=2) as broker:
            long = TrainJob(dataset="synthetic:20000,32,4", epochs=500, batch_size=32)
            jobs += [await broker.submit(long), await broker.submit(long)]
            async for event in jobs[0].events():
                if isinstance(event, EpochEvent):
                    break   # training is under way
            await asyncio.sleep(3600)

    async def main():
        before, jobs = _tasks(), []
        task = asyncio.get_running_loop().create_task(host(jobs))
        while not jobs or jobs[0].state != "running":
            await asyncio.sleep(0.05)
        while jobs[0]._events.empty():
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return before, _tasks(), jobs

    before, after, jobs = run(loop_name, main)
    assert before == after
    assert [j.state for j in jobs] == ["cancelled", "cancelled"]
    for job in jobs:
        with pytest.raises(BrokerClosed):
            job._result.result()


def test_submitting_outside_the_block_is_a_clear_error():
    async def main():
        broker = Broker(gpus="none", cpu_actors=1)
        with pytest.raises(BrokerClosed):
            await broker.submit(SMALL)
    run("asyncio", main)


def test_public_names_are_exported_sorted():
    assert leptonrt.__all__ == sorted(leptonrt.__all__)
    assert all(hasattr(leptonrt, name) for name in leptonrt.__all__)


def test_actors_stay_up_between_jobs_and_the_snapshot_shows_them(no_leftovers):
    async def main():
        async with Broker(gpus="none", cpu_actors=2) as broker:
            first = await broker.submit(SMALL)
            one = await first.result()
            second = await broker.submit(SMALL)
            two = await second.result()
            while any(a.state != "idle" for a in broker.snapshot().actors):   # they say hello again
                await asyncio.sleep(0.05)
            return one, two, broker.snapshot()

    one, two, snap = run("asyncio", main)
    assert [a["pid"] for a in one["actors"]] == [a["pid"] for a in two["actors"]]   # the same processes
    assert [a.pid for a in snap.actors] == [a["pid"] for a in two["actors"]]
    assert [a.state for a in snap.actors] == ["idle", "idle"] and snap.job is None
    assert snap.jobs_done == 2 and any("job 2 finished" in e.text for e in snap.events)
    assert one["test_accuracy"] == two["test_accuracy"]   # same job, same seed, same answer


def test_a_py_dataset_runs_only_from_a_module_the_owner_allowed_and_others_are_never_imported(
        tmp_path, monkeypatch, no_leftovers):
    """A broker serves other people's jobs: naming a module must not make it run that code."""
    (tmp_path / "owners_data_q.py").write_text(
        "import numpy as np\n"
        "def make():\n"
        "    rng = np.random.default_rng(0)\n"
        "    return {'x': rng.normal(size=(120, 3)), 'y': np.arange(120) % 2}\n")
    (tmp_path / "strangers_data_q.py").write_text("raise RuntimeError('a stranger ran this')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("owners_data_q", "strangers_data_q"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    async def main():
        async with Broker(gpus="none", cpu_actors=1, allow_imports=["owners_data_q"]) as broker:
            with pytest.raises(ConfigError) as refused:
                broker.submit_nowait(TrainJob(dataset="py:strangers_data_q:make", epochs=1))
            for code in ({"model": "strangers_data_q:build"}, {"loss": "strangers_data_q:loss"}):
                with pytest.raises(ConfigError, match="--allow-import strangers_data_q"):
                    broker.submit_nowait(TrainJob(dataset="digits", epochs=1, **code))   # the actors would import it
            job = await broker.submit(TrainJob(dataset="py:owners_data_q:make", hidden=(8,), epochs=1))
            return refused.value, await job.result(), len(broker.jobs())

    refused, result, jobs = run("asyncio", main)
    assert refused.exit_code == 78 and "--allow-import strangers_data_q" in str(refused)
    assert "strangers_data_q" not in sys.modules and jobs == 1   # refused before it queued
    assert result["epochs"] == 1


def test_an_embedded_broker_allows_no_module_unless_told():
    assert Broker(gpus="none", cpu_actors=1).pool.allow_imports == ()
    with pytest.raises(ConfigError, match="--allow-import takes a module name"):
        Broker(gpus="none", cpu_actors=1, allow_imports=["../evil"])


def test_a_broker_that_stops_taking_jobs_starts_no_queued_one_after_the_drained_job(no_leftovers):
    async def main():
        async with Broker(gpus="none", cpu_actors=1) as broker:
            long = TrainJob(dataset="synthetic:20000,32,4", hidden=(16,), epochs=200)
            running, queued = await broker.submit(long), await broker.submit(long)
            async for event in running.events():
                if isinstance(event, EpochEvent):
                    break
            broker.stop_accepting()
            await broker.drain(reason="the broker closed (a test)")
            states = running.state, queued.state
        with pytest.raises(BrokerClosed) as stopped:
            await running.result()
        with pytest.raises(BrokerClosed, match="did not finish"):
            await queued.result()
        return states, stopped.value

    states, stopped = run("asyncio", main)
    assert states == ("cancelled", "queued")
    assert stopped.exit_code == 75 and "the broker closed (a test): stopped after step" in str(stopped)
