"""``leptonrt join``: this host's devices join a running broker (see ``leptonrt.actors.agent``)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..actors.agent import Agent, AgentConfig
    from ..broker.address import check_address
    from ..errors import UsageError
    check_address(args.address)
    if not args.address.startswith("tcp://"):
        raise UsageError("join: the head's address is its tcp:// --listen address, e.g. tcp://head:7420")
    config = AgentConfig(address=args.address, server_key=args.server_key, keys=args.keys, gpus=args.gpus,
                         cpu_actors=args.cpu_actors, pin=not args.no_pin, gradient_iface=args.gradient_iface,
                         trust_network=args.trust_network, data=args.data)
    return Agent(config).run()
