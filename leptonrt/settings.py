"""Settings for ``leptonrt train`` and ``leptonrt up`` from a TOML file and ``LEPTONRT_*`` variables.

Each setting is one long option, found by walking the command's argparse actions, so an
option added to the parser later is a file key and an environment variable with no change
here. For one setting, the first of these that has it wins::

    the command line   --batch-size 128
    the environment    LEPTONRT_BATCH_SIZE=128
    the file           batch-size = 128 (or batch_size), under [train] / [up], else at top level
    the default        the parser's

The file is ``--config FILE`` or ``$LEPTONRT_CONFIG`` (``leptonrt.settings_file`` reads it).
Its top level is shared: each command takes the keys it has, and its own table overrides
them. A file or environment value goes through the option's own ``type=`` and ``choices``,
so neither can hold what the command line would refuse; every value of every layer is
checked, also one a higher layer overrides. A TOML array is a repeatable option's items, or
the comma-separated text of an option whose converter returns a sequence (``--hidden``); in
the environment, a repeatable option's items are separated by spaces (shell quoting).
``config show`` prints the outcome and each source.

Options of the standard kinds (store, store_true/false/const, append, extend, count,
``BooleanOptionalAction``) are settings; help, version, ``--config`` itself, positionals and
options of custom Action classes are not.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import sys
from dataclasses import dataclass

from .errors import ConfigError
from .settings_file import file_values, toml_type

COMMANDS = ("train", "up")           # the commands that read settings; each may have its own [table]
ENV_PREFIX = "LEPTONRT_"
CONFIG_ENV = "LEPTONRT_CONFIG"       # names the file when --config does not
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Source:
    """Where a setting's value came from: ``kind`` is default, file, env or command line;
    ``where`` the file's path or the variable's name."""

    kind: str
    where: str | None = None

    def __str__(self) -> str:
        return self.kind if self.where is None else f"{self.kind} {self.where}"


@dataclass(frozen=True)
class Setting:
    """One effective setting: its key (the long option's name), value and source."""

    key: str
    value: object
    source: Source


@dataclass(frozen=True)
class Resolved:
    """What ``parse`` found for a command: the file it read (and what named it) and each setting."""

    command: str
    file: str | None
    named_by: str | None
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class _Command:
    """The marker a configurable parser leaves in its namespace (``set_defaults``): which
    command it reads settings for, and every configurable command's parser."""

    name: str
    parsers: dict


class _Refused(Exception):
    """A value an option would refuse; the caller says where the value came from."""


# -- the options of a parser -----------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """A long option seen as a setting. ``kind``: flag (true/false), count, one (a value),
    many (nargs: several values) or append (repeatable)."""

    key: str
    env: str
    kind: str
    action: argparse.Action


def _kind(action: argparse.Action) -> str | None:
    # argparse keeps its action classes private; these names have not moved since Python 3.2
    if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreConstAction)):
        return "flag"
    if isinstance(action, argparse._CountAction):
        return "count"
    if isinstance(action, argparse._ExtendAction):
        return "many"
    if isinstance(action, argparse._AppendAction):
        return "append" if action.nargs is None else None
    if isinstance(action, argparse._StoreAction):
        return "one" if action.nargs in (None, "?") else "many"
    return None


def options(parser: argparse.ArgumentParser) -> list[Option]:
    """The settings of one command's parser, in the parser's order."""
    out = []
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        kind = _kind(action)
        if longs and kind and action.default is not argparse.SUPPRESS:   # SUPPRESS: help, version, --config
            key = longs[0][2:]
            out.append(Option(key, ENV_PREFIX + key.upper().replace("-", "_"), kind, action))
    return out


# -- the command line ------------------------------------------------------------------------

def add_parser(subparsers, commands: tuple[str, ...] = COMMANDS) -> None:
    """Give each of ``commands`` (already in ``subparsers``) ``--config FILE``, and add
    ``leptonrt config show [COMMAND] [options]``. Call it after every option is added."""
    parsers = {name: subparsers.choices[name] for name in commands}
    for name, parser in parsers.items():
        parser.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                            help=f"read settings from this TOML file (default: ${CONFIG_ENV}); "
                                 f"the command line and {ENV_PREFIX}* variables override it")
        parser.set_defaults(_settings=_Command(name, parsers))
    p = subparsers.add_parser("config", help="show the settings a command would run with, and where each comes from")
    what = p.add_subparsers(dest="config_command", metavar="{show}", required=True, parser_class=type(p))
    show = what.add_parser("show", help="print the effective settings of a command and the source of each",
                           description=f"The settings `leptonrt COMMAND` (default: {commands[0]}) would run with, "
                                       "and where each\ncomes from. The command's own options follow its name.",
                           epilog=f"example:\n  leptonrt config show {commands[0]} --config leptonrt.toml --json")
    show.add_argument("--json", action="store_true", help="print them as JSON")
    show.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help="the TOML file to read")
    show.set_defaults(_settings=_Command(commands[0], parsers))
    targets = show.add_subparsers(dest="target", metavar="{" + ",".join(commands) + "}",
                                  parser_class=type(p))
    for name, parser in parsers.items():   # the same options, as the command itself parses them
        q = targets.add_parser(name, parents=[parser], add_help=False, help=f"the settings of `leptonrt {name}`")
        q.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print them as JSON")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None,
          environ: dict[str, str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, then each setting of a configurable command that the
    command line left out is taken from ``environ``, the file, or its default. Raises
    ConfigError (78) for a bad file, key or value; the namespace's ``_resolved`` says where
    each value came from."""
    args = parser.parse_args(argv)
    command = getattr(args, "_settings", None)
    if command is None:
        return args
    environ = os.environ if environ is None else environ
    own = command.parsers[command.name]
    given = _given(parser, argv, own)
    file, named_by = _file_path(args, environ)
    keys = {name: {o.key for o in options(p)} for name, p in command.parsers.items()}
    in_file = file_values(file, named_by, keys, command.name) if file else {}
    settings = []
    for option in options(own):
        env_value = _from_env(option, environ)
        file_value = _from_file(option, in_file)
        if option.action.dest in given:
            value, source = getattr(args, option.action.dest), Source("command line")
        elif env_value is not None:
            value, source = env_value[0], Source("env", option.env)
        elif file_value is not None:
            value, source = file_value[0], Source("file", file)
        else:
            value, source = _default(option.action), Source("default")
        setattr(args, option.action.dest, value)
        settings.append(Setting(option.key, value, source))
    args._resolved = Resolved(command.name, file, named_by, tuple(settings))
    return args


def _given(parser: argparse.ArgumentParser, argv: list[str] | None, own: argparse.ArgumentParser) -> set[str]:
    """The dests the command line sets: parsed again with no defaults, only they are left."""
    defaults = {action: action.default for action in own._actions}
    try:
        for action in defaults:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults.items():
            action.default = default


def _default(action: argparse.Action) -> object:
    """The default as argparse would set it: a string default goes through ``type=``."""
    if isinstance(action.default, str) and action.type is not None:
        return _typed(action, action.default)
    return action.default


# -- one value -------------------------------------------------------------------------------

def _typed(action: argparse.Action, text: str) -> object:
    """``text`` through the option's ``type=`` and ``choices``, with argparse's messages."""
    value = text
    if action.type is not None:
        try:
            value = action.type(text)
        except argparse.ArgumentTypeError as exc:
            raise _Refused(str(exc)) from None
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", repr(action.type))
            raise _Refused(f"invalid {name} value: {text!r}") from None
    if action.choices is not None and value not in action.choices:
        message = f"invalid choice: {value!r} (choose from {', '.join(map(repr, action.choices))})"
        close = difflib.get_close_matches(str(value), [str(c) for c in action.choices], n=1)
        raise _Refused(message + (f"; did you mean {close[0]!r}?" if close else ""))
    return value


def _scalar(raw: object) -> str:
    """A TOML string or number as the text the command line would give."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise _Refused(f"expected a string or a number, got {toml_type(raw)}")
    return str(raw)


def _items(option: Option, texts: list[str]) -> list:
    """The items of a repeatable or multi-value option, each through its ``type=``, counted as ``nargs`` says."""
    action = option.action
    if isinstance(action.nargs, int) and len(texts) != action.nargs:
        raise _Refused(f"expected {action.nargs} values, got {len(texts)}")
    if action.nargs == "+" and not texts:
        raise _Refused("expected at least one value")
    return [_typed(action, t) for t in texts]


def _value_from_toml(option: Option, raw: object) -> object:
    """The option's value for a TOML value: a flag takes a boolean, a count an integer, the rest
    strings and numbers, which go through ``type=`` as the text the command line would give."""
    action = option.action
    if option.kind == "flag":
        if not isinstance(raw, bool):
            raise _Refused(f"expected true or false, got {toml_type(raw)}")
        return _flag(action, raw)
    if option.kind == "count":
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
            raise _Refused(f"expected a count (an integer >= 0), got {raw!r}")
        return raw
    if option.kind in ("many", "append"):
        return _items(option, [_scalar(v) for v in (raw if isinstance(raw, list) else [raw])])
    if not isinstance(raw, list):
        return _typed(action, _scalar(raw))
    value = _typed(action, ",".join(_scalar(v) for v in raw))   # [256, 128] is 256,128
    if not isinstance(value, (list, tuple)):
        raise _Refused("expected one value, got an array")
    return value


def _value_from_text(option: Option, text: str) -> object:
    """The option's value for an environment variable's text."""
    if option.kind == "flag":
        if text.strip().lower() not in TRUE + FALSE:
            raise _Refused(f"expected one of {'/'.join(TRUE)} or {'/'.join(FALSE)}, got {text!r}")
        return _flag(option.action, text.strip().lower() in TRUE)
    if option.kind == "count":
        if not text.strip().isdigit():
            raise _Refused(f"expected a count (an integer >= 0), got {text!r}")
        return int(text)
    if option.kind in ("many", "append"):
        try:
            return _items(option, shlex.split(text))
        except ValueError as exc:   # an unclosed quote
            raise _Refused(f"cannot split {text!r} into items: {exc}") from None
    return _typed(option.action, text)


def _flag(action: argparse.Action, on: bool) -> object:
    """What the flag stores when given (``on``), or its default when not."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return on
    return action.const if on else action.default   # store_true, store_false, store_const


# -- the layers ------------------------------------------------------------------------------

def _from_env(option: Option, environ) -> tuple[object] | None:
    """``(value,)`` from the option's variable, None when unset or empty."""
    text = environ.get(option.env)
    if not text:
        return None
    try:
        return (_value_from_text(option, text),)
    except _Refused as exc:
        raise ConfigError(f"{option.env}: {exc}") from None


def _from_file(option: Option, in_file: dict) -> tuple[object] | None:
    """``(value,)`` from the file's entry for the option, None when it has none."""
    if option.key not in in_file:
        return None
    where, raw = in_file[option.key]
    try:
        return (_value_from_toml(option, raw),)
    except _Refused as exc:
        raise ConfigError(f"{where} {option.key}: {exc}") from None


def _file_path(args: argparse.Namespace, environ) -> tuple[str | None, str | None]:
    """The settings file and what names it: ``--config``, else ``$LEPTONRT_CONFIG``, else none."""
    if getattr(args, "config", None):
        return args.config, "--config"
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV], CONFIG_ENV
    return None, None


