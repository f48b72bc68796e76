"""``leptonrt up`` (the broker as a service) and the commands that talk to a running one:
``top``, ``status``, ``jobs``, ``stop``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from ..errors import ConfigError, UsageError
from . import run_async


def up(args: argparse.Namespace) -> int:
    from ..broker.address import check_listen, default_address
    # the private ipc socket is always served: local commands need no keys
    addresses = [default_address()]
    if args.listen:
        check_listen(args.listen)
        addresses = [args.listen] if args.listen.startswith("ipc://") else addresses + [args.listen]
    if any(a.startswith("tcp://") for a in addresses):
        from ..keys import load_keypair
        load_keypair(args.keys)   # no keys, or unsafe ones: refused now, before any actor starts
    _refuse_if_served(addresses)
    if args.detach:
        from ..broker.probe import probe
        from ..daemon import detach
        argv = [a for a in args.argv if a != "--detach"]
        return detach(argv, addresses[0], lambda address: run_async(probe(address)))
    return run_async(_up(args, addresses))


def _refuse_if_served(addresses: list[str]) -> None:
    """One broker per socket: a second `up` is refused before it starts anything."""
    from ..broker.address import ipc_path
    from ..broker.probe import probe
    for address in addresses:
        path = ipc_path(address)
        if path is not None and path.exists() and run_async(probe(address)) is not None:
            raise ConfigError(f"a leptonrt broker is already serving at {address} (`leptonrt stop` stops it)")


async def _up(args: argparse.Namespace, addresses: list[str]) -> int:
    import signal

    from ..broker.embedded import Broker
    from ..broker.service import Service
    from ..watch import watch
    loop, main_task = asyncio.get_running_loop(), asyncio.current_task()
    stop, seen, broken = asyncio.Event(), [], []
    listen = next((a for a in addresses if a.startswith("tcp://")), None)
    actor_env, refused = _gradient_net(args, listen)
    broker = Broker(args.gpus, args.cpu_actors, actor_env=actor_env, address=" ".join(addresses), pin=not args.no_pin,
                    cache_bytes=args.cache_bytes, allow_imports=args.allow_import, listen=listen, keys=args.keys,
                    hosts_refused=refused)
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


def _gradient_net(args: argparse.Namespace, listen: str | None) -> tuple[dict[str, str], str | None]:
    """(the actors' environment, why hosts may not join): on a tcp:// listener, gradients to
    joined hosts need an interface the user named or trusts (see leptonrt.interfaces)."""
    if listen is None:
        return {}, None
    from ..interfaces import UNSAFE, gradient_iface
    host = listen.removeprefix("tcp://").rpartition(":")[0]
    iface = gradient_iface(args.gradient_iface, args.trust_network,
                           None if host in ("*", "0.0.0.0", "[::]", "[*]") else host)
    if iface is None:
        return {}, f"the head was started without --gradient-iface or --trust-network: {UNSAFE}"
    return {"GLOO_SOCKET_IFNAME": iface}, None


def _serve_metrics(args: argparse.Namespace, broker):
    """The metrics endpoint of `up --metrics-port`, serving snapshots taken on this loop."""
    from ..broker.metrics import MetricsServer, is_loopback, on_loop
    server = MetricsServer(on_loop(asyncio.get_running_loop(), broker.snapshot), args.metrics_host,
                           args.metrics_port).start()
    if not is_loopback(args.metrics_host):
        print(f"leptonrt: warning: the metrics on {args.metrics_host}:{args.metrics_port} are unauthenticated: "
              "anyone who can reach that address can read them", file=sys.stderr)
    host = f"[{args.metrics_host}]" if ":" in args.metrics_host else args.metrics_host
    print(f"leptonrt: metrics at http://{host}:{args.metrics_port}/metrics", file=sys.stderr)
    return server


def top(args: argparse.Namespace) -> int:
    return run_async(_top(args))


async def _top(args: argparse.Namespace) -> int:
    import signal

    from ..client import connect
    from ..watch import watch
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


def status(args: argparse.Namespace) -> int:
    from ..client import connect
    if args.watch is not None:
        from .. import control
        return run_async(control.watch_status(args))

    async def once():
        async with connect(args.connect, server_key=args.server_key, keys=args.keys) as broker:
            return await broker.status()
    snapshot = run_async(once())
    if args.json:
        print(json.dumps(snapshot.to_dict(), indent=2))
    else:
        from rich.console import Console

        from ..view import render
        Console().print(render(snapshot))
    return 0


def jobs(args: argparse.Namespace) -> int:
    if args.action == "cancel" and args.job_id is None:
        raise UsageError("jobs cancel: give the id of the job to cancel (`leptonrt jobs` lists them)")
    from .. import control
    return run_async(control.jobs(args))


def stop(args: argparse.Namespace) -> int:
    from .. import control
    return run_async(control.stop(args))
