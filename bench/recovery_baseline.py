"""Baseline for the recovery benchmark: restart every worker from the last checkpoint.

This is OUR re-implementation of the recovery policy torchrun (torch.distributed.run /
torchelastic) applies by default when a worker dies; it is not torchrun itself and uses
no torchelastic code. The agent logic mirrors torchrun's defaults:

* the agent (here: the calling process) checks its workers every ``monitor_interval`` =
  0.1 s (torchrun's default ``--monitor-interval``), sleeping first, then polling;
* on a dead worker it tears the whole group down: SIGTERM to every surviving worker,
  up to 30 s grace, then SIGKILL (torchrun's ``close()`` defaults);
* it then starts ALL ``world`` workers again as fresh interpreters, which form a new
  process group and load the newest checkpoint, and training continues from it.
  (torchrun also re-runs its rendezvous; here a new TCPStore on a fresh port stands in.)

The workers train exactly like leptonrt: same dataset, MLP, Adam, per-step global batch
and per-rank rows (``leptonrt.batches``), loss summed and divided by the global
batch's rows, gradients all-reduced (SUM) as one flat buffer over gloo, 1 thread each.
Rank 0 writes a checkpoint every ``checkpoint_every`` steps (safetensors weights,
``torch.save`` optimizer state, each written to a temp file and ``os.replace``-d, then a
``latest`` marker the same way; no fsync).

What is measured, never estimated: once step ``kill_at_step`` is committed (completed by
every rank), rank ``victim_rank`` gets SIGKILL. Workers log ``event step time`` lines with
``time.monotonic()`` (one clock for all processes on Linux) to per-rank progress files.

* ``restart_s``: SIGKILL -> every new worker has formed the group and loaded the checkpoint;
* ``kill_to_first_committed_step_s``: SIGKILL -> the first step after the resume is
  completed by every new worker (includes detection, teardown, process start, torch
  import, dataset load, group formation, checkpoint load and that step);
* ``steps_lost``: (last step committed before the kill + 1) - S, where S is the step the
  checkpoint resumes at (S = steps it holds, so the next step to train is S).

The restarted run is stopped right after that first committed step: a stop file, read by
every rank and summed into the gradient all-reduce, ends all ranks after the same step.
Where the killed run had already completed that step, the restarted run must reproduce
its loss bit for bit (the weights were restored exactly), or the call raises.

    python bench/recovery_baseline.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MONITOR_INTERVAL_S = 0.1    # torchrun's default --monitor-interval
TERM_GRACE_S = 30.0         # torchrun's default close() timeout before SIGKILL
DEADLINE_S = 300.0          # give up (and clean up) if any phase hangs beyond this
WEIGHTS, OPTIMIZER, LATEST = "weights-{:08d}.safetensors", "optimizer-{:08d}.pt", "latest"


# --- worker (runs in a fresh interpreter) ---------------------------------------------


def _atomic(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def _save_checkpoint(ckpt_dir: str, step: int, model, opt) -> None:
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    _atomic(os.path.join(ckpt_dir, WEIGHTS.format(step)), lambda p: save_file(state, p))
    _atomic(os.path.join(ckpt_dir, OPTIMIZER.format(step)), lambda p: torch.save(opt.state_dict(), p))

    def marker(p: str) -> None:
        with open(p, "w") as f:
            f.write(str(step))
    _atomic(os.path.join(ckpt_dir, LATEST), marker)   # last: the pair above is whole


def _latest_checkpoint(ckpt_dir: str) -> int | None:
    try:
        with open(os.path.join(ckpt_dir, LATEST)) as f:
            return int(f.read())
    except FileNotFoundError:
        return None


def _worker(spec_json: str) -> None:
    cfg = json.loads(spec_json)
    rank, world = cfg["rank"], cfg["world"]
    progress = open(cfg["progress"], "w", buffering=1)

    def log(event: str, step: int, loss: float = float("nan")) -> None:
        progress.write(f"{event} {step} {time.monotonic()!r} {loss!r}\n")

    import datetime

    import torch
    import torch.distributed as dist
    from torch.nn import functional as F

    from leptonrt.batches import batch_rows, even_split, piece, steps_per_epoch
    from leptonrt.nn.order import epoch_permutation
    from leptonrt.data.loaders import load_dataset
    from leptonrt.nn.model import build_mlp
    from leptonrt.nn.step import make_optimizer

    torch.set_num_threads(1)
    data = load_dataset(cfg["dataset"], seed=0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    timeout = datetime.timedelta(seconds=60)
    store = dist.TCPStore("127.0.0.1", cfg["port"], world, is_master=rank == 0, timeout=timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)

    model = build_mlp(x.shape[1], [cfg["hidden"]], data.n_classes, 0)
    params = list(model.parameters())
    opt = make_optimizer(params, "adam", 1e-3, 0.9, 0.0)
    start = 0
    if cfg["resume"]:
        latest = _latest_checkpoint(cfg["ckpt_dir"])
        if latest is not None:
            from safetensors.torch import load_file
            model.load_state_dict(load_file(os.path.join(cfg["ckpt_dir"], WEIGHTS.format(latest))))
            opt.load_state_dict(torch.load(os.path.join(cfg["ckpt_dir"], OPTIMIZER.format(latest)), weights_only=True))
            start = latest
    log("loaded", start)

    n, b, every = x.shape[0], cfg["batch_size"], cfg["checkpoint_every"]
    spe, split = steps_per_epoch(n, b), even_split(b, world)
    sizes = [p.numel() for p in params]
    perm, perm_epoch = None, -1
    for g in range(start, cfg["total_steps"]):
        e, t = divmod(g, spe)
        if e != perm_epoch:
            perm, perm_epoch = epoch_permutation(n, 0, e), e
        rows = batch_rows(n, b, t)
        lo, hi = piece(split, rows, rank)
        idx = perm[t * b + lo: t * b + hi]
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx), reduction="sum") / rows
        loss.backward()
        stop = 1.0 if os.path.exists(cfg["stop_file"]) else 0.0
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [torch.tensor([stop])])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for p, gr in zip(params, flat[:-1].split(sizes)):
            p.grad.copy_(gr.view_as(p))
        opt.step()
        if rank == 0 and (g + 1) % every == 0:
            _save_checkpoint(cfg["ckpt_dir"], g + 1, model, opt)
        log("step", g, loss.item())
        if flat[-1].item() > 0:   # every rank sees the same sum, so all stop after step g
            break
    dist.destroy_process_group()
    progress.close()


# --- agent (the calling process) ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the worker gets SIGKILL if the agent dies, so nothing is ever orphaned."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Progress:
    """Tails one progress file: the last event of each kind and its time."""

    def __init__(self, path: str) -> None:
        self.path, self.offset, self.buf = path, 0, ""
        self.events: dict[str, dict[int, float]] = {"loaded": {}, "step": {}}
        self.losses: dict[int, float] = {}   # step -> this rank's share of the loss

    def read(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self.offset)
                chunk = f.read()
                self.offset = f.tell()
        except FileNotFoundError:
            return
        self.buf += chunk
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            event, step, t, loss = line.split()
            self.events[event][int(step)] = float(t)
            if event == "step":
                self.losses[int(step)] = float(loss)

    def last_step(self) -> int:
        return max(self.events["step"], default=-1)


class _Group:
    """One generation of ``world`` worker processes and their progress files."""

    def __init__(self, tmp: str, gen: int, base: dict, resume: bool) -> None:
        port, world = _free_port(), base["world"]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        here = os.path.dirname(os.path.abspath(__file__))
        code = f"import sys; sys.path.insert(0, {here!r}); import recovery_baseline as m; m._worker(sys.argv[1])"
        self.progress, self.procs, self.logs = [], [], []
        for rank in range(world):
            path = os.path.join(tmp, f"gen{gen}-rank{rank}")
            cfg = {**base, "rank": rank, "port": port, "resume": resume, "progress": path + ".progress"}
            self.progress.append(_Progress(cfg["progress"]))
            self.logs.append(path + ".log")
            with open(self.logs[-1], "w") as out:
                self.procs.append(subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=env,
                                                   stdout=out, stderr=subprocess.STDOUT,
                                                   preexec_fn=_die_with_parent))

    def read(self) -> None:
        for p in self.progress:
            p.read()

    def committed(self) -> int:
        """Last step completed by every rank (-1 if none)."""
        return min(p.last_step() for p in self.progress)

    def failure(self) -> str | None:
        for rank, proc in enumerate(self.procs):
            if proc.poll() is not None and proc.returncode != 0:
                with open(self.logs[rank]) as f:
                    tail = f.read()[-3000:]
                return f"rank {rank} exited with {proc.returncode}:\n{tail}"
        return None

    def close(self, grace: float) -> None:
        """torchrun-style: SIGTERM the live ones, wait up to ``grace`` s, then SIGKILL."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        end = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(end - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _wait_for(group: _Group, done, what: str, deadline: float, poll_s: float = 0.002) -> None:
    while True:
        group.read()
        if done():
            return
        failed = group.failure()
        if failed:
            raise RuntimeError(f"while waiting for {what}: {failed}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def restart_all(*, dataset: str = "synthetic:60000,784,10", hidden: int = 128, batch_size: int = 1024,
                total_steps: int = 400, kill_at_step: int = 200, checkpoint_every: int = 50,
                victim_rank: int = 1, world: int = 2) -> dict:
    """Kill one worker mid-run, recover by restarting all from the last checkpoint; measured timings."""
    if not 0 <= kill_at_step < total_steps - 1:
        raise ValueError("need 0 <= kill_at_step < total_steps - 1")
    if not 0 <= victim_rank < world or world < 2 or checkpoint_every < 1:
        raise ValueError("need world >= 2, 0 <= victim_rank < world, checkpoint_every >= 1")
    tmp = tempfile.mkdtemp(prefix="recovery_baseline-")
    ckpt_dir = os.path.join(tmp, "ckpt")
    os.mkdir(ckpt_dir)
    base = {"dataset": dataset, "hidden": hidden, "batch_size": batch_size, "total_steps": total_steps,
            "checkpoint_every": checkpoint_every, "world": world, "ckpt_dir": ckpt_dir}
    groups: list[_Group] = []
    try:
        deadline = time.monotonic() + DEADLINE_S
        first = _Group(tmp, 0, {**base, "stop_file": os.path.join(tmp, "stop0")}, resume=False)
        groups.append(first)
        _wait_for(first, lambda: first.committed() >= kill_at_step, f"step {kill_at_step}", deadline)

        os.kill(first.procs[victim_rank].pid, signal.SIGKILL)
        t_kill = time.monotonic()

        while True:   # the agent's monitor loop: sleep, then look
            time.sleep(MONITOR_INTERVAL_S)
            if any(p.poll() is not None for p in first.procs):
                break
        first.close(TERM_GRACE_S)
        first.read()
        last_committed = first.committed()   # the victim's log is final, so nothing is committed after it

        stop_file = os.path.join(tmp, "stop1")
        second = _Group(tmp, 1, {**base, "stop_file": stop_file}, resume=True)
        groups.append(second)
        loaded = [p.events["loaded"] for p in second.progress]
        _wait_for(second, lambda: all(loaded), "the restarted workers to load", deadline)
        resumed = {next(iter(d)) for d in loaded}
        if len(resumed) != 1:
            raise RuntimeError(f"restarted ranks resumed from different steps: {sorted(resumed)}")
        (s,) = resumed
        restart_s = max(next(iter(d.values())) for d in loaded) - t_kill
        steps = [p.events["step"] for p in second.progress]
        _wait_for(second, lambda: all(s in d for d in steps), f"step {s} after the restart", deadline)
        first_committed_s = max(d[s] for d in steps) - t_kill
        for old, new in zip(first.progress, second.progress):   # the resume restored the weights exactly
            if s in old.losses and old.losses[s] != new.losses[s]:
                raise RuntimeError(f"step {s} loss {new.losses[s]!r} after the restart, {old.losses[s]!r} before")

        open(stop_file, "w").close()   # all ranks stop after the same step, then exit 0
        for proc in second.procs:
            proc.wait(max(deadline - time.monotonic(), 1))
        failed = second.failure()
        if failed:
            raise RuntimeError(f"restarted worker failed on shutdown: {failed}")
        return {"method": "restart_all_from_checkpoint",
                "kill_to_first_committed_step_s": first_committed_s,
                "steps_lost": last_committed + 1 - s,
                "checkpoint_every": checkpoint_every,
                "kill_at_step": kill_at_step,
                "resumed_from_step": s,
                "restart_s": restart_s}
    finally:
        for group in groups:
            for proc in group.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    result = restart_all()
    print(json.dumps({"bench": "recovery", "run": "restart_all_from_checkpoint", **result}), flush=True)
