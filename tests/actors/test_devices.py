"""Device selection: docker's --gpus grammar, CUDA_VISIBLE_DEVICES, and the CPU fallback."""

import subprocess
import sys

import pytest

from leptonrt.actors.devices import core_sets, describe, select
from leptonrt.errors import NoDeviceError, UsageError


def pick(gpus, cpu=None, count=4, env=None, cores=8):
    return select(gpus, cpu, env=env or {}, cuda_count=count, cores=cores)


def test_all_takes_every_visible_gpu_each_seeing_only_itself():
    sel = pick("all")
    assert [a.visible for a in sel.actors] == ["0", "1", "2", "3"]
    assert all(a.device == "cuda:0" for a in sel.actors) and sel.note is None


def test_a_count_takes_the_first_n_and_device_ids_take_those_indices():
    assert [a.visible for a in pick("2").actors] == ["0", "1"]
    assert [a.visible for a in pick("device=0,2").actors] == ["0", "2"]


def test_an_existing_cuda_visible_devices_is_respected():
    sel = pick("device=1", env={"CUDA_VISIBLE_DEVICES": "5,7"}, count=2)
    assert [a.visible for a in sel.actors] == ["7"]


def test_no_gpu_falls_back_to_one_cpu_actor_and_says_so():
    sel = pick("all", count=0, cores=2)
    assert [(a.device, a.threads) for a in sel.actors] == [("cpu", 2)]
    assert "no GPU" in sel.note


def test_cpu_actors_share_the_cores():
    sel = pick("none", 2, cores=2)
    assert [(a.device, a.visible, a.threads) for a in sel.actors] == [("cpu", "", 1), ("cpu", "", 1)]


@pytest.mark.parametrize("gpus", ["5", "device=4"])
def test_asking_for_more_gpus_than_exist_is_no_device(gpus):
    with pytest.raises(NoDeviceError):
        pick(gpus)


@pytest.mark.parametrize("gpus", ["some", "device=a", "-1"])
def test_a_malformed_gpus_value_is_a_usage_error(gpus):
    with pytest.raises(UsageError):
        pick(gpus)


def test_no_devices_at_all_is_no_device():
    with pytest.raises(NoDeviceError):
        pick("none", 0)


def test_each_single_threaded_cpu_actor_is_pinned_to_a_core_of_its_own_and_gpu_actors_are_not():
    sel = pick("2", cpu=6, cores=8)               # 2 GPU actors and 6 CPU actors of one thread each
    assert [a.threads for a in sel.actors] == [2, 2, 1, 1, 1, 1, 1, 1]
    assert core_sets(sel, list(range(8))) == [None, None, (2,), (3,), (4,), (5,), (6,), (7,)]
    # the cores come from what the broker may use (taskset), from the end
    assert core_sets(pick("none", cpu=2, cores=2), [4, 9]) == [(4,), (9,)]


def test_actors_that_do_not_fit_side_by_side_or_run_several_threads_are_not_pinned():
    crowded = pick("none", cpu=3, cores=2)        # 3 single-thread actors on 2 cores
    assert core_sets(crowded, [0, 1]) == [None, None, None]
    threaded = pick("2", cpu=2, cores=8)          # 3 threads each: not measured, left to the scheduler
    assert core_sets(threaded, list(range(8))) == [None] * 4
    assert core_sets(pick("1", cpu=0), list(range(8))) == [None]   # a GPU actor alone


def test_no_pin_leaves_every_actor_to_the_scheduler():
    from leptonrt.broker.pool import ActorPool
    assert ActorPool("none", 2, pin=False).cores == [None, None]
    pinned = ActorPool("none", 2).cores     # what this machine allows: one core each, or none if they do not fit
    assert all(c is None for c in pinned) or [len(c) for c in pinned] == [1, 1]


def test_a_selection_says_in_words_what_it_starts():
    assert describe(pick("none", 2)) == "2 CPU actors"
    assert describe(pick("1", 1)) == "1 GPU actor and 1 CPU actor"


def test_a_request_that_can_pick_no_gpu_never_imports_pytorch():
    # the broker of a CPU-only run counts no GPUs: PyTorch's import costs seconds there
    code = ("import sys; from leptonrt.actors.devices import select; select('none', 2); "
            "select('all', None, env={'CUDA_VISIBLE_DEVICES': ''}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
