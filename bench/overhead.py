"""One leptonrt actor against a bare PyTorch loop, in the same invocation.

Both train the same MLP on the same in-memory data with the same batch size, precision,
optimizer implementation and thread count; both are timed over the training steps of
epochs 2..E (epoch 1 pays for warm-up), evaluation excluded. Runs alternate
(baseline, leptonrt, baseline, leptonrt, ...) and each side keeps its median, so a
noisy neighbour hurts both alike. Both run with the same glibc malloc thresholds (the
actor's, from ``leptonrt/actors/heap.py``). Prints one JSON line per batch size.

    python bench/overhead.py [--dataset synthetic:60000,784,10] [--batch-sizes 256,1024] [--repeats 3]
    python bench/overhead.py --device cuda --precision bf16 --hidden 1024,1024 --batch-sizes 1024,8192

With ``--device cuda`` both sides train on the first GPU: the baseline holds the data in
device memory and gathers rows there, as the actor does, and times each epoch up to a
``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import torch
from torch.nn import functional as F

from leptonrt.actors.devices import cpu_cores
from leptonrt.actors.heap import keep_heap
from leptonrt.nn.order import epoch_permutation
from leptonrt.broker.runner import JobRunner
from leptonrt.config import TrainJob
from leptonrt.data.loaders import load_dataset
from leptonrt.nn.model import build_mlp
from leptonrt.nn.step import make_optimizer


def bare_loop(x: torch.Tensor, y: torch.Tensor, job: TrainJob, device: torch.device) -> float:
    """Samples/s of the textbook loop over epochs 2..E."""
    model = build_mlp(x.shape[1], list(job.hidden), int(y.max()) + 1, job.seed).to(device)
    opt = make_optimizer(list(model.parameters()), job.optimizer, job.lr, job.momentum, job.weight_decay)
    dtype = {"bf16": torch.bfloat16}.get(job.precision)
    x, y = x.to(device), y.to(device)
    n, b, seconds = x.shape[0], job.batch_size, 0.0
    for epoch in range(job.epochs):
        perm = epoch_permutation(n, job.seed, epoch).to(device)
        t0 = time.perf_counter()
        for start in range(0, n, b):
            idx = perm[start:start + b]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad(set_to_none=False)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch > 0:
            seconds += time.perf_counter() - t0
    return n * (job.epochs - 1) / seconds


def leptonrt_one_actor(job: TrainJob, device: torch.device) -> float:
    gpus, cpu_actors = ("1", 0) if device.type == "cuda" else ("none", 1)
    result = asyncio.run(JobRunner(job, gpus=gpus, cpu_actors=cpu_actors).run())
    return result["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic:60000,784,10")
    p.add_argument("--hidden", default="128")
    p.add_argument("--batch-sizes", default="256,1024")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("overhead.py: --device cuda needs a CUDA device")
    keep_heap()   # glibc's malloc set for the bare loop as for the actor: the allocator is not what is compared
    threads = cpu_cores()
    torch.set_num_threads(threads)          # the single actor gets every core too
    data = load_dataset(args.dataset, seed=0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        job = TrainJob(dataset=args.dataset, hidden=tuple(int(h) for h in args.hidden.split(",")),
                       epochs=args.epochs, batch_size=batch, precision=args.precision, optimizer="adam")
        base, ours = [], []
        for _ in range(args.repeats):
            base.append(bare_loop(x, y, job, device))
            ours.append(leptonrt_one_actor(job, device))
        b, o = statistics.median(base), statistics.median(ours)
        print(json.dumps({"bench": "overhead", "dataset": args.dataset, "hidden": args.hidden, "batch_size": batch,
                          "threads": threads, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          "precision": args.precision, "baseline": "bare PyTorch loop, same Adam",
                          "baseline_samples_per_s": round(b), "leptonrt_samples_per_s": round(o),
                          "ratio": round(o / b, 3), "runs": args.repeats}), flush=True)


if __name__ == "__main__":
    main()
