"""Checkpoints: exact round trips, the crash-safe write protocol, and refusing tampered files."""

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from leptonrt.errors import ConfigError, DataError
from leptonrt.nn import checkpoint as ckpt
from leptonrt.nn.model import build_mlp
from leptonrt.nn.step import FusedStep

REPO = Path(__file__).resolve().parents[2]
FP = ckpt.job_fingerprint({"hidden": [16], "lr": 0.01, "optimizer": "adam"})

OPTIMIZERS = {
    "adam-fused": lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=0.01, foreach=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, fused=True),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, foreach=True),
    "sgd-momentum-fused": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, fused=True),
}


def batch(i, n=32):
    gen = torch.Generator().manual_seed(100 + i)
    return torch.randn(n, 20, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def train_step(model, opt, i):
    x, y = batch(i)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def trained(opt_name="adam-fused", steps=3):
    model = build_mlp(20, [16], 3, 0)
    opt = OPTIMIZERS[opt_name](model.parameters())
    for i in range(steps):
        train_step(model, opt, i)
    return model, opt


def save(directory, step, model=None, opt=None, **kw):
    if model is None:
        model, opt = trained()
    return ckpt.save(directory, step=step, epoch=step // 10, fingerprint=FP, model=model, optimizer=opt, **kw)


def steps_on_disk(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.startswith("step-"))


def tmp_dirs(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.startswith(".tmp-")]


def crash_at(stage):
    """A fault hook that raises at ``stage``."""
    def fault(at):
        if at == stage:
            raise RuntimeError(f"crash at {at}")
    return fault


# ---------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_restored_pair_takes_a_bitwise_identical_next_step(tmp_path, opt_name):
    model, opt = trained(opt_name)
    saved = save(tmp_path, 3, model, opt, meta={"scale": 65536.0, "rng": [1, 2, 3]})

    fresh = build_mlp(20, [16], 3, seed=7)  # different start, so the load must do the work
    fresh_opt = OPTIMIZERS[opt_name](fresh.parameters())
    found = ckpt.latest(tmp_path)
    assert found == saved and found.meta == {"scale": 65536.0, "rng": [1, 2, 3]}
    ckpt.load(found, fresh, fresh_opt)

    for i in (3, 4):
        train_step(model, opt, i)
        train_step(fresh, fresh_opt, i)
        for a, b in zip(model.parameters(), fresh.parameters()):
            assert torch.equal(a, b)


def test_fused_step_resumes_exactly_and_keeps_its_gradient_views(tmp_path):
    def make(seed):
        return FusedStep(build_mlp(20, [16], 3, seed), optimizer="adam", lr=0.01)

    def go(step, i):
        x, y = batch(i)
        step.compute(x, y, global_rows=x.shape[0])
        assert step.apply()

    a = make(0)
    for i in range(3):
        go(a, i)
    save(tmp_path, 3, a.model, a.optimizer)
    b = make(5)
    ckpt.load(ckpt.latest(tmp_path), b.model, b.optimizer)
    for p, offset in zip(b.params, [0, 320, 336, 384]):
        assert p.grad.data_ptr() == b.flat[offset:].data_ptr()  # still views into the flat buffer
    for i in (3, 4):
        go(a, i)
        go(b, i)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_files_are_not_pickles(tmp_path):
    saved = save(tmp_path, 1)
    raw = (saved.path / "weights.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert raw[8:9] == b"{" and 8 + header_len <= len(raw)
    state = torch.load(saved.path / "optimizer.pt", weights_only=True)
    assert set(state) == {"state", "param_groups"} and isinstance(state["state"][0]["exp_avg"], torch.Tensor)
    manifest = json.loads((saved.path / "manifest.json").read_text())
    assert manifest["format"] == ckpt.FORMAT and manifest["step"] == 1 and manifest["fingerprint"] == FP
    assert manifest["files"]["optimizer.pt"]["size"] == (saved.path / "optimizer.pt").stat().st_size


# ---------------------------------------------------------------------------- choosing and pruning

def test_latest_picks_the_highest_complete_step_and_keep_prunes(tmp_path):
    assert ckpt.latest(tmp_path / "nothing-here") is None
    assert ckpt.latest(tmp_path) is None
    for step in (5, 10, 20, 100):
        save(tmp_path, step, keep=3)
    assert steps_on_disk(tmp_path) == ["step-00000010", "step-00000020", "step-00000100"]
    save(tmp_path, 200, keep=2)
    assert steps_on_disk(tmp_path) == ["step-00000100", "step-00000200"]
    found = ckpt.latest(tmp_path)
    assert (found.step, found.epoch, found.path.name) == (200, 20, "step-00000200")


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save(tmp_path, 4, meta={"run": 1})
    save(tmp_path, 4, meta={"run": 2})
    assert steps_on_disk(tmp_path) == ["step-00000004"] and tmp_dirs(tmp_path) == []
    assert ckpt.latest(tmp_path).meta == {"run": 2}


@pytest.mark.parametrize("stage", ["weights", "optimizer", "manifest", "rename"])
def test_a_fault_at_any_stage_leaves_the_previous_checkpoint_intact(tmp_path, stage):
    save(tmp_path, 1)
    with pytest.raises(RuntimeError, match=f"crash at {stage}"):
        save(tmp_path, 2, fault=crash_at(stage))
    assert ckpt.latest(tmp_path).step == 1
    assert steps_on_disk(tmp_path) == ["step-00000001"] and tmp_dirs(tmp_path) == []


def test_a_fault_while_replacing_a_step_keeps_the_old_one(tmp_path, monkeypatch):
    save(tmp_path, 4, meta={"run": 1})
    with pytest.raises(RuntimeError):
        save(tmp_path, 4, meta={"run": 2}, fault=crash_at("rename"))
    assert ckpt.latest(tmp_path).meta == {"run": 1} and tmp_dirs(tmp_path) == []

    real_rename = os.rename

    def rename(src, dst):  # the old one is already aside when the new one fails to move in
        if Path(src).name.startswith(".tmp-step-"):
            raise OSError("disk gone")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        save(tmp_path, 4, meta={"run": 3})
    monkeypatch.undo()
    assert ckpt.latest(tmp_path).meta == {"run": 1} and tmp_dirs(tmp_path) == []


def test_a_real_crash_mid_write_is_ignored_then_cleaned_up(tmp_path):
    save(tmp_path, 1)
    child = textwrap.dedent(f"""
        import os, sys, torch
        from leptonrt.nn import checkpoint as ckpt
        from leptonrt.nn.model import build_mlp
        model = build_mlp(20, [16], 3, 0)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        def fault(stage):
            if stage == "manifest":
                os._exit(1)
        ckpt.save(sys.argv[1], step=2, epoch=0, fingerprint={FP!r}, model=model, optimizer=opt, fault=fault)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", child, str(tmp_path)], env=env, capture_output=True, timeout=120)
    assert done.returncode == 1, done.stderr.decode()
    [leftover] = tmp_dirs(tmp_path)
    assert (tmp_path / leftover / "optimizer.pt").exists() and not (tmp_path / leftover / "manifest.json").exists()

    assert ckpt.latest(tmp_path).step == 1
    save(tmp_path, 3)
    assert tmp_dirs(tmp_path) == [] and ckpt.latest(tmp_path).step == 3


def test_a_live_writers_temp_dir_is_left_alone(tmp_path):
    busy = tmp_path / f".tmp-step-00000009-{os.getpid()}-abcd1234"
    busy.mkdir(parents=True)
    save(tmp_path, 1)
    assert busy.exists()


# ---------------------------------------------------------------------------- refusing bad checkpoints

def corrupt_flip(path):
    f = path / "weights.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x01
    f.write_bytes(bytes(raw))


def corrupt_truncate_manifest(path):
    f = path / "manifest.json"
    f.write_bytes(f.read_bytes()[:40])


def corrupt_delete_optimizer(path):
    (path / "optimizer.pt").unlink()


def corrupt_format(path):
    f = path / "manifest.json"
    f.write_text(json.dumps(dict(json.loads(f.read_text()), format=99)))


@pytest.mark.parametrize("corrupt, problem", [
    (corrupt_flip, "weights.safetensors does not match its sha256"),
    (corrupt_truncate_manifest, "unreadable manifest.json"),
    (corrupt_delete_optimizer, "optimizer.pt is missing"),
    (corrupt_format, "format 99"),
])
def test_tampered_checkpoints_are_refused(tmp_path, corrupt, problem):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    corrupt(newest.path)
    with pytest.raises(DataError) as info:
        ckpt.latest(tmp_path)
    message = str(info.value)
    assert str(newest.path) in message and problem in message
    assert "remove it to resume from an earlier checkpoint" in message and "\n" not in message


def test_a_checkpoint_without_manifest_is_skipped(tmp_path):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    (newest.path / "manifest.json").unlink()
    assert ckpt.latest(tmp_path).step == 1


def test_load_rechecks_the_files(tmp_path):
    model, opt = trained()
    found = save(tmp_path, 1, model, opt)
    corrupt_flip(found.path)
    with pytest.raises(DataError, match="does not match its sha256"):
        ckpt.load(found, model, opt)


def test_load_into_a_different_model_is_a_data_error(tmp_path):
    found = save(tmp_path, 1)
    other = build_mlp(20, [8], 3, 0)
    with pytest.raises(DataError, match="does not fit this model") as info:
        ckpt.load(found, other, torch.optim.Adam(other.parameters()))
    assert str(found.path) in str(info.value)


def test_load_into_a_different_optimizer_is_a_data_error(tmp_path):
    found = save(tmp_path, 1)
    model = build_mlp(20, [16], 3, 0)
    with pytest.raises(DataError, match="optimizer state does not fit"):
        ckpt.load(found, model, torch.optim.Adam([model[0].weight], lr=0.01))


# ---------------------------------------------------------------------------- settings

def test_fingerprint_is_canonical_and_mismatch_is_a_config_error(tmp_path):
    assert ckpt.job_fingerprint({"a": 1, "b": [2, 3]}) == ckpt.job_fingerprint({"b": [2, 3], "a": 1})
    assert ckpt.job_fingerprint({"a": 1}) != ckpt.job_fingerprint({"a": 2})
    found = save(tmp_path, 1)
    ckpt.check_fingerprint(found, FP)
    with pytest.raises(ConfigError, match="written by a different job") as info:
        ckpt.check_fingerprint(found, ckpt.job_fingerprint({"hidden": [32]}))
    assert str(found.path) in str(info.value) and info.value.exit_code == 78


def test_unwritable_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot write checkpoints") as info:
        save(blocker / "checkpoints", 1)
    assert str(blocker / "checkpoints") in str(info.value)
    with pytest.raises(ConfigError, match="keep"):
        save(tmp_path / "ok", 1, keep=0)
