"""How long the README job takes to start: actors forked from a warm process against
actors started each with its own interpreter, in the same invocation.

Runs ``leptonrt train --dataset digits --gpus none --cpu-actors 2 --epochs 30 --batch-size
64`` (the README's job) ``--repeats`` times each way, alternating (old, new, old, new, ...)
so that a noisy neighbour hurts both alike. "old" is ``LEPTONRT_SPAWN=popen`` in this tree,
or the tree ``--old-tree`` names (its code on PYTHONPATH, say the main checkout's); "new"
is this tree as it is. Each run's stderr is a pseudo-terminal, as a person's would be.
Prints one JSON line per run, then one with the medians and the ratios new/old:

- ``first_line_s``: launch to the first line printed;
- ``first_epoch_s``: launch to the first epoch line;
- ``exit_s``: launch to exit;
- ``job_wall_s``: the job's own ``wall_s`` (first hello to the end: group and training).

    python bench/startup.py [--repeats 5] [--old-tree /work/main]

``--warm`` compares instead the same job run locally (old) with it submitted to a
``leptonrt up --detach --gpus none --cpu-actors 2`` already running (new: its actors are
warm, so no process starts), in the same invocation.

``--phases`` times, in this process, what the local run does before it trains (each way,
alternating): importing the broker, loading the dataset, actors from spawn to hello, and
from hello to the first epoch (the group forming, plus the first epoch's own steps).
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TREE = Path(__file__).resolve().parent.parent
JOB = ["--dataset", "digits", "--gpus", "none", "--cpu-actors", "2", "--epochs", "30", "--batch-size", "64"]
DEVICE_ARGS = ("--gpus", "none", "--cpu-actors", "2")


def warm_broker(tree: Path, runtime: str) -> None:
    """``leptonrt up --detach`` with the README job's actors, in ``runtime``."""
    env = dict(os.environ, PYTHONPATH=str(tree), LEPTONRT_RUNTIME_DIR=runtime)
    subprocess.run([sys.executable, "-m", "leptonrt", "up", "--detach", *DEVICE_ARGS], env=env, cwd=runtime,
                   check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120)


