"""Lost actors, exact replay, the restart budget, checkpoints and --resume, with real processes.

Exactly-once is shown by the history digest: every test compares it with one uninterrupted
run of the same job (and the weights too, within float tolerance: the mathematics is the
same, the bits depend on the order of the sums, which losses and rebalancing change).
Faults are injected at chosen steps (LEPTONRT_FAULT) or by the test itself, driven by what
the broker reports, never by sleeping.
"""

import asyncio
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from leptonrt import Broker, TrainJob
from leptonrt.actors.idle import autogroup_nice
from leptonrt.broker.events import ActorLost, Recovered

pytestmark = pytest.mark.process
# no rebalancing: the rebalancer may put an actor on standby in a job this small, and a fault
# meant for a rank on standby never fires (it trains no step); recovery is what is tested here
DATA = ["--dataset", "synthetic:3000,16,3", "--hidden", "16", "--batch-size", "64", "--epochs", "2",
        "--gpus", "none", "--cpu-actors", "2", "--quiet", "--rebalance", "off"]


def uninterrupted(tmp_path_factory, cli, epochs: int) -> dict:
    """The DATA job run straight through for ``epochs`` epochs: its weights and history digest."""
    path = tmp_path_factory.mktemp(f"straight{epochs}") / "w.safetensors"
    args = list(DATA)
    args[args.index("--epochs") + 1] = str(epochs)
    out = cli(*args, "--save", path, "--json-out", path.with_suffix(".json"))
    assert out.returncode == 0, out.stderr
    return {"weights": load_file(path), "digest": json.loads(path.with_suffix(".json").read_text())["history_digest"]}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, leptonrt_cli_module):
    return uninterrupted(tmp_path_factory, leptonrt_cli_module, 2)


