"""Adding a device must never make a job slower: N actors against the best single actor.

For each job, in one invocation and alternated round by round (so that this shared
machine's slow spells fall on every variant alike), runs ``leptonrt train`` as a user would:

- ``single``: one CPU actor alone (the baseline);
- ``planned``: N CPU actors, rebalancing on (the planner decides shares and membership);
- ``even``: N CPU actors at a fixed even split (what the planner must at least match).

Jobs: the issue's two where the collective costs more than a second actor saves
(784-128-10 at batch 64 on synthetic data, digits 64-32-10 at batch 32), the README's main
job (digits, batch 64), and a batch-1024 job with rank 1 SIMULATED 2x slower, where both
actors are worth having and the planner must keep them.

Each line: the job, the medians of samples/s (as ``--json-out`` reports it: epochs 2
onwards, so what the planner learns and regroups in the first epoch is not counted, and
what it does later is), the per-round ratios
``planned/single`` and ``planned/even`` with their medians, and how many rounds ended with
one actor on standby. Targets: ``planned/single >= 0.95`` on the first three jobs,
``planned/even >= 1.0`` on the README's job, and no standby on the straggler job.

Single runs here swing by 2x, so each median ratio comes with a distribution-free interval
(order statistics: at least 95% coverage, the exact figure beside it; with 5 rounds or fewer
it is the whole range) and a verdict: ``met`` when all of the interval reaches the target,
``not met`` when none of it does, ``undetermined`` when the noise leaves both open (run
more rounds).

    python bench/membership.py [--rounds 3] [--actors 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

JOBS = {
    "mlp784_b64": ["--dataset", "synthetic:20000,784,10", "--hidden", "128", "--batch-size", "64", "--epochs", "10"],
    "digits_h32_b32": ["--dataset", "digits", "--hidden", "32", "--batch-size", "32", "--epochs", "150"],
    "readme_digits_b64": ["--dataset", "digits", "--batch-size", "64", "--epochs", "30"],
    "straggler_b1024_simulated": ["--dataset", "synthetic:40000,784,10", "--hidden", "256", "--batch-size", "1024",
                                  "--epochs", "3", "--simulate-slowdown", "1=2"],
}


TARGETS = {"single": 0.95, "even": 1.0}


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(low, high, coverage): order statistics bracketing the median with at least ``level``
    coverage (the whole range when no narrower pair reaches it), whatever the distribution."""
    xs, n = sorted(values), len(values)
    tail = lambda k: sum(math.comb(n, i) for i in range(k)) / 2 ** n   # P(Binomial(n, 1/2) < k)
    k = 1
    while k + 1 <= n // 2 and 1 - 2 * tail(k + 1) >= level:
        k += 1
    return xs[k - 1], xs[n - k], 1 - 2 * tail(k)


def verdict(low: float, high: float, target: float) -> str:
    return "met" if low >= target else "not met" if high < target else "undetermined"


def run(job: list[str], actors: int, extra: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "leptonrt", "train", *job, "--gpus", "none", "--cpu-actors", str(actors),
           "--quiet", "--json-out", str(out), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--jobs", default=",".join(JOBS), help="comma-separated, of: " + ", ".join(JOBS))
    args = parser.parse_args()
    even = ",".join([f"{1 / args.actors:.6f}"] * args.actors)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        for name in args.jobs.split(","):
            job = JOBS[name]
            slowed = "--simulate-slowdown" in job
            variants = {"planned": (args.actors, []), "even": (args.actors, ["--split", even])}
            if not slowed:   # a SIMULATED slowdown needs a rank 1: alone, the job is another job
                variants = {"single": (1, []), **variants}
            speeds: dict[str, list[float]] = {v: [] for v in variants}
            standby = 0
            for r in range(args.rounds):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for variant in order:
                    actors, extra = variants[variant]
                    result = run(job, actors, extra, out)
                    speeds[variant].append(result["samples_per_s"])
                    if variant == "planned":
                        standby += any(a["standby"] for a in result["actors"])
            line = {"job": name, "actors": args.actors, "rounds": args.rounds, "simulated": slowed,
                    **{f"{v}_samples_per_s": round(statistics.median(s)) for v, s in speeds.items()},
                    "rounds_with_standby": standby}
            for base in ("single", "even"):
                if base in speeds:
                    ratios = [p / b for p, b in zip(speeds["planned"], speeds[base])]
                    line[f"planned_over_{base}"] = [round(x, 3) for x in ratios]
                    line[f"planned_over_{base}_median"] = round(statistics.median(ratios), 3)
                    low, high, coverage = median_interval(ratios)
                    line[f"planned_over_{base}_interval"] = [round(low, 3), round(high, 3), round(coverage, 3)]
                    if name != "straggler_b1024_simulated" and (base == "single" or name == "readme_digits_b64"):
                        line[f"planned_over_{base}_target"] = verdict(low, high, TARGETS[base])
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
