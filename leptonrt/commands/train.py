"""``leptonrt train``: the job the command line asks for, run here on actors of this
process, or submitted to the broker that ``leptonrt up`` serves, and followed to its end."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from ..config import TrainJob, parse_slowdown
from ..errors import ConfigError, LeptonError
from ..progress import Follow, log
from . import run_async


def _check_writable(path: str | None, what: str) -> None:
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ConfigError(f"{what} {path}: directory {parent} does not exist or is not writable")


def _job_from(args: argparse.Namespace, remote: bool) -> TrainJob:
    """The job the command line asks for. A running broker keeps checkpoints under its own
    --checkpoint-root, so there --checkpoint-dir is a name; here it is a directory."""
    _check_writable(args.save, "--save")
    _check_writable(args.json_out, "--json-out")
    checkpoints = args.checkpoint_dir
    if checkpoints and not remote:
        checkpoints = os.path.abspath(checkpoints)
    return TrainJob(dataset=args.dataset, hidden=args.hidden, model=args.model, loss=args.loss,
                    epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
                    precision=args.precision, seed=args.seed, test_fraction=args.test_fraction,
                    label_column=args.label_column,
                    split=args.split, rebalance=args.rebalance == "on", align=args.align,
                    slowdowns=tuple(parse_slowdown(t) for t in args.simulate_slowdown),
                    save=os.path.abspath(args.save) if args.save else None, checkpoint_dir=checkpoints,
                    checkpoint_every=args.checkpoint_every, resume=args.resume,
                    max_restarts=args.max_restarts, restart_window_s=args.restart_window,
                    hang_timeout_s=args.hang_timeout)


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
    parts = [f"rank {s.rank} x{s.factor:g}" + (f" steps {s.from_step}-{s.to_step}" if s.to_step
                                               else f" from step {s.from_step}" if s.from_step else "")
             for s in job.slowdowns]
    return f"  [SIMULATED slowdown: {', '.join(parts)}]"


def _write_json(path: str, result: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    from ..broker.address import check_address, default_address, ipc_path
    address = args.connect
    if address is not None:
        check_address(address)
    else:   # a running `leptonrt up` takes the job; otherwise it runs here
        default = default_address()
        if ipc_path(default).exists():
            from ..broker.probe import probe
            if run_async(probe(default)) is not None:
                address = default
    job = _job_from(args, remote=address is not None)
    if address is not None:
        _refuse_local_options(args, address)
        return _train_remote(args, job, address)
    return _train_here(args, job)


_BROKERS_OWN = ("gpus", "cpu-actors", "no-pin")   # chosen by `leptonrt up`, for every job it runs


def _refuse_local_options(args: argparse.Namespace, address: str) -> None:
    """A running broker trains on the actors it started: options that choose devices for this
    job cannot be honoured there, so one given on this command line is refused, not ignored.
    (The same settings from a file or the environment are shared with `up` and are left be.)"""
    resolved = getattr(args, "_resolved", None)
    given = [s.key for s in resolved.settings if s.key in _BROKERS_OWN and s.source.kind == "command line"] \
        if resolved is not None else []
    if given:
        options = ", ".join(f"--{key}" for key in given)
        raise ConfigError(f"{options}: the broker at {address} trains on the actors it started (`leptonrt up "
                          f"--gpus/--cpu-actors` chose them); leave {options} out, or stop the broker "
                          f"(`leptonrt stop`) to train here")


def _follow(args: argparse.Namespace, label: str) -> Follow:
    """Epoch lines (unless --quiet), and on a terminal a progress bar within the epoch."""
    return Follow(lambda event: format_epoch(event, label), quiet=args.quiet)


def _report(args: argparse.Namespace, result: dict, label: str) -> int:
    if args.json_out:
        _write_json(args.json_out, result)
    print(f"done: test_acc {result['test_accuracy']:.4f}  steps {result['steps']}  rebalances {result['rebalances']}  "
          f"regroups {result.get('regroups', 0)}  wall {result['wall_s']:.1f}s  samples/s {result['samples_per_s'] or 0:,.0f}{label}")
    return 0


def _train_here(args: argparse.Namespace, job: TrainJob) -> int:
    """Run the job on actors of this process. The actors' fork server starts first, so that
    its seconds of imports overlap this process's own (which load no PyTorch)."""
    from ..actors.devices import describe, select
    from ..actors.spawn import Supervisor
    selection = select(args.gpus, args.cpu_actors)   # asks PyTorch only if a GPU may be picked
    if sys.stderr.isatty():   # for the person waiting; in a pipe an error stays the only line
        print(f"leptonrt: loading {job.dataset}; starting {describe(selection)}", file=sys.stderr, flush=True)
    supervisor = Supervisor.in_new_run_dir(gpus=selection.any_gpu)
    label = describe_slowdowns(job)
    follow = _follow(args, label)
    try:
        from ..broker.runner import JobRunner
        runner = JobRunner(job, gpus=args.gpus, cpu_actors=args.cpu_actors, on_event=follow, pin=not args.no_pin,
                           supervisor=supervisor)
    except BaseException:
        supervisor.close()
        shutil.rmtree(supervisor.run_dir, ignore_errors=True)
        raise
    for note in runner.notes:
        log.info(note)
    shown = len(runner.notes)
    try:
        with follow:
            result = run_async(_stoppable(runner.run()))
    except _Stopped as stopped:
        log.warning(stopped.how)
        if job.checkpoint_dir is not None:
            log.warning(f"resume with the same command and --resume (checkpoints in {job.checkpoint_dir}"
                        f"{_newest(job.checkpoint_dir)})")
        return stopped.code
    finally:
        for note in runner.notes[shown:]:   # learnt while starting, e.g. which checkpoint was resumed
            log.info(note)
    return _report(args, result, label)


