"""`leptonrt train` end to end, with real actor processes (the process tier)."""

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from safetensors.torch import load_file

pytestmark = pytest.mark.process


def test_two_cpu_actors_reach_95_percent_on_digits(leptonrt_cli, tmp_path, no_leftovers):
    out = tmp_path / "result.json"
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "none", "--cpu-actors", "2", "--epochs", "30",
                        "--batch-size", "64", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 30 and "samples/s" in epoch_lines[0] and "test_acc" in epoch_lines[0]
    result = json.loads(out.read_text())
    assert result["test_accuracy"] >= 0.95
    assert result["epochs"] == 30 and result["steps"] == 30 * 23
    assert result["samples_per_s"] > 0 and result["wall_s"] > 0
    assert [(a["rank"], a["device"]) for a in result["actors"]] == [(0, "cpu"), (1, "cpu")]
    assert sum(a["share"] for a in result["actors"]) == 1.0
    assert result["rebalances"] == sum(c["why"] == "rebalance" for c in result["split_changes"])
    assert len(result["history_digest"]) == 64
    done = proc.stdout.splitlines()[-1]   # the summary counts regroups (a standby) beside moves
    assert f"rebalances {result['rebalances']}  regroups {result['regroups']}" in done, done
    # a member trains a share; one the rebalancer put on standby trains none (and says so)
    assert all((a["share"] > 0) == a["in_group"] and a["in_group"] != a["standby"] for a in result["actors"])
    # each actor has a core of its own (pinned, 1 thread); one on standby may lend its core to the
    # member, which tries it and keeps it only where measured faster: an actor out of the group
    # runs 1 thread, a member 1 or 2, and 2 only after a change of cores
    if len(os.sched_getaffinity(0)) >= 2:
        threads = sorted((a["in_group"], a["threads"]) for a in result["actors"])
        assert threads in ([(True, 1), (True, 1)], [(False, 1), (True, 1)], [(False, 1), (True, 2)]), threads
        assert result["cores_changes"] > 0 or threads[-1][1] == 1


def _weights(leptonrt_cli, tmp_path, name, *args):
    path = tmp_path / f"{name}.safetensors"
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "none", "--epochs", "4", "--batch-size", "64",
                        "--precision", "fp32", "--quiet", "--save", path, *args)
    assert proc.returncode == 0, proc.stderr
    return load_file(path)


def test_uneven_splits_train_the_same_weights_as_one_actor(leptonrt_cli, tmp_path, no_leftovers):
    single = _weights(leptonrt_cli, tmp_path, "one", "--cpu-actors", "1")
    uneven = _weights(leptonrt_cli, tmp_path, "two", "--cpu-actors", "2", "--split", "0.7,0.3")
    with_idle = _weights(leptonrt_cli, tmp_path, "three", "--cpu-actors", "3", "--split", "0.6,0,0.4")
    assert sorted(single) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for other in (uneven, with_idle):
        for key, ref in single.items():
            rel = float((other[key] - ref).abs().max() / ref.abs().max())
            assert rel < 1e-5, (key, rel)


def test_splits_that_change_during_the_run_train_the_same_weights_as_one_actor(leptonrt_cli, tmp_path,
                                                                              no_leftovers):
    single = _weights(leptonrt_cli, tmp_path, "one", "--cpu-actors", "1")
    out = tmp_path / "r.json"
    # a SIMULATED straggler that comes and goes makes the rebalancer move rows (or the
    # straggler to standby) and back
    moving = _weights(leptonrt_cli, tmp_path, "moving", "--cpu-actors", "2", "--json-out", out,
                      "--simulate-slowdown", "1=4@5-60")
    result = json.loads(out.read_text())
    assert result["rebalances"] + result["regroups"] >= 1, result["split_changes"]
    for key, ref in single.items():
        rel = float((moving[key] - ref).abs().max() / ref.abs().max())
        assert rel < 1e-5, (key, rel)