@pytest.fixture(scope="module")
def leptonrt_cli_module():
    import subprocess
    import sys

    def run(*args, env=None, timeout=240):
        return subprocess.run([sys.executable, "-m", "leptonrt", "train", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    return run


def same_run(path, straight, digest=None):
    """The same committed history (exactly-once), and weights equal to float tolerance."""
    report = path.with_suffix(".json") if digest is None else None
    got, want = load_file(path), straight["weights"]
    digest = digest if digest is not None else json.loads(report.read_text())["history_digest"]
    assert digest == straight["digest"], "the committed history differs from the uninterrupted run's"
    return got.keys() == want.keys() and all(torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-5) for k in got)


@pytest.mark.parametrize("fault", ["crash@30:1", "allreduce@41:0", "hang@25:1"])
def test_a_lost_actor_is_replaced_and_the_replayed_run_trains_the_same_weights(fault, tmp_path, straight,
                                                                                leptonrt_cli_module, no_leftovers):
    save, report = tmp_path / "w.safetensors", tmp_path / "w.json"
    out = leptonrt_cli_module(*DATA, "--save", save, "--json-out", report, env={"LEPTONRT_FAULT": fault})
    assert out.returncode == 0, out.stderr
    result = json.loads(report.read_text())
    rank = int(fault.rsplit(":", 1)[1])
    assert [a["restarts"] for a in result["actors"]] == [int(r == rank) for r in range(2)]
    assert result["replayed_steps"] >= 0 and result["steps"] == 2 * 38
    assert same_run(save, straight)


# the job must outlast the broker's grace for a collective failure no loss explains (over a
# second): a survivor's report of the kill once re-formed the group again that much later
LONG_EPOCHS = 24


@pytest.fixture(scope="module")
def straight_long(tmp_path_factory, leptonrt_cli_module):
    return uninterrupted(tmp_path_factory, leptonrt_cli_module, LONG_EPOCHS)


def test_sigkill_at_a_step_the_test_chooses(tmp_path, straight_long, no_leftovers):
    save = tmp_path / "w.safetensors"
    # no rebalancing: the regroups counted below are the loss's and the rejoin's alone (with
    # it, the rebalancer may put an actor on standby in a job this small)
    job = TrainJob(dataset="synthetic:3000,16,3", hidden=(16,), batch_size=64, epochs=LONG_EPOCHS, save=str(save),
                   rebalance=False)

    async def main():
        async with Broker(gpus="none", cpu_actors=2) as broker:
            # the warm spare makes the replacement quick enough to rejoin; without it a new
            # process takes seconds, and the job may end first
            for _ in range(6000):
                if broker.pool.spare is not None:
                    break
                await asyncio.sleep(0.01)
            assert broker.pool.spare is not None, "the warm spare did not start within 60 s"
            running = await broker.submit(job)
            victim = None
            while victim is None:   # follow the broker's own view until step 20 is committed
                snap = broker.snapshot()
                if snap.job is not None and snap.job.step >= 20:
                    victim = snap.actors[1].pid
                    os.kill(victim, signal.SIGKILL)
                await asyncio.sleep(0.005)
            events = [e async for e in running.events()]
            result = await running.result()
            # each CPU actor stays on cores of its own, the adopted spare on its predecessor's
            pinned = [(os.sched_getaffinity(a["pid"]), broker.pool.cores[a["rank"]]) for a in result["actors"]]
            # the spare got ready at idle priority; adopted, it trains at the priority of the others
            priority = [(autogroup_nice(a["pid"]), os.getpriority(os.PRIO_PROCESS, a["pid"])) for a in result["actors"]]
            return victim, events, result, pinned, priority

    victim, events, result, pinned, priority = asyncio.run(main())
    assert all(cores is None or got == set(cores) for got, cores in pinned), pinned
    assert priority[1] == priority[0], priority
    lost = [e for e in events if isinstance(e, ActorLost)]
    assert len(lost) == 1 and lost[0].rank == 1 and "SIGKILL" in lost[0].how
    recovered = [e for e in events if isinstance(e, Recovered)]
    assert recovered[0].members == (0,) and recovered[0].joined == ()   # rank 0 went on alone at once...
    assert recovered[-1].members == (0, 1) and recovered[-1].joined == (1,), events   # ...until the replacement rejoined
    assert len(recovered) == 2, events   # and nothing re-formed the group after that
    assert result["actors"][1]["restarts"] == 1 and result["actors"][1]["pid"] != victim
    assert result["actors"][1]["in_group"]
    assert result["history_digest"] == straight_long["digest"]   # exactly once, over 24 epochs


def test_an_actor_that_cannot_come_back_leaves_the_rest_to_train_the_same_weights(
        tmp_path, straight, leptonrt_cli_module, no_leftovers):
    save, report = tmp_path / "w.safetensors", tmp_path / "w.json"
    out = leptonrt_cli_module(*DATA, "--save", save, "--json-out", report, "--max-restarts", "50",
                              env={"LEPTONRT_FAULT": "start@0:1"})   # rank 1 dies whenever it starts
    assert out.returncode == 0, out.stderr
    result = json.loads(report.read_text())
    assert result["actors"][1]["restarts"] >= 1 and result["actors"][0]["share"] == 1.0
    assert "rank 1 lost" in out.stderr and "as ranks 0;" in out.stderr
    assert same_run(save, straight)


def test_an_actor_that_crashes_on_every_start_exhausts_the_budget_with_exit_70(leptonrt_cli_module, no_leftovers):
    # a long job: rank 0 would train on alone, but three losses within the window end it
    out = leptonrt_cli_module(*DATA, "--epochs", "400", "--max-restarts", "2", "--restart-window", "600",
                              env={"LEPTONRT_FAULT": "start@0:1"})
    assert out.returncode == 70, out.stderr
    assert "lost 3 times" in out.stderr and "--max-restarts 2" in out.stderr
    assert "rank 1" in out.stderr and "exit code 17" in out.stderr and "Traceback" not in out.stderr.splitlines()[0]


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one_and_resume_trains_the_same_weights(
        tmp_path, straight, leptonrt_cli_module, no_leftovers):
    ckpt, save = tmp_path / "ckpt", tmp_path / "w.safetensors"
    args = [*DATA, "--checkpoint-dir", ckpt, "--checkpoint-every", "20"]
    crashed = leptonrt_cli_module(*args, "--max-restarts", "0", env={"LEPTONRT_FAULT": "checkpoint@40:0"})
    assert crashed.returncode == 70, crashed.stderr
    assert (ckpt / "step-00000020" / "manifest.json").exists() and not (ckpt / "step-00000040").exists()
    resumed = leptonrt_cli_module(*args, "--resume", "--save", save, "--json-out", save.with_suffix(".json"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "step 20" in resumed.stderr
    assert same_run(save, straight)


def test_a_tampered_checkpoint_is_refused_with_a_clear_message(tmp_path, leptonrt_cli_module, no_leftovers):
    ckpt = tmp_path / "ckpt"
    first = leptonrt_cli_module(*DATA, "--checkpoint-dir", ckpt, "--checkpoint-every", "30")
    assert first.returncode == 0, first.stderr
    newest = sorted(ckpt.glob("step-*"))[-1] / "weights.safetensors"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    out = leptonrt_cli_module(*DATA, "--checkpoint-dir", ckpt, "--checkpoint-every", "30", "--resume")
    assert out.returncode == 66 and "remove it to resume from an earlier checkpoint" in out.stderr
    assert "Traceback" not in out.stderr


def test_resume_refuses_a_checkpoint_of_a_different_job(tmp_path, leptonrt_cli_module, no_leftovers):
    ckpt = tmp_path / "ckpt"
    assert leptonrt_cli_module(*DATA, "--checkpoint-dir", ckpt, "--checkpoint-every", "30").returncode == 0
    out = leptonrt_cli_module(*DATA, "--lr", "0.01", "--checkpoint-dir", ckpt, "--resume")
    assert out.returncode == 78 and "different job" in out.stderr


def test_stopping_a_job_keeps_a_checkpoint_at_the_boundary_and_resume_finishes_it_exactly(tmp_path, straight_long,
                                                                                        no_leftovers):
    from leptonrt import Interrupted
    ckpt, save = tmp_path / "ckpt", tmp_path / "w.safetensors"
    # the actors stop at the end of the steps they were granted, up to 256 ahead: the job is
    # long enough (912 steps) that a stop at step 20 comes before its end is granted
    spec = dict(dataset="synthetic:3000,16,3", hidden=(16,), batch_size=64, epochs=LONG_EPOCHS,
                checkpoint_dir=str(ckpt), rebalance=False)

    async def stop_midway():
        async with Broker(gpus="none", cpu_actors=2) as broker:
            job = await broker.submit(TrainJob(**spec))
            while (snap := broker.snapshot()).job is None or snap.job.step < 20:
                await asyncio.sleep(0.005)
            await broker.drain()   # what the first Ctrl-C of `leptonrt up` does
            with pytest.raises(Interrupted) as stopped:
                await job.result()
            return str(stopped.value)

    async def resume():
        async with Broker(gpus="none", cpu_actors=2) as broker:
            return await (await broker.submit(TrainJob(**spec, resume=True, save=str(save)))).result()

    message = asyncio.run(stop_midway())
    assert "checkpoint written to" in message and "--resume" in message
    result = asyncio.run(resume())
    assert result["epochs"] == LONG_EPOCHS
    assert same_run(save, straight_long, digest=result["history_digest"])
