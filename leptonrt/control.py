"""Commands that operate a running broker: ``leptonrt stop``, ``jobs``, ``status --watch``.

They are clients like ``status`` (``leptonrt.connect``, over the private ipc socket or
CURVE): whoever can reach the broker may run them, the same user on ipc, an allowed key on
TCP. Each is a coroutine returning the exit code; the CLI runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import time

from .broker.address import default_address, ipc_path
from .client import connect
from .errors import NoDeviceError
from .pids import pid_running

STOP_WAIT_S = 60.0   # `stop` waits this long for the broker to be gone


def _connect(args: argparse.Namespace):
    return connect(args.connect, server_key=args.server_key, keys=args.keys)


def _say(text: str) -> None:
    print(f"leptonrt: {text}", file=sys.stderr, flush=True)


async def stop(args: argparse.Namespace) -> int:
    """Ask the broker to stop, then wait until it is gone: 0; nothing answering: 69."""
    address = args.connect or default_address()
    try:
        async with _connect(args) as broker:
            pid = (await broker.status()).pid
            _say(await broker.stop())
    except NoDeviceError:
        _say(f"no broker is answering at {address}: nothing to stop")
        return NoDeviceError.exit_code
    if not await _wait_gone(args, address, pid, STOP_WAIT_S):
        _say(f"the broker at {address} is still stopping after {STOP_WAIT_S:.0f} s"
             + (f" (pid {pid})" if pid else ""))
        return 70
    _say(f"the broker at {address} has stopped")
    return 0


async def _wait_gone(args: argparse.Namespace, address: str, pid: int | None, timeout_s: float) -> bool:
    """Until the broker has exited: its process, when it is on this host (an ipc socket) and
    we can see it; otherwise until it stops answering. False if it outlasts ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    if pid is not None and ipc_path(address) is not None and pid_running(pid):
        while pid_running(pid):   # gone only once its actors are stopped and its memory unlinked
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)
        return True
    try:
        async with _connect(args) as broker:
            while time.monotonic() < deadline:
                await broker.status()
                await asyncio.sleep(0.5)
    except NoDeviceError:
        return True
    return False


async def jobs(args: argparse.Namespace) -> int:
    """List the broker's jobs, or cancel one (``jobs cancel ID``)."""
    async with _connect(args) as broker:
        if args.action == "cancel":
            _say(await broker.cancel(args.job_id))
            return 0
        snapshot = await broker.status()
    if args.json:
        print(json.dumps([dataclasses.asdict(j) for j in snapshot.jobs], indent=2))
    else:
        from .view import job_lines
        print("\n".join(job_lines(snapshot)))
    return 0


async def watch_status(args: argparse.Namespace) -> int:
    """Print a snapshot every ``args.watch`` seconds until Ctrl-C (0) or SIGTERM (143). With
    ``--json``, one snapshot a line; on a terminal, the view redrawn in place."""
    from rich.console import Console

    from .view import render
    loop, stop, seen = asyncio.get_running_loop(), asyncio.Event(), []
    for signum, code in ((signal.SIGINT, 0), (signal.SIGTERM, 143)):
        loop.add_signal_handler(signum, lambda c=code: (seen.append(c), stop.set()))
    console = Console()
    try:
        async with _connect(args) as broker:
            while not stop.is_set():
                snapshot = await broker.status()
                if args.json:
                    print(json.dumps(snapshot.to_dict()), flush=True)
                else:
                    if console.is_terminal:
                        console.clear()
                    console.print(render(snapshot))
                await _wait(stop, args.watch)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return seen[0] if seen else 0


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass
