"""The settings file: one TOML document, read once and checked key by key.

Its top level holds keys any command has (each command takes its own) and one table per
command, ``[train]`` or ``[up]``, whose keys override the top level's for that command. A
key is a long option's name, ``batch-size`` or ``batch_size``. Every failure is one
ConfigError line naming the file, and the line and column for a TOML syntax error. Values
are left raw here: ``leptonrt.settings`` runs them through each option's own checks.
"""

from __future__ import annotations

import difflib
import re
import tomllib

from .errors import ConfigError

MAX_FILE_BYTES = 1 << 20   # a settings file is a few hundred bytes; /dev/zero is not one


def _read(path: str, named_by: str) -> dict:
    """The TOML document at ``path`` (which ``named_by`` names); every failure is one ConfigError line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path} (from {named_by}): {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"settings file {path} is larger than {MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"settings file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}:{_where(str(exc), text)}: invalid TOML: {_what(str(exc))}") from None


def _where(message: str, text: str) -> str:
    """``LINE:COLUMN`` from tomllib's message (its exception has no fields for them before 3.14)."""
    if (m := re.search(r"\(at line (\d+), column (\d+)\)$", message)) is not None:
        return f"{m.group(1)}:{m.group(2)}"
    lines = text.split("\n")   # "(at end of document)"
    return f"{len(lines)}:{len(lines[-1]) + 1}"


def _what(message: str) -> str:
    """tomllib's message without its position (``_where`` gives that)."""
    return re.sub(r" \(at (line \d+, column \d+|end of document)\)$", "", message)


def file_values(path: str, named_by: str, keys: dict[str, set[str]], command: str) -> dict:
    """``{key: (where, raw)}`` of the file for ``command``: the top level, then its table over
    it. ``keys``: each command's keys; every key of every table is checked against them."""
    data = _read(path, named_by)
    values = {}
    for name in (None, *keys):   # the top level first, so that a command's table overrides it
        where = f"{path}:" if name is None else f"{path}: [{name}]"
        table = {k: v for k, v in data.items() if k not in keys} if name is None else data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} must be a table ([{name}]), got {toml_type(table)}")
        allowed = set().union(*keys.values()) if name is None else keys[name]
        for key, raw in _keyed(table, allowed, where, keys, top=name is None).items():
            if name in (None, command) and key in keys[command]:
                values[key] = (where, raw)
    return values


def _keyed(table: dict, allowed: set[str], where: str, keys: dict, top: bool) -> dict:
    """``table`` with each key spelt as the long option (``batch_size`` is ``batch-size``);
    an unknown key, or one given in both spellings, is a ConfigError."""
    out = {}
    for raw_key, raw in table.items():
        key = raw_key.replace("_", "-")
        if key not in allowed:
            candidates = allowed | set(keys) if top else allowed   # a mistyped [table] is a top-level key
            raise ConfigError(f"{where} unknown key {raw_key!r}{_hint(key, candidates, keys)}")
        if key in out:
            raise ConfigError(f"{where} {key!r} is given twice (as {key} and {key.replace('-', '_')})")
        out[key] = raw
    return out


def _hint(key: str, candidates: set[str], keys: dict) -> str:
    """A close name, or the command whose table a key belongs in."""
    close = difflib.get_close_matches(key, sorted(candidates), n=1)
    if close:
        return f"; did you mean {close[0]!r}?"
    owners = [name for name, names in keys.items() if key in names]
    return f" (a setting of `leptonrt {owners[0]}`: under [{owners[0]}] or at the top level)" if owners else ""


def toml_type(raw: object) -> str:
    """What a TOML value is, in words, for a message."""
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a float", list: "an array",
             dict: "a table"}
    return names.get(type(raw), f"a {type(raw).__name__}")
