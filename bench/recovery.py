"""Recovery from a lost actor: leptonrt's regroup-and-replay against restart-all-from-checkpoint.

Both sides train the same job on 2 CPU processes (synthetic:60000,784,10, one hidden layer
of 128, batch 1024, Adam, fp32, 1 thread each). Once step ``--kill-at`` is committed
(reported by every rank), rank 1 gets SIGKILL from this script.

- leptonrt: the broker notices the exit; rank 0 leaves the broken group and re-forms it
  at once on its own, at the newest in-memory snapshot (every 8 steps) at or before the
  first uncommitted step, takes the whole batch and replays the lost steps. Meanwhile the
  broker adopts its warm spare CPU actor as the replacement (a process already started;
  without a spare it starts one, which takes seconds), which rejoins at the next snapshot
  boundary with rank 0's state. Measured from this script's own observations of the
  embedded broker: SIGKILL -> the first step committed after it, and SIGKILL -> the
  replacement back in the group (``kill_to_rejoined_s``).
- restart_all_from_checkpoint (``recovery_baseline.py``): our re-implementation of
  torchrun's default policy — tear every worker down, start all again, load the newest
  checkpoint (every ``--checkpoint-every`` steps), continue. Same measurement.

``steps_lost`` on both sides is (last committed step at the kill + 1) - the step training
resumes at. leptonrt also reports ``replayed_steps``: every step some actor had trained
past the snapshot, committed or not. Rounds alternate the two methods; the summary is the
median of each figure and of the per-round ratio.

    python bench/recovery.py [--rounds 3] [--kill-at 230]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from recovery_baseline import restart_all  # noqa: E402

from leptonrt import Broker, Interrupted, TrainJob  # noqa: E402
from leptonrt.broker.events import Recovered  # noqa: E402

DATASET, HIDDEN, BATCH = "synthetic:60000,784,10", 128, 1024


async def _leptonrt_once(kill_at: int) -> dict:
    job_spec = TrainJob(dataset=DATASET, hidden=(HIDDEN,), batch_size=BATCH, epochs=20, precision="fp32",
                        optimizer="adam", rebalance=False)
    async with Broker(gpus="none", cpu_actors=2) as broker:
        job = await broker.submit(job_spec)
        recovered: list[Recovered] = []

        async def follow() -> None:
            async for event in job.events():
                if isinstance(event, Recovered):
                    recovered.append(event)
        follower = asyncio.create_task(follow())
        while True:   # wait until the kill step is committed
            snap = broker.snapshot()
            if snap.job is not None and snap.job.step > kill_at:
                break
            await asyncio.sleep(0.001)
        committed_at_kill = snap.job.step - 1
        os.kill(snap.actors[1].pid, signal.SIGKILL)
        killed = time.perf_counter()
        while True:   # the first step committed after the regroup
            snap = broker.snapshot()
            if recovered and snap.job is not None and snap.job.step > recovered[0].rewind_step:
                break
            await asyncio.sleep(0.001)
        first_committed = time.perf_counter()
        event = recovered[0]
        while not any(e.joined for e in recovered):   # the replacement back in the group
            await asyncio.sleep(0.001)
        rejoined = time.perf_counter()
        await broker.drain()   # stop the job here: the rest would measure nothing
        try:
            await job.result()
        except Interrupted:
            pass
        follower.cancel()
        return {"method": "leptonrt_regroup_and_replay", "kill_to_first_committed_step_s": first_committed - killed,
                "kill_to_rejoined_s": rejoined - killed, "steps_lost": committed_at_kill + 1 - event.rewind_step,
                "replayed_steps": event.replayed_steps, "kill_at_step": kill_at, "resumed_from_step": event.rewind_step,
                "snapshot_every": 8}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kill-at", type=int, default=230, help="SIGKILL once this step is committed")
    p.add_argument("--checkpoint-every", type=int, default=50, help="the baseline's checkpoint interval")
    args = p.parse_args()
    rows = []
    for r in range(args.rounds):
        ours = asyncio.run(_leptonrt_once(args.kill_at))
        base = restart_all(dataset=DATASET, hidden=HIDDEN, batch_size=BATCH, kill_at_step=args.kill_at,
                           total_steps=args.kill_at + 150, checkpoint_every=args.checkpoint_every)
        for result in (ours, base):
            print(json.dumps({"bench": "recovery", "round": r, "run": result["method"], **result}), flush=True)
        rows.append((ours, base))

    def med(values):
        return round(statistics.median(values), 3)
    print(json.dumps({
        "bench": "recovery", "run": "summary", "rounds": args.rounds, "statistic": "median over rounds",
        "leptonrt_kill_to_first_committed_step_s": med(o["kill_to_first_committed_step_s"] for o, _ in rows),
        "restart_all_kill_to_first_committed_step_s": med(b["kill_to_first_committed_step_s"] for _, b in rows),
        "restart_all_over_leptonrt_time": med(b["kill_to_first_committed_step_s"] / o["kill_to_first_committed_step_s"]
                                              for o, b in rows),
        "leptonrt_kill_to_rejoined_s": med(o["kill_to_rejoined_s"] for o, _ in rows),
        "leptonrt_steps_lost": med(o["steps_lost"] for o, _ in rows),
        "restart_all_steps_lost": med(b["steps_lost"] for _, b in rows),
    }), flush=True)


if __name__ == "__main__":
    main()
