"""The ceiling of issue 3's straggler ratio on this machine: a bare PyTorch + gloo loop.

No leptonrt here. Two gloo processes train the benchmark's MLP (synthetic 784 features,
hidden 128, batch 1024, Adam, one thread each); rank 1 is SIMULATED 2x slower the same way
as in bench/straggler.py (it sleeps its own compute time before the all-reduce). The loop
runs once with the even split (what DDP does) and once with a given uneven split (what a
perfect planner would pick), interleaved over rounds. The ratio of the two is the most any
rebalancer can win here: the all-reduce and the optimizer step cost the same either way.
Each split runs with both ways of summing gradients: gloo's all-reduce (what DDP uses) and
the point-to-point exchange leptonrt uses for small CPU groups.

    python bench/split_ceiling.py [--split 752,272] [--steps 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import time

import torch


def _exchange(dist, flat: torch.Tensor, peer_buf: torch.Tensor, rank: int) -> None:
    ops = [dist.P2POp(dist.isend, flat, 1 - rank), dist.P2POp(dist.irecv, peer_buf, 1 - rank)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    flat.add_(peer_buf)


def _worker(rank: int, port: int, rows_by_rank: list[int], steps: int, sync: str, out) -> None:
    import torch.distributed as dist

    from leptonrt.nn.model import build_mlp
    from leptonrt.nn.step import FusedStep

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(60000, 784, generator=gen), torch.randint(0, 10, (60000,), generator=gen)
    step = FusedStep(build_mlp(784, [128], 10, 0), optimizer="adam", lr=1e-3, allreduce=dist.all_reduce)
    if sync == "exchange":
        peer_buf = torch.empty_like(step.flat)
        step.allreduce = lambda flat: _exchange(dist, flat, peer_buf, rank)
    rows, warm = rows_by_rank[rank], steps // 5
    for i in range(steps):
        if i == warm:
            t0 = time.perf_counter()
        idx = torch.randint(0, x.shape[0], (rows,), generator=gen)
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        started = time.perf_counter()
        step.compute(xb, yb, sum(rows_by_rank))
        if rank == 1:
            time.sleep(time.perf_counter() - started)   # SIMULATED 2x straggler
        step.apply()
    if rank == 0:
        out.put((steps - warm) * sum(rows_by_rank) / (time.perf_counter() - t0))
    dist.destroy_process_group()


def run(rows_by_rank: list[int], steps: int, sync: str) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, port, rows_by_rank, steps, sync, out)) for r in range(2)]
    for p in procs:
        p.start()
    samples_per_s = out.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    return samples_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="752,272", help="rows of rank 0 and rank 1 for the uneven run")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    uneven = [int(v) for v in args.split.split(",")]
    even = [sum(uneven) // 2, sum(uneven) - sum(uneven) // 2]
    ratios: dict[str, list[float]] = {"allreduce": [], "exchange": []}
    for r in range(args.rounds):
        for sync in ratios:
            a, b = run(even, args.steps, sync), run(uneven, args.steps, sync)
            ratios[sync].append(b / a)
            for name, split, sps in (("even_split", even, a), ("uneven_split", uneven, b)):
                print(json.dumps({"bench": "split_ceiling", "run": f"bare_gloo_{sync}_{name}", "round": r,
                                  "simulated": True, "factor": 2.0, "split": split, "samples_per_s": round(sps)}),
                      flush=True)
    print(json.dumps({"bench": "split_ceiling", "run": "summary", "rounds": args.rounds,
                      "statistic": "median over rounds of uneven/even",
                      **{f"{sync}_uneven_over_even": round(statistics.median(v), 3) for sync, v in ratios.items()}}),
          flush=True)


if __name__ == "__main__":
    main()
