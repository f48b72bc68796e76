"""One leptonrt actor against a bare PyTorch loop, in the same invocation.

Both train the same MLP on the same in-memory data with the same batch size, precision,
optimizer implementation and thread count; both are timed over the training steps of
epochs 2..E (epoch 1 pays for warm-up), evaluation excluded. Runs alternate
(baseline, leptonrt, baseline, leptonrt, ...) and each side keeps its median, so a
noisy neighbour hurts both alike. Prints one JSON line per batch size.

    python bench/overhead.py [--dataset synthetic:60000,784,10] [--batch-sizes 256,1024] [--repeats 3]
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
from leptonrt.broker.plan import epoch_permutation
from leptonrt.broker.server import JobRunner
from leptonrt.config import TrainJob
from leptonrt.data.loaders import load_dataset
from leptonrt.nn.model import build_mlp
from leptonrt.nn.step import make_optimizer


def bare_loop(x: torch.Tensor, y: torch.Tensor, job: TrainJob) -> float:
    """Samples/s of the textbook loop over epochs 2..E."""
    model = build_mlp(x.shape[1], list(job.hidden), int(y.max()) + 1, job.seed)
    opt = make_optimizer(list(model.parameters()), job.optimizer, job.lr, job.momentum, job.weight_decay)
    n, b, seconds = x.shape[0], job.batch_size, 0.0
    for epoch in range(job.epochs):
        perm = epoch_permutation(n, job.seed, epoch)
        t0 = time.perf_counter()
        for start in range(0, n, b):
            idx = perm[start:start + b]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        if epoch > 0:
            seconds += time.perf_counter() - t0
    return n * (job.epochs - 1) / seconds


def leptonrt_one_actor(job: TrainJob) -> float:
    result = asyncio.run(JobRunner(job, gpus="none", cpu_actors=1).run())
    return result["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="synthetic:60000,784,10")
    p.add_argument("--hidden", default="128")
    p.add_argument("--batch-sizes", default="256,1024")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    threads = cpu_cores()
    torch.set_num_threads(threads)          # the single actor gets every core too
    data = load_dataset(args.dataset, seed=0)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        job = TrainJob(dataset=args.dataset, hidden=tuple(int(h) for h in args.hidden.split(",")),
                       epochs=args.epochs, batch_size=batch, precision="fp32", optimizer="adam")
        base, ours = [], []
        for _ in range(args.repeats):
            base.append(bare_loop(x, y, job))
            ours.append(leptonrt_one_actor(job))
        b, o = statistics.median(base), statistics.median(ours)
        print(json.dumps({"bench": "overhead", "dataset": args.dataset, "hidden": args.hidden, "batch_size": batch,
                          "threads": threads, "precision": "fp32", "baseline": "bare PyTorch loop, same fused Adam",
                          "baseline_samples_per_s": round(b), "leptonrt_samples_per_s": round(o),
                          "ratio": round(o / b, 3), "runs": args.repeats}), flush=True)


if __name__ == "__main__":
    main()
