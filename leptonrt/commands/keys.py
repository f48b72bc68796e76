"""``leptonrt keys init|show|allow|revoke|list``: the command line of ``leptonrt.keys``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..keys import allow, allowed_keys, default_dir, init, keys_dir, load_keypair, read_public_key, revoke


def add_parser(subparsers) -> None:
    """Add ``leptonrt keys init|show|allow|revoke|list`` to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--keys", default=None, metavar="DIR", help=f"key directory (default {default_dir()})")
    p = subparsers.add_parser("keys", help="CURVE keys: this machine's key pair and the keys allowed to connect")
    sub = p.add_subparsers(dest="keys_command", required=True)
    q = sub.add_parser("init", parents=[common], help="write a new key pair (refuses to replace one)")
    q.add_argument("--force", action="store_true", help="replace existing keys: peers trusting them are locked out")
    sub.add_parser("show", parents=[common], help="print the public key and the path of public.key")
    q = sub.add_parser("allow", parents=[common], help="allow a public key to connect, as NAME")
    q.add_argument("name", metavar="NAME")
    q.add_argument("public_key_file", metavar="PUBLIC_KEY_FILE")
    q.add_argument("--force", action="store_true", help="replace the key already allowed as NAME")
    q.add_argument("--host", action="store_true",
                   help="a host's key: it may join (`leptonrt join`) and receive the jobs' data; a client's may not")
    q = sub.add_parser("revoke", parents=[common], help="stop allowing NAME (takes effect without a restart)")
    q.add_argument("name", metavar="NAME")
    sub.add_parser("list", parents=[common], help="list the names (and keys) allowed to connect")


def run(args: argparse.Namespace) -> int:
    """Run one ``leptonrt keys`` command; errors are ConfigError (78), printed by the CLI."""
    directory = keys_dir(args.keys)
    command = args.keys_command
    if command == "init":
        pair = init(directory, force=args.force)
        print(f"wrote {directory / 'secret.key'} (0600, keep it private) and {directory / 'public.key'}")
        print(f"public key: {pair.public.decode()}")
    elif command == "show":   # the whole pair is checked: what this machine presents, and that it is private
        load_keypair(directory)
        print(f"public key: {read_public_key(directory / 'public.key').decode()}")   # refused if missing
        print(f"file: {directory / 'public.key'}")
    elif command == "allow":
        key = allow(directory, args.name, args.public_key_file, force=args.force, host=args.host)
        print(f"allowed {args.name} ({key.decode()}) as a {'host' if args.host else 'client'}; "
              "new connections see it at once")
    elif command == "revoke":
        revoke(directory, args.name)
        print(f"revoked {args.name}; a running broker refuses its next message and connection")
    else:
        _list(directory)
    return 0


def _list(directory: Path) -> None:
    names = {}
    for role, hosts in (("client", False), ("host", True)):
        allowed = allowed_keys(directory, clients=not hosts, hosts=hosts)
        allowed.check()
        names.update({name: (key, role) for name, key in allowed.snapshot().items()})
        for problem in allowed.problems:
            print(f"leptonrt: ignored: {problem}", file=sys.stderr)
    for name, (key, role) in sorted(names.items()):
        print(f"{name}  {role}  {key.decode()}")
    if not names:
        print("leptonrt: no keys are allowed yet (`leptonrt keys allow NAME FILE`)", file=sys.stderr)