def _newest(directory: str) -> str:
    """``; the newest: PATH`` for the newest complete checkpoint in ``directory``, or nothing."""
    from ..nn import checkpoint
    try:
        found = checkpoint.latest(directory)
    except LeptonError:
        return ""
    return f"; the newest: {found.path}, step {found.step}" if found is not None else "; none written yet"


class _Stopped(Exception):
    def __init__(self, how: str, code: int) -> None:
        super().__init__(how)
        self.how, self.code = how, code


async def _stoppable(coro):
    """Await ``coro``; SIGINT (Ctrl-C) or SIGTERM cancel it, so that the job's actors, sockets
    and shared memory are cleaned up before the process ends with 130 or 143. A SIGINT that
    the process was started ignoring (a shell's background job) stays ignored."""
    import signal
    loop, task, seen = asyncio.get_running_loop(), asyncio.current_task(), []

    def on_signal(how: str, code: int) -> None:
        seen.append((how, code))
        task.cancel()   # a second signal cancels whatever the cleanup still awaits

    signals = [(signal.SIGTERM, "terminated", 143)]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append((signal.SIGINT, "interrupted", 130))
    for signum, how, code in signals:
        loop.add_signal_handler(signum, on_signal, how, code)
    try:
        return await coro
    except asyncio.CancelledError:
        if not seen:
            raise
        raise _Stopped(*seen[0]) from None
    finally:
        for signum, _how, _code in signals:
            loop.remove_signal_handler(signum)


def _train_remote(args: argparse.Namespace, job: TrainJob, address: str) -> int:
    from ..client import connect
    label = describe_slowdowns(job)
    follow = _follow(args, label)

    async def submit_and_follow() -> dict:
        log.info(f"submitting to the broker at {address}")   # what it is doing, before the first round trip
        async with connect(address, server_key=args.server_key, keys=args.keys) as broker:
            remote = await broker.submit(job)
            log.info(f"job {remote.id} submitted" + (f" ({remote.ahead} ahead of it)" if remote.ahead else ""))
            try:
                with follow:
                    async for event in remote.events():
                        follow(event)
                return await remote.result()
            except asyncio.CancelledError:
                log.warning(f"detached; job {remote.id} goes on at {address}")
                raise
    return _report(args, run_async(submit_and_follow()), label)
