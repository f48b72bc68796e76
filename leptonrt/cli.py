"""The ``leptonrt`` command line. uvloop is chosen here, at the program's entry point only."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from .config import OPTIMIZERS, PRECISIONS, TrainJob, parse_slowdown
from .errors import ConfigError, LeptonError, UsageError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {text!r}") from None
    return values


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.7,0.3, got {text!r}") from None


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an MLP on a dataset across local actors")
    p.add_argument("--dataset", default="digits", help="digits | mnist:DIR | npz:PATH | synthetic:N,D,C")
    p.add_argument("--hidden", type=_int_list, default=(128,), help="hidden widths, e.g. 128 or 256,128")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split across actors")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share when the data has no test split")
    p.add_argument("--gpus", default="all", help="all | N | device=0,2 | none")
    p.add_argument("--cpu-actors", type=int, default=None, help="number of CPU actors")
    p.add_argument("--split", type=_float_list, default=None, help="fixed batch shares per actor, e.g. 0.7,0.3 (disables rebalancing)")
    p.add_argument("--rebalance", choices=("on", "off"), default="on", help="let the planner resize shares as it measures actors")
    p.add_argument("--align", type=int, default=8, help="shares move in units of this many rows")
    p.add_argument("--simulate-slowdown", action="append", default=[], metavar="RANK=FACTOR[@FROM-TO]",
                   help="SIMULATE a straggler: that rank waits (FACTOR-1) x its compute time each step (tests, benchmarks)")
    p.add_argument("--save", default=None, help="write the final weights here (safetensors)")
    p.add_argument("--json-out", default=None, help="write the final result here (JSON)")
    p.add_argument("--hang-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="fail the job when a running actor sends nothing for this long")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leptonrt", description="exact synchronous data-parallel training across every device you have")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    return parser


def _check_writable(path: str | None, what: str) -> None:
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"{what} {path}: directory {parent} does not exist or is not writable")


def _job_from(args: argparse.Namespace) -> TrainJob:
    _check_writable(args.save, "--save")
    _check_writable(args.json_out, "--json-out")
    return TrainJob(dataset=args.dataset, hidden=args.hidden, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                    precision=args.precision, seed=args.seed, test_fraction=args.test_fraction,
                    split=args.split, rebalance=args.rebalance == "on", align=args.align,
                    slowdowns=tuple(parse_slowdown(t) for t in args.simulate_slowdown),
                    save=os.path.abspath(args.save) if args.save else None)


def format_epoch(event, simulated: str = "") -> str:
    """One progress line per epoch (``simulated`` labels an injected slowdown)."""
    shares = "/".join(f"{s:.2f}" for s in event.shares)
    width = len(str(event.epochs))
    return (f"epoch {event.epoch:>{width}}/{event.epochs}  train_loss {event.train_loss:.4f}  "
            f"test_loss {event.test_loss:.4f}  test_acc {event.test_accuracy:.4f}  "
            f"samples/s {event.samples_per_s:,.0f}  shares {shares}{simulated}")


def describe_slowdowns(job: TrainJob) -> str:
    """`` [SIMULATED slowdown: rank 1 x2.0 from step 100]`` or empty."""
    if not job.slowdowns:
        return ""
    parts = [f"rank {r} x{f:g}" + (f" steps {a}-{b}" if b else f" from step {a}" if a else "")
             for r, f, a, b in job.slowdowns]
    return f"  [SIMULATED slowdown: {', '.join(parts)}]"


def _write_json(path: str, result: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def _cmd_train(args: argparse.Namespace) -> int:
    from .broker.run import EpochEvent
    from .broker.server import JobRunner
    if args.cpu_actors is not None and args.cpu_actors < 0:
        raise UsageError(f"--cpu-actors must be 0 or more, got {args.cpu_actors}")
    job = _job_from(args)
    label = describe_slowdowns(job)

    def on_event(event) -> None:
        if isinstance(event, EpochEvent) and not args.quiet:
            print(format_epoch(event, label), flush=True)

    if not args.hang_timeout > 0:
        raise ConfigError(f"--hang-timeout must be positive, got {args.hang_timeout}")
    runner = JobRunner(job, gpus=args.gpus, cpu_actors=args.cpu_actors, on_event=on_event,
                       hang_timeout_s=args.hang_timeout)
    for note in runner.notes:
        print(f"leptonrt: {note}", file=sys.stderr)
    result = run_async(runner.run())
    if args.json_out:
        _write_json(args.json_out, result)
    print(f"done: test_acc {result['test_accuracy']:.4f}  steps {result['steps']}  rebalances {result['rebalances']}  "
          f"wall {result['wall_s']:.1f}s  samples/s {result['samples_per_s'] or 0:,.0f}{label}")
    return 0


def run_async(coro):
    """Run ``coro`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"train": _cmd_train}[args.command](args)
    except LeptonError as exc:
        print(f"leptonrt: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("leptonrt: interrupted", file=sys.stderr)
        return 130