# -- leptonrt config show --------------------------------------------------------------------

def run(args: argparse.Namespace, out=None) -> int:
    """``leptonrt config show``: a rich table on a terminal, aligned text elsewhere, or JSON."""
    out = out or sys.stdout
    resolved = args._resolved
    if args.json:
        print(json.dumps(_as_json(resolved), indent=2, default=str), file=out)
        return 0
    header = f"settings of `leptonrt {resolved.command}`, " + (
        f"file {resolved.file} (from {resolved.named_by})" if resolved.file else "no settings file")
    rows = [(s.key, _shown(s.value), str(s.source)) for s in resolved.settings]
    if out.isatty():
        from rich.console import Console
        from rich.table import Table
        table = Table("setting", "value", "source", title=header)
        for row in rows:
            table.add_row(*row)
        Console(file=out).print(table)
        return 0
    print(header, file=out)
    widths = [max(len(r[i]) for r in rows + [("setting", "value", "source")]) for i in range(2)]
    for key, value, source in [("setting", "value", "source")] + rows:
        print(f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}".rstrip(), file=out)
    return 0


def _as_json(resolved: Resolved) -> dict:
    def plain(value):
        return list(value) if isinstance(value, tuple) else value
    return {"command": resolved.command, "file": resolved.file, "file_from": resolved.named_by,
            "settings": {s.key: {"value": plain(s.value), "source": s.source.kind, "from": s.source.where}
                         for s in resolved.settings}}


def _shown(value: object) -> str:
    if value is None or value == []:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)