def test_splits_the_actors_agree_on_before_their_grants_end_train_the_same_weights(leptonrt_cli, tmp_path,
                                                                                    no_leftovers):
    """Once every step is granted, a new split can only take effect through the broker's
    Resplit and the members' vote in the gradient sum: a member that switched alone would
    train rows twice or not at all, and the weights would differ."""
    import asyncio
    from leptonrt.broker.job import JobConfig
    from leptonrt.broker.runner import JobRunner
    from leptonrt.config import TrainJob
    single = _weights(leptonrt_cli, tmp_path, "one", "--cpu-actors", "1", "--hidden", "512")
    # grants up to 256 steps ahead, and a membership change waits for them (so the 8x straggler
    # is answered by moves, which are what this test is about, not by a standby)
    far_ahead = JobConfig(min_window=256, max_window=256, cut_short=False)
    path = tmp_path / "agreed.safetensors"
    # a wider model than _weights' own: its cost per row is what a SIMULATED 4x straggler makes
    # worth moving (in the small one the gradient sum's fixed cost dominates)
    job = TrainJob(dataset="digits", hidden=(512,), epochs=4, batch_size=64, precision="fp32", save=str(path),
                   slowdowns=((1, 8.0, 20, None),))
    result = asyncio.run(JobRunner(job, gpus="none", cpu_actors=2, core_config=far_ahead).run())
    moves = [c for c in result["split_changes"] if c["why"] == "rebalance"]
    assert moves and all(c["step"] < result["steps"] for c in moves), result["split_changes"]
    # rank 1 is 8x slower from step 20: whatever noise moved before it, the split the run ends on
    # favours rank 0 (a move before step 20 to the same split leaves none to make after it)
    assert moves[-1]["split"][0] > moves[-1]["split"][1], result["split_changes"]
    agreed = load_file(path)
    for key, ref in single.items():
        rel = float((agreed[key] - ref).abs().max() / ref.abs().max())
        assert rel < 1e-5, (key, rel)

def test_a_simulated_slowdown_is_labelled_as_simulated(leptonrt_cli, tmp_path, no_leftovers):
    out = tmp_path / "r.json"
    proc = leptonrt_cli("train", "--dataset", "synthetic:2000,16,4", "--gpus", "none", "--cpu-actors", "2",
                        "--epochs", "2", "--simulate-slowdown", "1=2", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    assert all("SIMULATED" in line for line in proc.stdout.splitlines())
    assert json.loads(out.read_text())["simulated_slowdowns"] == [{"rank": 1, "factor": 2.0, "from_step": 0,
                                                                  "to_step": None}]


def test_a_crashed_actor_without_restarts_left_fails_the_job_with_a_report_and_leaves_nothing(leptonrt_cli,
                                                                                                no_leftovers):
    # (no rebalancing in the fault tests: a rank on standby trains no step, and its fault never fires)
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "none", "--cpu-actors", "2", "--epochs", "3",
                        "--max-restarts", "0", "--rebalance", "off", env={"LEPTONRT_FAULT": "crash@10:1"})
    assert proc.returncode == 70
    assert "rank 1" in proc.stderr and "exit code 17" in proc.stderr and "--max-restarts 0" in proc.stderr
    assert not proc.stderr.startswith("Traceback")


def test_a_hung_actor_is_found_within_the_bound_and_without_restarts_left_fails_the_job(leptonrt_cli, no_leftovers):
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "none", "--cpu-actors", "2", "--epochs", "3",
                        "--max-restarts", "0", "--rebalance", "off", env={"LEPTONRT_FAULT": "hang@10:1"}, timeout=60)
    assert proc.returncode == 70
    assert "rank 1 sent nothing for 3." in proc.stderr and "taken for hung" in proc.stderr
    assert not proc.stderr.startswith("Traceback")


def test_a_missing_dataset_file_is_one_line_and_exit_66(leptonrt_cli, tmp_path, no_leftovers):
    proc = leptonrt_cli("train", "--dataset", f"mnist:{tmp_path}", "--gpus", "none")
    assert proc.returncode == 66
    assert proc.stderr.count("\n") == 1 and "train-images-idx3-ubyte" in proc.stderr
    assert "Traceback" not in proc.stderr


USER_MODEL = """
import torch
from torch import nn

def build(n_features, n_classes):
    return nn.Sequential(nn.Linear(n_features, 48), nn.Tanh(), nn.Linear(48, n_classes))

def squared(logits, targets):
    return (logits - nn.functional.one_hot(targets, logits.shape[1])).pow(2).sum(1)

def wide(n_features, n_classes):
    return nn.Linear(n_features, n_classes + 1)
"""


