"""GPU paths: run only where CUDA is present, skipped cleanly elsewhere."""

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.process,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_one_gpu_actor_trains_digits_in_auto_precision(leptonrt_cli, tmp_path, no_leftovers):
    out = tmp_path / "r.json"
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "1", "--epochs", "30", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["test_accuracy"] >= 0.95
    assert result["actors"][0]["device"] == "cuda:0"


def test_a_gpu_and_a_cpu_actor_train_the_same_weights_as_one_gpu_in_fp32(leptonrt_cli, tmp_path, no_leftovers):
    from safetensors.torch import load_file
    common = ("train", "--dataset", "digits", "--epochs", "3", "--precision", "fp32", "--quiet")
    one, mixed = tmp_path / "one.safetensors", tmp_path / "mixed.safetensors"
    assert leptonrt_cli(*common, "--gpus", "1", "--save", one).returncode == 0
    proc = leptonrt_cli(*common, "--gpus", "1", "--cpu-actors", "1", "--split", "0.6,0.4", "--save", mixed)
    assert proc.returncode == 0, proc.stderr
    a, b = load_file(one), load_file(mixed)
    for key in a:   # GPU and CPU kernels sum in different orders: a looser bound than CPU-only
        assert float((a[key] - b[key]).abs().max() / a[key].abs().max()) < 1e-4


def test_one_gpu_actor_trains_in_fp16_with_a_loss_scale(leptonrt_cli, tmp_path, no_leftovers):
    out = tmp_path / "r.json"
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "1", "--epochs", "30", "--precision", "fp16",
                        "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["test_accuracy"] >= 0.95


@pytest.mark.parametrize("fault", ["crash@30:0", "allreduce@41:1"])
def test_a_lost_actor_of_a_gpu_and_cpu_group_is_recovered_with_the_same_weights(fault, leptonrt_cli, tmp_path,
                                                                                 no_leftovers):
    """The GPU actor (rank 0) crashing, or the CPU actor dying inside gloo's all-reduce of
    CUDA and CPU tensors: the other member goes on, the job finishes, the weights match."""
    from safetensors.torch import load_file
    common = ("train", "--dataset", "synthetic:3000,16,3", "--hidden", "16", "--batch-size", "64", "--epochs", "2",
              "--precision", "fp32", "--gpus", "1", "--cpu-actors", "1", "--split", "0.5,0.5", "--quiet")
    straight, recovered, report = tmp_path / "s.safetensors", tmp_path / "r.safetensors", tmp_path / "r.json"
    assert leptonrt_cli(*common, "--save", straight).returncode == 0
    proc = leptonrt_cli(*common, "--save", recovered, "--json-out", report, env={"LEPTONRT_FAULT": fault})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    rank = int(fault.rsplit(":", 1)[1])
    assert [a["restarts"] for a in result["actors"]] == [int(r == rank) for r in range(2)]
    assert result["actors"][0]["device"] == "cuda:0"
    a, b = load_file(straight), load_file(recovered)
    for key in a:   # the survivor trained some steps alone: sums in another order, as above
        assert float((a[key] - b[key]).abs().max() / a[key].abs().max()) < 1e-4
