"""The ``leptonrt`` command line: its parsers and ``main``; what each command does is in
``leptonrt.commands``."""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import settings
from .commands import join, keys, serve, train
from .config import OPTIMIZERS, PRECISIONS
from .errors import LeptonError
from .progress import LEVELS, setup_logging


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
    _add_gradient_net(p)
    p = sub.add_parser("join", help="add this host's devices to a running broker (`up --listen tcp://...`)",
                       epilog="example:\n  leptonrt join tcp://head:7420 --server-key head-public.key "
                              "--keys ~/.config/leptonrt/keys --gradient-iface eth1 --gpus all\n\n"
                              "exit codes: 0 stopped (Ctrl-C, SIGTERM), 78 refused (key, settings), "
                              "69 no head answers, or the head was lost or closed")
    p.add_argument("address", metavar="tcp://HEAD:PORT", help="the head's --listen address")
    p.add_argument("--server-key", required=True, metavar="FILE", help="the head's public.key (CURVE)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="this host's key pair; the head must allow its public key (default: ~/.config/leptonrt/keys)")
    p.add_argument("--gpus", default="all", help="all | N | device=0,2 | none")
    p.add_argument("--cpu-actors", type=int, default=None, help="number of CPU actors")
    p.add_argument("--no-pin", action="store_true", help="leave CPU actors to the scheduler")
    p.add_argument("--data", choices=("cache", "stream"), default="cache",
                   help="cache: hold each job's dataset here, filled once; stream: hold only its test split, "
                        "the head sends each step's rows ahead of need (a host that cannot hold the data)")
    _add_gradient_net(p)
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


def _add_gradient_net(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gradient-iface", default=None, metavar="IFACE",
                   help="the private interface gradients between hosts travel on (gloo: unauthenticated, unencrypted)")
    p.add_argument("--trust-network", action="store_true",
                   help="let gradients between hosts travel on the interface of the route to the head, unprotected")


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


def main(argv: list[str] | None = None) -> int:
    try:
        args = settings.parse(_parser(), argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)   # as given: `up --detach` runs it again
        setup_logging(getattr(args, "log_level", "info"))
        commands = {"train": train.run, "up": serve.up, "top": serve.top, "status": serve.status, "jobs": serve.jobs,
                    "stop": serve.stop, "join": join.run, "keys": keys.run, "config": settings.run}
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