def test_a_users_own_model_and_loss_train_across_actors(leptonrt_cli, tmp_path, no_leftovers):
    (tmp_path / "cli_user_models.py").write_text(USER_MODEL)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    out, weights = tmp_path / "r.json", tmp_path / "w.safetensors"
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "none", "--cpu-actors", "2", "--epochs", "3",
                        "--model", "cli_user_models:build", "--loss", "cli_user_models:squared", "--lr", "0.01",
                        "--quiet", "--json-out", out, "--save", weights, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["epochs"] == 3 and result["test_accuracy"] > 0.5 and len(result["history_digest"]) == 64
    assert sorted(load_file(weights)) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert load_file(weights)["0.weight"].shape == (48, 64)
    proc = leptonrt_cli("train", "--dataset", "digits", "--gpus", "none", "--cpu-actors", "2",
                        "--model", "cli_user_models:wide", env=env)
    assert proc.returncode == 78 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "leptonrt: --model cli_user_models:wide: the module maps a (2, 64) batch to (2, 11); "
        "it must return float logits of shape (2, 10)"]


def test_a_csv_with_its_own_label_column_trains_end_to_end(leptonrt_cli, tmp_path, no_leftovers):
    """Columns: two features, then the class. "label" is a feature here: read as the label,
    its fractional values would be refused, so the run passing shows the option arrived."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    kind = (x[:, 0] + x[:, 1] > 0).astype(int)
    table = tmp_path / "points.csv"
    table.write_text("label,b,kind\n" + "".join(f"{a:.6f},{b:.6f},{k}\n" for (a, b), k in zip(x, kind)))
    out = tmp_path / "result.json"
    proc = leptonrt_cli("train", "--dataset", f"csv:{table}", "--label-column", "kind", "--gpus", "none",
                        "--cpu-actors", "1", "--epochs", "1", "--batch-size", "32", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["epochs"] == 1 and result["steps"] == 5   # 160 training rows in batches of 32
    assert "epoch 1/1" in proc.stdout


@pytest.mark.parametrize("args, code", [
    (["--lr", "-1"], 78),
    (["--cpu-actors", "2", "--split", "1,1,1"], 78),
    (["--gpus", "lots"], 2),
    (["--epochs", "many"], 2),
    (["--json-out", "/nonexistent/dir/r.json"], 78),
])
def test_bad_settings_give_their_exit_code_without_a_traceback(leptonrt_cli, args, code, no_leftovers):
    proc = leptonrt_cli("train", "--dataset", "synthetic:100,4,3", "--gpus", "none", *args)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip()


@pytest.mark.parametrize("sigint, signals, code, said", [
    (signal.SIG_DFL, [signal.SIGINT], 130, "interrupted"),
    (signal.SIG_DFL, [signal.SIGTERM], 143, "terminated"),
    # started ignoring SIGINT (as a shell starts a background job): it keeps ignoring it
    (signal.SIG_IGN, [signal.SIGINT, signal.SIGTERM], 143, "terminated"),
])
def test_a_signal_stops_training_with_its_exit_code_and_leaves_nothing(sigint, signals, code, said, no_leftovers):
    env = dict(os.environ, PYTHONFAULTHANDLER="1")   # SIGABRT then prints every thread's stack
    # set SIGINT's disposition explicitly: the suite itself may run as a background job
    proc = subprocess.Popen([sys.executable, "-m", "leptonrt", "train", "--dataset", "synthetic:20000,64,10",
                             "--gpus", "none", "--cpu-actors", "2", "--epochs", "1000", "--batch-size", "32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)   # never let a pipe fill
    reader.start()
    try:
        assert proc.stdout.readline().startswith("epoch")   # training is under way
        for signum in signals[:-1]:
            proc.send_signal(signum)
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=3)
        proc.send_signal(signals[-1])
        try:
            exit_code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=10)
            reader.join(timeout=10)
            pytest.fail(f"still running 60 s after {signals[-1]!r}; its stderr and stacks:\n" + "".join(stderr))
        assert exit_code == code
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    reader.join(timeout=10)
    assert "Traceback" not in "".join(stderr)
    assert f"leptonrt: {said}" in "".join(stderr)


def test_ctrl_c_says_how_to_resume_and_from_which_checkpoint(tmp_path, no_leftovers):
    checkpoints = tmp_path / "ck"
    proc = subprocess.Popen([sys.executable, "-m", "leptonrt", "train", "--dataset", "synthetic:20000,64,10",
                             "--gpus", "none", "--cpu-actors", "1", "--epochs", "1000", "--batch-size", "32",
                             "--checkpoint-dir", checkpoints, "--checkpoint-every", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().startswith("epoch")   # 500 steps: checkpoints written
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err
    said = [line for line in err.splitlines() if "resume" in line]
    assert len(said) == 1 and "--resume" in said[0] and f"{checkpoints}{os.sep}step-" in said[0]


@pytest.mark.parametrize("args, named", [
    (["--split", "nan,1"], "split[0]"), (["--split", "inf,1"], "split[0]"), (["--split", "1e308,1e308"], "split[0]"),
    (["--lr", "1e-13"], "lr"), (["--epochs", "2000000"], "epochs"), (["--batch-size", "20000000"], "batch_size"),
    (["--hidden", "2000000"], "hidden[0]"), (["--hang-timeout", "inf"], "hang_timeout_s"),
    (["--simulate-slowdown", "5=2"], "rank 5"), (["--cpu-actors", "100000"], "--cpu-actors"),
])
def test_a_setting_the_wire_would_refuse_is_one_line_and_exit_78_before_anything_starts(leptonrt_cli, args, named):
    out = leptonrt_cli("train", "--gpus", "none", "--cpu-actors", "2", "--dataset", "digits", "--epochs", "1", *args)
    assert out.returncode == 78, out.stderr
    assert named in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_a_local_run_says_first_what_it_starts_and_its_own_process_never_loads_pytorch(no_leftovers):
    # stderr a terminal, as a person's: the line is for someone waiting (in a pipe, an error stays the only line)
    code = ("import sys; from leptonrt.cli import main; code = main(sys.argv[1:]); "
            "print('torch loaded:', 'torch' in sys.modules); sys.exit(code)")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code, "train", "--dataset", "digits", "--gpus", "none",
                             "--cpu-actors", "1", "--epochs", "1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=secondary, text=True)
    os.close(secondary)
    said = b""
    try:
        while chunk := os.read(primary, 4096):   # until the process is gone (EIO)
            said += chunk
    except OSError:
        pass
    finally:
        os.close(primary)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, said
    assert said.decode().splitlines()[0] == "leptonrt: loading digits; starting 1 CPU actor"
    assert "torch loaded: False" in out   # the broker (this process) never needed it: the actors have it


def test_a_job_for_a_running_broker_says_first_where_it_goes_and_loads_none_of_the_broker(tmp_path):
    # a stand-in broker on the default socket: it answers status and refuses the job; the
    # command's first line names it, and finding it loaded no broker (numpy, pyarrow: 0.3 s)
    from leptonrt import messages
    from leptonrt.broker.stats import Snapshot
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    address = f"ipc://{runtime}/broker.sock"
    snapshot = Snapshot(address=address, started_at=0.0, now=0.0, state="serving", job=None).to_dict()
    answers = {messages.StatusRequest: messages.StatusReply(snapshot=snapshot),
               messages.Submit: messages.Rejected(message="this broker takes no jobs", exit_code=75)}
    code = ("import sys; from leptonrt.cli import main; code = main(sys.argv[1:]); loaded = ('torch', 'numpy', "
            "'leptonrt.broker.service'); print('loaded:', [m for m in loaded if m in sys.modules]); sys.exit(code)")
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(address)
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, "train", "--dataset", "digits", "--epochs", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, LEPTONRT_RUNTIME_DIR=str(runtime)))
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if router.poll(100):
                peer, frame = router.recv_multipart()
                request = messages.decode(frame, messages.CLIENT_LIMITS)
                router.send_multipart([peer, messages.encode(answers[type(request)])])
        out, err = proc.communicate(timeout=1)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        router.close(linger=0)
        ctx.term()
    assert proc.returncode == 75, err
    assert err.splitlines() == [f"leptonrt: submitting to the broker at {address}",
                                "leptonrt: this broker takes no jobs"]
    assert "loaded: []" in out
