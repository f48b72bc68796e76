"""The ``leptonrt`` command line. uvloop is chosen here, at the program's entry point only."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
from pathlib import Path

from . import keys, settings
from .config import OPTIMIZERS, PRECISIONS, TrainJob, parse_slowdown
from .errors import ConfigError, LeptonError, UsageError
from .progress import LEVELS, Follow, log, setup_logging


class _Help(argparse.RawDescriptionHelpFormatter):
    """Help with each option's default (where it has one worth saying) and the epilog as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, [], argparse.SUPPRESS) \
                and action.option_strings:
            default = ",".join(map(str, action.default)) if isinstance(action.default, tuple) else action.default
            text += f" (default: {default})"
        return text


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--epoch`` is not ``--epochs``), defaults in the help, and a
    suggestion for a mistyped command."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        import difflib
        import re
        if (m := re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)) is not None:
            choices = re.findall(r"'?([\w-]+)'?", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 256,128, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or more positive widths like 256,128, got {text!r}")
    return values


def _size(text: str) -> int:
    """``4G``, ``512M``, ``1000000``: bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = (text[:-1], units[text[-1].upper()]) if text[-1:].upper() in units else (text, 1)
    try:
        value = int(float(number) * unit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4G or 512M, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, got {text!r}")
    return port


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _job_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a job id (a number from 1), got {text!r}")
    return int(text)


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.7,0.3, got {text!r}") from None


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an MLP on a dataset across local actors",
                       epilog="example:\n  leptonrt train --dataset digits --gpus none --cpu-actors 2 --epochs 30 "
                              "--json-out result.json")
    p.add_argument("--dataset", default="digits",
                   help="digits | mnist:DIR | npz:PATH | csv:PATH | parquet:PATH | py:package.module:function "
                        "| synthetic:N,D,C")
    p.add_argument("--label-column", default="label", metavar="NAME",
                   help="the class-id column of a csv: or parquet: table (no effect on other datasets)")
    p.add_argument("--hidden", type=_int_list, default=(128,), help="hidden widths, e.g. 128 or 256,128")
    p.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                   help="your own model: FACTORY(n_features, n_classes) returns a torch.nn.Module mapping a float "
                        "batch (b, n_features) to logits (b, n_classes); importable where the actors run (the "
                        "directory you run from, or PYTHONPATH). Default: the built-in MLP of --hidden")
    p.add_argument("--loss", default=None, metavar="MODULE:FUNCTION",
                   help="your own loss: FUNCTION(logits, targets) returns per-sample losses, shape (b,) "
                        "(default: cross-entropy)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training data")
    p.add_argument("--batch-size", type=int, default=64, help="global batch, split across actors")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0, help="weight decay")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 or fp16 on a GPU, fp32 on CPU")
    p.add_argument("--seed", type=int, default=0, help="seeds the weights, the data order and synthetic data")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share when the data has no test split")
    p.add_argument("--gpus", default="all", help="all | N | device=0,2 | none")
    p.add_argument("--cpu-actors", type=int, default=None, help="number of CPU actors")
    p.add_argument("--no-pin", action="store_true",
                   help="leave CPU actors to the scheduler (default: single-threaded ones each on a core of its own)")
    p.add_argument("--split", type=_float_list, default=None, help="fixed batch shares per actor, e.g. 0.7,0.3 (disables rebalancing)")
    p.add_argument("--rebalance", choices=("on", "off"), default="on", help="let the planner resize shares as it measures actors")
    p.add_argument("--align", type=int, default=8, help="shares move in units of this many rows")
    p.add_argument("--simulate-slowdown", action="append", default=[], metavar="RANK=FACTOR[@FROM-TO]",
                   help="SIMULATE a straggler: that rank waits (FACTOR-1) x its compute time each step (tests, benchmarks)")
    p.add_argument("--save", default=None, help="write the final weights here (safetensors)")
    p.add_argument("--json-out", default=None, help="write the final result here (JSON)")
    p.add_argument("--hang-timeout", type=float, default=3.0, metavar="SECONDS",
                   help="take a running actor that sends nothing for this long for hung (default 3; "
                        "stretched to 3 steps when a step takes longer)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--log-level", choices=LEVELS, default="info",
                   help="notes on stderr from this level up (warning: only problems)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="replace a lost actor at most this many times within --restart-window (then exit 70)")
    p.add_argument("--restart-window", type=float, default=60.0, metavar="SECONDS", help="the window --max-restarts counts in")
    p.add_argument("--checkpoint-dir", default=None, help="write checkpoints here (safetensors, atomic)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS", help="steps between checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --checkpoint-dir")
    _add_client_keys(p)
    p.add_argument("--connect", default=None, metavar="ADDR",
                   help="submit to the broker at ADDR (default: the one `leptonrt up` serves, if any; else run here)")


def _add_service(sub) -> None:
    p = sub.add_parser("up", help="start the broker and one actor per device, and serve jobs until stopped",
                       epilog="examples:\n  leptonrt up --gpus all\n  leptonrt up --detach\n"
                              "  leptonrt up --listen tcp://0.0.0.0:7420 --keys ~/.config/leptonrt/keys")
    p.add_argument("--gpus", default="all", help="all | N | device=0,2 | none")
    p.add_argument("--cpu-actors", type=int, default=None, help="number of CPU actors")
    p.add_argument("--no-pin", action="store_true",
                   help="leave CPU actors to the scheduler (default: single-threaded ones each on a core of its own)")
    p.add_argument("--listen", default=None, metavar="ADDR",
                   help="ipc://PATH or tcp://HOST:PORT (default: ipc:// in your private runtime directory)")
    p.add_argument("--no-tui", action="store_true",
                   help="print a plain status line every few seconds instead of the live view (in which e hides "
                        "or shows the event log; q stops nothing: Ctrl-C stops the broker)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (output to broker.log in the private runtime directory); "
                        "return once it answers")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="this broker's key pair and allowed keys, for a tcp:// --listen (`leptonrt keys init`)")
    p.add_argument("--cache-bytes", type=_size, default=None, metavar="N",
                   help="shared memory the dataset cache may hold, e.g. 4G (default: half the free memory)")
    p.add_argument("--checkpoint-root", default=None, metavar="DIR",
                   help="keep clients' checkpoints under DIR (a client names one: --checkpoint-dir NAME); "
                        "without it, jobs with checkpoints are refused")
    p.add_argument("--log-level", choices=LEVELS, default="info", help="notes on stderr from this level up")
    p.add_argument("--allow-import", action="append", default=[], metavar="MODULE",
                   help="let jobs run code from MODULE and its submodules (--dataset py:MODULE:function, "
                        "--model, --loss); repeatable (default: none)")
    p.add_argument("--metrics-port", type=_port, default=None, metavar="PORT",
                   help="serve Prometheus metrics over HTTP on PORT (unauthenticated: see --metrics-host)")
    p.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                   help="the address the metrics listen on; beyond loopback, anyone who can reach it reads them")
    p = sub.add_parser("top", help="show the live view of a running broker",
                       epilog="keys: q quits, e hides or shows the event log\nexample:\n  leptonrt top")
    p.add_argument("--connect", default=None, metavar="ADDR")
    _add_client_keys(p)
    p.add_argument("--no-tui", action="store_true", help="plain status lines instead of the live view")
    p = sub.add_parser("status", help="print one snapshot of a running broker and exit",
                       epilog="example:\n  leptonrt status --json")
    p.add_argument("--connect", default=None, metavar="ADDR")
    _add_client_keys(p)
    p.add_argument("--json", action="store_true", help="the snapshot as JSON (with --watch, one a line)")
    p.add_argument("--watch", type=_positive_seconds, default=None, metavar="N",
                   help="print it again every N seconds, until Ctrl-C")
    p = sub.add_parser("jobs", help="list a running broker's jobs, or cancel one",
                       epilog="examples:\n  leptonrt jobs\n  leptonrt jobs cancel 3\n\n"
                              "the cancelled job's client exits 3; an unknown or ended job: 78")
    p.add_argument("action", nargs="?", choices=("cancel",), help="cancel job ID: a queued one at once, the "
                                                                  "running one at its next step boundary")
    p.add_argument("job_id", nargs="?", type=_job_id, metavar="ID", help="the job's id, as the list shows it")
    p.add_argument("--json", action="store_true", help="the list as JSON")
    p.add_argument("--connect", default=None, metavar="ADDR")
    _add_client_keys(p)
    p = sub.add_parser("stop", help="stop a running broker cleanly and wait until it is gone",
                       epilog="example:\n  leptonrt stop\n\nexit codes: 0 stopped, 69 no broker is answering")
    p.add_argument("--connect", default=None, metavar="ADDR")
    _add_client_keys(p)


def _add_client_keys(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server-key", default=None, metavar="FILE",
                   help="the broker's public.key, for a tcp:// broker (CURVE)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="this user's key pair, for a tcp:// broker (default: ~/.config/leptonrt/keys)")


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="leptonrt", description="synchronous data-parallel training across every device you have",
                     epilog="example:\n  leptonrt train --dataset digits --gpus none --cpu-actors 2 --epochs 30")
    parser.add_argument("--version", action="version", version=f"leptonrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_service(sub)
    keys.add_parser(sub)
    settings.add_parser(sub)   # last: every option of train and up is a setting
    return parser


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


def _cmd_train(args: argparse.Namespace) -> int:
    from .broker.address import check_address, default_address, ipc_path
    address = args.connect
    if address is not None:
        check_address(address)
    else:   # a running `leptonrt up` takes the job; otherwise it runs here
        default = default_address()
        if ipc_path(default).exists():
            from .broker.service import probe
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
          f"wall {result['wall_s']:.1f}s  samples/s {result['samples_per_s'] or 0:,.0f}{label}")
    return 0


def _train_here(args: argparse.Namespace, job: TrainJob) -> int:
    """Run the job on actors of this process. The actors' fork server starts first, so that
    its seconds of imports overlap this process's own (which load no PyTorch)."""
    from .actors.devices import describe, select
    from .actors.spawn import Supervisor
    selection = select(args.gpus, args.cpu_actors)   # asks PyTorch only if a GPU may be picked
    if sys.stderr.isatty():   # for the person waiting; in a pipe an error stays the only line
        print(f"leptonrt: loading {job.dataset}; starting {describe(selection)}", file=sys.stderr, flush=True)
    supervisor = Supervisor.in_new_run_dir()
    label = describe_slowdowns(job)
    follow = _follow(args, label)
    try:
        from .broker.runner import JobRunner
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
    from .nn import checkpoint
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
    from .client import connect
    label = describe_slowdowns(job)
    follow = _follow(args, label)

    async def submit_and_follow() -> dict:
        async with connect(address, server_key=args.server_key, keys=args.keys) as broker:
            remote = await broker.submit(job)
            log.info(f"job {remote.id} submitted to {address}" + (f" ({remote.ahead} ahead of it)" if remote.ahead
                                                                   else ""))
            try:
                with follow:
                    async for event in remote.events():
                        follow(event)
                return await remote.result()
            except asyncio.CancelledError:
                log.warning(f"detached; job {remote.id} goes on at {address}")
                raise
    return _report(args, run_async(submit_and_follow()), label)


def _cmd_up(args: argparse.Namespace) -> int:
    from .broker.address import check_listen, default_address
    # the private ipc socket is always served: local commands need no keys
    addresses = [default_address()]
    if args.listen:
        check_listen(args.listen)
        addresses = [args.listen] if args.listen.startswith("ipc://") else addresses + [args.listen]
    if any(a.startswith("tcp://") for a in addresses):
        from .keys import load_keypair
        load_keypair(args.keys)   # no keys, or unsafe ones: refused now, before any actor starts
    _refuse_if_served(addresses)
    if args.detach:
        from .broker.service import probe
        from .daemon import detach
        argv = [a for a in args.argv if a != "--detach"]
        return detach(argv, addresses[0], lambda address: run_async(probe(address)))
    return run_async(_up(args, addresses))


def _refuse_if_served(addresses: list[str]) -> None:
    """One broker per socket: a second `up` is refused before it starts anything."""
    from .broker.address import ipc_path
    from .broker.service import probe
    for address in addresses:
        path = ipc_path(address)
        if path is not None and path.exists() and run_async(probe(address)) is not None:
            raise ConfigError(f"a leptonrt broker is already serving at {address} (`leptonrt stop` stops it)")


async def _up(args: argparse.Namespace, addresses: list[str]) -> int:
    import signal

    from .broker.embedded import Broker
    from .broker.service import Service
    from .view import watch
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    stop, seen, broken = asyncio.Event(), [], []
    broker = Broker(args.gpus, args.cpu_actors, address=" ".join(addresses), pin=not args.no_pin,
                    cache_bytes=args.cache_bytes, allow_imports=args.allow_import)
    for note in broker.notes:
        print(f"leptonrt: {note}", file=sys.stderr)
    metrics = _serve_metrics(args, broker) if args.metrics_port is not None else None   # a port in use: 78, now

    def on_broken(exc: BaseException) -> None:   # a bug of ours: stop loudly rather than serve half-alive
        broken.append(exc)
        stop.set()

    def on_signal(code: int) -> None:
        seen.append(code)
        if len(seen) == 1:   # the first: take no more jobs, end the running one at a step boundary
            broker.stop_accepting()
            stop.set()
        else:                # the second: now
            main_task.cancel()

    def on_stop() -> None:   # `leptonrt stop`: as a first Ctrl-C, and the exit is a clean one
        if not seen:
            seen.append(0)
            broker.stop_accepting()
            stop.set()

    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        loop.add_signal_handler(signum, on_signal, code)
    try:
        broker.on_broken = on_broken
        async with broker, Service(broker, *addresses, keys=args.keys, checkpoint_root=args.checkpoint_root,
                                   on_broken=on_broken, on_stop=on_stop):
            print(f"leptonrt: serving at {' and '.join(addresses)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            # the view is the broker's own: q does not stop it (a stray key must not end others' jobs)
            view = asyncio.create_task(watch(broker.snapshot, stop=stop, plain=True if args.no_tui else None,
                                             can_quit=False))
            try:
                await stop.wait()
                if broken:
                    print(f"leptonrt: internal error, stopping: {broken[0]}", file=sys.stderr, flush=True)
                    return 70
                asked = seen[0] == 0
                print("leptonrt: stopping, as a client asked (`leptonrt stop`)" if asked
                      else "leptonrt: stopping (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
                await broker.drain(reason="the broker closed (`leptonrt stop`)" if asked else None)
            finally:
                stop.set()
                await asyncio.wait({view})
    except asyncio.CancelledError:
        pass
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if metrics is not None:
            metrics.close()
    return seen[0] if seen else 0


def _serve_metrics(args: argparse.Namespace, broker):
    """The metrics endpoint of `up --metrics-port`, serving snapshots taken on this loop."""
    from .broker.metrics import MetricsServer, is_loopback, on_loop
    server = MetricsServer(on_loop(asyncio.get_running_loop(), broker.snapshot), args.metrics_host,
                           args.metrics_port).start()
    if not is_loopback(args.metrics_host):
        print(f"leptonrt: warning: the metrics on {args.metrics_host}:{args.metrics_port} are unauthenticated: "
              "anyone who can reach that address can read them", file=sys.stderr)
    host = f"[{args.metrics_host}]" if ":" in args.metrics_host else args.metrics_host
    print(f"leptonrt: metrics at http://{host}:{args.metrics_port}/metrics", file=sys.stderr)
    return server


def _cmd_top(args: argparse.Namespace) -> int:
    return run_async(_top(args))


async def _top(args: argparse.Namespace) -> int:
    import signal

    from .client import connect
    from .view import watch
    loop, stop, seen = asyncio.get_running_loop(), asyncio.Event(), []
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        loop.add_signal_handler(signum, lambda c=code: (seen.append(c), stop.set()))
    try:
        async with connect(args.connect, server_key=args.server_key, keys=args.keys) as broker:
            await watch(broker.status, stop=stop, plain=True if args.no_tui else None)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return seen[0] if seen else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .client import connect
    if args.watch is not None:
        from . import control
        return run_async(control.watch_status(args))

    async def once():
        async with connect(args.connect, server_key=args.server_key, keys=args.keys) as broker:
            return await broker.status()
    snapshot = run_async(once())
    if args.json:
        print(json.dumps(snapshot.to_dict(), indent=2))
    else:
        from rich.console import Console

        from .view import render
        Console().print(render(snapshot))
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    if args.action == "cancel" and args.job_id is None:
        raise UsageError("jobs cancel: give the id of the job to cancel (`leptonrt jobs` lists them)")
    from . import control
    return run_async(control.jobs(args))


def _cmd_stop(args: argparse.Namespace) -> int:
    from . import control
    return run_async(control.stop(args))


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
    try:
        args = settings.parse(_parser(), argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)   # as given: `up --detach` runs it again
        setup_logging(getattr(args, "log_level", "info"))
        commands = {"train": _cmd_train, "up": _cmd_up, "top": _cmd_top, "status": _cmd_status, "jobs": _cmd_jobs,
                    "stop": _cmd_stop, "keys": keys.run, "config": settings.run}
        return commands[args.command](args)
    except LeptonError as exc:
        print(f"leptonrt: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("leptonrt: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:   # `leptonrt status --json | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