def stop_broker(tree: Path, runtime: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree), LEPTONRT_RUNTIME_DIR=runtime)
    subprocess.run([sys.executable, "-m", "leptonrt", "stop"], env=env, cwd=runtime, timeout=120,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def run_once(tree: Path, spawn: str, runtime: str | None = None) -> dict:
    """One README job from ``tree``, timed from launch; given the ``runtime`` directory of a
    running ``up``, submitted to it (without the device options, which are ``up``'s)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ, PYTHONPATH=str(tree), LEPTONRT_SPAWN=spawn, LEPTONRT_RUNTIME_DIR=runtime or tmp)
        job = JOB if runtime is None else [a for a in JOB if a not in DEVICE_ARGS]
        primary, secondary = pty.openpty()
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "leptonrt", "train", *job, "--json-out", str(out)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, env=env, cwd=tmp)
        os.close(secondary)
        times = _watch(proc, primary, t0)
        os.close(primary)
        times["exit_s"] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"startup.py: the job failed ({proc.returncode}): {times.pop('text')[-2000:]}")
        times.pop("text")
        times["job_wall_s"] = json.loads(out.read_text())["wall_s"]
    return times


def _watch(proc: subprocess.Popen, tty: int, t0: float) -> dict:
    """When the first line and the first epoch line appeared, reading both outputs to the end."""
    first_line = first_epoch = None
    text, open_fds = "", {proc.stdout.fileno(), tty}
    while open_fds:
        ready, _, _ = select.select(list(open_fds), [], [], 1.0)
        for fd in ready:
            try:
                data = os.read(fd, 65536).decode(errors="replace")
            except OSError:   # the pty's other side closed
                data = ""
            if not data:
                open_fds.discard(fd)
                continue
            now = time.perf_counter() - t0
            first_line = first_line if first_line is not None else now
            text += data
            if first_epoch is None and "epoch " in data and fd == proc.stdout.fileno():
                first_epoch = now
    proc.wait()
    return {"first_line_s": first_line, "first_epoch_s": first_epoch, "text": text}


async def _phases_once() -> dict:
    """The steps of a local run before training, in this process (LEPTONRT_SPAWN as set)."""
    t0 = time.perf_counter()
    from leptonrt.broker.events import EpochEvent
    from leptonrt.broker.pool import ActorPool
    from leptonrt.broker.runner import JobRunner
    from leptonrt.config import TrainJob
    from leptonrt.imports import ANY
    out = {"import_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    pool = ActorPool("none", 2, allow_imports=ANY)
    await pool.start()
    try:
        data = await pool.cache.acquire("digits", seed=0, test_fraction=0.2, label_column="label")
        out["dataset_s"] = time.perf_counter() - t0
        while len(pool.hellos) < pool.world:
            await pool.idle(10)
        out["spawn_to_hello_s"] = time.perf_counter() - t0
        pool.cache.release(data)
        t1, first = time.perf_counter(), []

        def on_event(event) -> None:
            if isinstance(event, EpochEvent) and not first:
                first.append((time.perf_counter() - t1, event.seconds))
        job = TrainJob(dataset="digits", epochs=30, batch_size=64)
        await JobRunner(job, pool=pool, on_event=on_event).run()
        out["hello_to_first_epoch_s"], out["first_epoch_steps_s"] = first[0]
    finally:
        await pool.close()
    return out


def phases(repeats: int) -> None:
    """Each phase's median, each way, from alternating runs in fresh processes."""
    code = ("import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); from startup import _phases_once; "
            "print(json.dumps(asyncio.run(_phases_once())))")
    runs: dict[str, list[dict]] = {"popen": [], "fork": []}
    for _ in range(repeats):
        for spawn in runs:
            env = dict(os.environ, PYTHONPATH=str(TREE), LEPTONRT_SPAWN=spawn)
            done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, check=True,
                                  capture_output=True, text=True, timeout=600)
            runs[spawn].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps({"bench": "startup-phases", "spawn": spawn, **_rounded(runs[spawn][-1])}), flush=True)
    for spawn, values in runs.items():
        medians = {k: statistics.median(v[k] for v in values) for k in values[0]}
        print(json.dumps({"bench": "startup-phases", "spawn": spawn, "median": _rounded(medians),
                          "runs": repeats}), flush=True)


def _rounded(d: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--old-tree", type=Path, default=None,
                   help="run 'old' from this tree (default: this tree with LEPTONRT_SPAWN=popen)")
    p.add_argument("--phases", action="store_true", help="time the phases of start-up instead")
    p.add_argument("--warm", action="store_true", help="local run (old) against a running `up` (new)")
    args = p.parse_args()
    if args.phases:
        phases(args.repeats)
        return
    sides = {"old": (args.old_tree or TREE, "popen" if args.old_tree is None and not args.warm else "fork"),
             "new": (TREE, "fork")}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as runtime:
        if args.warm:
            os.chmod(runtime, 0o700)
            warm_broker(TREE, runtime)
        try:
            for i in range(args.repeats):
                for side, (tree, spawn) in sides.items():
                    runs[side].append(run_once(tree, spawn, runtime if args.warm and side == "new" else None))
                    print(json.dumps({"bench": "startup", "side": side, "round": i, **_rounded(runs[side][-1])}),
                          flush=True)
        finally:
            if args.warm:
                stop_broker(TREE, runtime)
    keys = runs["old"][0].keys()
    medians = {side: {k: statistics.median(r[k] for r in values) for k in keys} for side, values in runs.items()}
    print(json.dumps({"bench": "startup", "job": "leptonrt train " + " ".join(JOB),
                      "old": str(args.old_tree) if args.old_tree else f"{TREE} LEPTONRT_SPAWN=" + sides["old"][1],
                      "new": f"{TREE} (submitted to a running `up`)" if args.warm else str(TREE),
                      "old_median": _rounded(medians["old"]), "new_median": _rounded(medians["new"]),
                      "ratio_new_over_old": _rounded({k: medians["new"][k] / medians["old"][k] for k in keys}),
                      "runs": args.repeats}), flush=True)


if __name__ == "__main__":
    main()
