"""A SIMULATED straggler: leptonrt's rebalancing against PyTorch DDP, in one invocation.

Runs, all with 2 CPU processes, the same MLP, batch, precision, optimizer and threads:

1. PyTorch DistributedDataParallel (gloo), rank 1 slowed 2x by an injected wait;
2. leptonrt, the same slowdown, fixed `--split 0.5,0.5`;
3. leptonrt, the same slowdown, rebalancing on;
4. leptonrt and DDP with no slowdown;
5. leptonrt, rebalancing on, with the slowdown starting mid-run: the step at which the
   split settled.

The slowdown is simulated the same way on both sides: after its forward+backward, rank 1
sleeps (FACTOR-1) x the compute time it just measured. In DDP the gradient all-reduce
overlaps backward, so DDP's measured compute includes some communication and its
injected wait is slightly larger; each JSON line reports the mean injected wait per step
so that difference is visible. Throughput is samples/s over epochs 2..E (epoch 1 is
warm-up), evaluation excluded, and every line says `"simulated": true` when slowed.

    python bench/straggler.py [--epochs 8] [--batch-size 1024] [--factor 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import time

import torch
from torch.nn import functional as F

from leptonrt.broker.plan import batch_rows, epoch_permutation, even_split, piece, steps_per_epoch
from leptonrt.broker.server import JobRunner
from leptonrt.config import TrainJob
from leptonrt.data.loaders import load_dataset
from leptonrt.nn.model import build_mlp
from leptonrt.nn.step import make_optimizer


def _ddp_worker(rank: int, port: int, args: argparse.Namespace, factor: float, out) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, seed=0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    model = DDP(build_mlp(x.shape[1], [args.hidden], data.n_classes, 0))
    opt = make_optimizer(list(model.parameters()), "adam", 1e-3, 0.9, 0.0)
    n, b = x.shape[0], args.batch_size
    split, seconds, waited, steps = even_split(b, 2), 0.0, 0.0, 0
    for epoch in range(args.epochs):
        perm = epoch_permutation(n, 0, epoch)
        t_epoch = time.perf_counter()
        for t in range(steps_per_epoch(n, b)):
            rows = batch_rows(n, b, t)
            lo, hi = piece(split, rows, rank)
            idx = perm[t * b + lo: t * b + hi]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx)).backward()
            if rank == 1 and factor > 1:
                wait = (factor - 1) * (time.perf_counter() - t0)
                time.sleep(wait)
                waited += wait
                steps += 1
            opt.step()
        if epoch > 0:
            seconds += time.perf_counter() - t_epoch
    if rank == 0:
        out.put(n * (args.epochs - 1) / seconds)
    else:
        out.put(waited / max(steps, 1))
    dist.destroy_process_group()


def ddp(args: argparse.Namespace, factor: float) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_ddp_worker, args=(r, port, args, factor, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted([out.get(timeout=600) for _ in procs], reverse=True)   # samples/s > wait seconds
    for p in procs:
        p.join(timeout=60)
    return {"samples_per_s": results[0], "mean_injected_wait_ms": results[1] * 1000}


def leptonrt(args: argparse.Namespace, slowdown: tuple | None, split=None) -> dict:
    job = TrainJob(dataset=args.dataset, hidden=(args.hidden,), epochs=args.epochs, batch_size=args.batch_size,
                   precision="fp32", optimizer="adam", split=split, slowdowns=(slowdown,) if slowdown else ())
    return asyncio.run(JobRunner(job, gpus="none", cpu_actors=2).run())


def settled_step(result: dict, start: int, tolerance: int = 16) -> int | None:
    """First step >= start from which the split stays within ``tolerance`` rows of its final value."""
    changes = [c for c in result["split_changes"] if c["step"] >= start]
    if not changes:
        return None
    final = changes[-1]["split"]
    settled = changes[-1]["step"]
    for change in reversed(changes):
        if max(abs(a - b) for a, b in zip(change["split"], final)) > tolerance:
            break
        settled = change["step"]
    return settled


def emit(run: str, **fields) -> None:
    print(json.dumps({"bench": "straggler", "run": run, **fields}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic:60000,784,10")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--mid-run-step", type=int, default=150)
    args = p.parse_args()
    slow = (1, args.factor, 0, None)
    ddp_slow = ddp(args, args.factor)
    emit("ddp_slowed", simulated=True, factor=args.factor, **ddp_slow)
    fixed = leptonrt(args, slow, split=(0.5, 0.5))
    emit("leptonrt_fixed_split_slowed", simulated=True, factor=args.factor, samples_per_s=fixed["samples_per_s"])
    rebal = leptonrt(args, slow)
    emit("leptonrt_rebalanced_slowed", simulated=True, factor=args.factor, samples_per_s=rebal["samples_per_s"],
         rebalances=rebal["rebalances"], final_shares=[a["share"] for a in rebal["actors"]])
    ddp_fast = ddp(args, 1.0)
    emit("ddp_no_slowdown", simulated=False, samples_per_s=ddp_fast["samples_per_s"])
    ours_fast = leptonrt(args, None)
    emit("leptonrt_no_slowdown", simulated=False, samples_per_s=ours_fast["samples_per_s"],
         rebalances=ours_fast["rebalances"])
    mid = leptonrt(args, (1, args.factor, args.mid_run_step, None))
    settled = settled_step(mid, args.mid_run_step)
    emit("leptonrt_mid_run_slowdown", simulated=True, factor=args.factor, slowdown_from_step=args.mid_run_step,
         settled_at_step=settled, steps_to_settle=None if settled is None else settled - args.mid_run_step,
         samples_per_s=mid["samples_per_s"], split_changes=mid["split_changes"])
    emit("summary", rebalanced_over_ddp_slowed=round(rebal["samples_per_s"] / ddp_slow["samples_per_s"], 3),
         fixed_over_ddp_slowed=round(fixed["samples_per_s"] / ddp_slow["samples_per_s"], 3),
         leptonrt_over_ddp_no_slowdown=round(ours_fast["samples_per_s"] / ddp_fast["samples_per_s"], 3),
         ideal_rebalanced_over_ddp_slowed=round((args.factor + 1) / 2, 3))


if __name__ == "__main__":
    main()
