"""An actor process: says hello, waits for a job, runs it (``loop.JobLoop``), and again,
until its broker lets it go; a failure is reported to the broker, which decides what next."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback

import torch

from ..errors import ConfigError
from ..messages import Adopt, Failure, Hello, Release, Shutdown, Welcome
from ..nn.optim import KINDS, FusedOptimizer
from ..nn.step import make_optimizer
from .group import finish_teardown
from .heap import keep_heap
from .link import Link
from .loop import IDLE_POLL_MS, BrokerGone, JobLoop, _log
from .tether import Tether, parse_args


def _warm_up(device: torch.device) -> None:
    """Probe the fused optimizer kernels once; where one is missing (torch.optim is used then),
    pay torch.optim's one-time import of torch._dynamo (seconds) before saying hello, so a
    job, or a replacement joining a running one, does not wait for it."""
    probe = torch.nn.Parameter(torch.zeros(1, device=device))
    probe.grad = torch.zeros_like(probe)
    for name in KINDS:
        optimizer = make_optimizer([probe], name, 0.0, 0.9, 0.0)
        if not isinstance(optimizer, FusedOptimizer):
            optimizer.step()


def _hello(link: Link, args: argparse.Namespace, device: torch.device) -> None:
    name, memory, bf16 = "cpu", 0, False
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, memory, bf16 = props.name, props.total_memory, torch.cuda.is_bf16_supported()
    link.send(Hello(actor_id=args.actor_id, pid=os.getpid(), device=str(device), device_name=name,
                    threads=args.threads, memory_bytes=memory, bf16=bf16))


def _await_welcome(link: Link, tether: Tether, args: argparse.Namespace, device: torch.device) -> Welcome:
    """Wait, idle, for the next job, for as long as the broker lives. A spare that is
    adopted takes the lost actor's name and says hello as it."""
    while True:
        msg = link.recv(IDLE_POLL_MS)
        if isinstance(msg, Welcome):
            return msg
        if isinstance(msg, Adopt):
            _log(f"{args.actor_id}: adopted as {msg.actor_id}")
            args.actor_id = msg.actor_id
            _hello(link, args, device)
            continue
        if isinstance(msg, Release):   # the job ended before this replacement joined it: back to the pool
            _hello(link, args, device)
            continue
        if isinstance(msg, Shutdown) or tether.cut():
            raise BrokerGone("shut down while idle")


def main(argv: list[str] | None = None, tether: Tether | None = None) -> int:
    """Run an actor until its broker lets it go. ``tether``: whom it dies with (the default:
    the broker that started it, ``--parent-pid``; a forked actor's is the fork server)."""
    args = parse_args(argv)
    tether = tether or Tether(args.parent_pid, args.parent_pid, args.connect)
    tether.hold()   # again: harmless, and main() may be called directly
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the broker decides when we stop
    keep_heap()   # before the first batch: steps reuse their buffers' pages instead of refaulting them
    torch.set_num_threads(max(1, args.threads))
    _log(f"actor {args.actor_id} (pid {os.getpid()}): {args.device}, {torch.get_num_threads()} thread(s), "
         f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}, "
         f"incarnation {os.environ.get('LEPTONRT_INCARNATION', '0')}")
    device = torch.device(args.device)
    _warm_up(device)
    link, job, welcome = Link(args.connect), None, None
    try:
        while True:   # one job after another, until the broker says goodbye
            _hello(link, args, device)
            welcome = _await_welcome(link, tether, args, device)
            job = JobLoop(link, welcome, device, tether)
            try:
                job.run()
            finally:
                job.close()
            job = welcome = None
    except BrokerGone as exc:
        print(f"actor {args.actor_id}: {exc}", file=sys.stderr)
        if tether.cut():   # the broker died rather than said goodbye
            tether.clean()
        return 0
    except Exception as exc:  # report, then fail: the broker decides what happens next
        if isinstance(exc, ConfigError):   # the job's own model or loss: the user's to fix, said in one line
            message, code = str(exc), exc.exit_code
        else:
            traceback.print_exc()
            message, code = f"{type(exc).__name__}: {exc}", 1
        job_id, rank = (welcome.job.job_id, welcome.rank) if welcome is not None else (0, 0)
        link.send(Failure(job_id=job_id, rank=rank, message=message[:60000], exit_code=code))
        return 1
    finally:
        finish_teardown()   # the last group's, if it is still being destroyed
        link.close()
