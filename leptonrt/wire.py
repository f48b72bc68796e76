"""The generic half of the wire: msgpack frames within limits, and records checked field by field.

``leptonrt/messages/`` declares the messages; this module knows nothing of them. A record
is a frozen dataclass whose fields carry their validation in ``dataclasses.field``
metadata: ``min``/``max`` (inclusive), ``choices``, ``min_len``/``max_len`` (string, bytes
or list length), ``item_min``/``item_max`` (list elements) and ``allow_nonfinite``
(floats). ``tuple[X, ...]`` fields travel as lists; ``Plain`` fields hold msgpack-native
data (maps with string keys, lists, scalars) of bounded depth. A record may add
``check()`` for a cheap cross-field rule; it raises ``ProtocolError`` and runs after the
field checks.

Caps come before decoding: msgpack itself refuses arrays, maps, strings and byte strings
longer than the ``Limits`` (so a frame of a million empty arrays costs nothing to refuse).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any, NoReturn, Union

import msgpack

from leptonrt.errors import ConfigError, InternalError, ProtocolError

MAX_PLAIN_DEPTH = 8       # nesting of a Plain value


@dataclass(frozen=True)
class Limits:
    """What one channel accepts, checked before and while decoding."""

    frame_bytes: int        # longest frame (the socket's MAXMSGSIZE too: a longer one disconnects the peer)
    frames: int             # frames in one message, the routing identity included
    array_len: int          # longest msgpack array...
    map_len: int            # ...and map (entries) in a frame


class Plain(dict):
    """Annotation for a field of msgpack-native data: a map with string keys whose values are
    maps, lists, strings, numbers, booleans or None, at most ``MAX_PLAIN_DEPTH`` deep."""


_META_KEYS = frozenset(
    {"min", "max", "choices", "min_len", "max_len", "item_min", "item_max", "allow_nonfinite"}
)
# msgpack carries integers in this range only; nothing outside it can be sent at all.
_WIRE_INT_MIN, _WIRE_INT_MAX = -(2**63), 2**64 - 1
# check(value, where, outgoing) -> the value converted for the other side of the wire
_Check = Callable[[Any, str, bool], Any]


def required(**meta: Any) -> Any:
    """A required field whose metadata holds its validation ranges."""
    return field(metadata=meta)


def given(default: Any, **meta: Any) -> Any:
    """A field our code may leave out when building a message; it is still always sent."""
    return field(default=default, metadata=meta)


# --- unpacking -----------------------------------------------------------------------


def unpack(frame: bytes, limits: Limits) -> Any:
    """msgpack-decode a frame within ``limits``, turning every failure into ProtocolError."""
    try:
        return msgpack.unpackb(
            frame, raw=False, strict_map_key=True, timestamp=0,  # a Timestamp fits no field
            ext_hook=_refuse_ext, object_pairs_hook=_map_without_repeats,
            max_str_len=limits.frame_bytes, max_bin_len=limits.frame_bytes, max_ext_len=0,
            max_array_len=limits.array_len, max_map_len=limits.map_len,
        )
    except ProtocolError:
        raise
    except Exception as exc:
        # The bytes came from outside, so whatever the unpacker trips over is the peer's fault.
        detail = str(exc) or type(exc).__name__
        raise ProtocolError(f"frame is not valid msgpack: {detail[:200]}") from exc


def _refuse_ext(code: int, data: bytes) -> NoReturn:
    """Extension types never appear in our protocol."""
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def _map_without_repeats(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Build a map, refusing a repeated key: which copy should win would be a guess."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ProtocolError("a map repeats a key")
    return result


# --- generic validation ---


@cache
def rules(cls: type) -> tuple[tuple[str, _Check], ...]:
    """(field name, check) for each field of a record, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if unknown := set(f.metadata) - _META_KEYS:
            raise InternalError(f"{cls.__name__}.{f.name}: unknown metadata {sorted(unknown)}")
    return tuple((f.name, _compile(hints[f.name], f.metadata)) for f in dataclasses.fields(cls))


def _compile(hint: Any, meta: Mapping[str, Any]) -> _Check:
    """Turn an annotation and its ranges into a check function."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _compile(args[0] if args[1] is type(None) else args[1], meta)
        return lambda value, where, out: None if value is None else inner(value, where, out)
    if origin in (list, tuple) and (origin is list or args[1:] == (Ellipsis,)):
        item_meta = {"min": meta.get("item_min"), "max": meta.get("item_max")}
        return partial(_check_list, item=_compile(args[0], item_meta), meta=meta, as_tuple=origin is tuple)
    if dataclasses.is_dataclass(hint):
        rules(hint)  # compile now, so a schema mistake shows at import
        return partial(_check_record, hint)
    if hint is Plain:
        return _check_plain
    if hint in _SCALARS:
        return partial(_SCALARS[hint], meta=meta)
    raise InternalError(f"unsupported field type {hint!r}")


def record_from_map(cls: type, value: Any, where: str) -> Any:
    """Build a record from its wire map."""
    if not isinstance(value, dict):
        fail(where, f"expected a map of fields, got {describe(value)}")
    checks = rules(cls)
    for name, _ in checks:
        if name not in value:
            fail(where, f"missing field {name!r}")
    if len(value) != len(checks):
        names = {name for name, _ in checks}
        fail(where, f"unknown field {describe(next(k for k in value if k not in names))}")
    fields = {name: check(value[name], f"{where}.{name}", False) for name, check in checks}
    try:
        record = cls(**fields)
    except ConfigError as exc:   # a record that checks itself on construction (TrainJob)
        raise ProtocolError(f"{where}: {exc}") from None
    _run_own_check(record, where)
    return record


def record_to_map(cls: type, value: Any, where: str) -> dict[str, Any]:
    """Check a record of ours and return its wire map."""
    if type(value) is not cls:
        fail(where, f"expected {cls.__name__}, got {describe(value)}")
    checks = rules(cls)
    fields = {name: check(getattr(value, name), f"{where}.{name}", True) for name, check in checks}
    _run_own_check(value, where)
    return fields


def _run_own_check(record: Any, where: str) -> None:
    """Run a record's cross-field ``check()``, if it has one, naming where it failed."""
    if (check := getattr(record, "check", None)) is not None:
        try:
            check()
        except ProtocolError as exc:
            raise ProtocolError(f"{where}: {exc}") from None


def _check_record(cls: type, value: Any, where: str, out: bool) -> Any:
    return record_to_map(cls, value, where) if out else record_from_map(cls, value, where)


def _check_list(value: Any, where: str, out: bool, *, item: _Check, meta: Mapping, as_tuple: bool) -> Any:
    # the wire's is always a list; ours is the annotation's kind (tuple or list)
    if not isinstance(value, tuple if out and as_tuple else list):
        fail(where, f"expected a {'tuple' if out and as_tuple else 'list'}, got {describe(value)}")
    _check_length(len(value), meta, where, "items")
    items = [item(element, f"{where}[{i}]", out) for i, element in enumerate(value)]
    return tuple(items) if as_tuple and not out else items


def _check_int(value: Any, where: str, out: bool, *, meta: Mapping) -> int:
    if not _is_wire_int(value):
        fail(where, f"expected a 64-bit integer, got {describe(value)}")
    _check_range(value, meta, where)
    return value


def _check_float(value: Any, where: str, out: bool, *, meta: Mapping) -> float:
    # A peer may write a whole number as an integer; it means the same float.
    if not (isinstance(value, float) or _is_wire_int(value)) or isinstance(value, bool):
        fail(where, f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        fail(where, f"{describe(value)} is too large for a float")
    if not math.isfinite(number) and not meta.get("allow_nonfinite", False):
        fail(where, f"{number} is not a finite number")
    _check_range(number, meta, where)
    return number


def _check_str(value: Any, where: str, out: bool, *, meta: Mapping) -> str:
    if not isinstance(value, str):
        fail(where, f"expected a string, got {describe(value)}")
    _check_length(len(value), meta, where, "characters")
    _check_range(value, meta, where)
    if out:
        try:
            value.encode("utf-8")  # a lone surrogate would make msgpack fail mid-encode
        except UnicodeEncodeError:
            fail(where, f"{describe(value)} cannot be encoded as UTF-8")
    return str(value)


def _check_bytes(value: Any, where: str, out: bool, *, meta: Mapping) -> bytes:
    if not isinstance(value, bytes):
        fail(where, f"expected bytes, got {describe(value)}")
    _check_length(len(value), meta, where, "bytes")
    return value


def _check_bool(value: Any, where: str, out: bool, *, meta: Mapping) -> bool:
    if type(value) is not bool:
        fail(where, f"expected true or false, got {describe(value)}")
    return value


def _check_plain(value: Any, where: str, out: bool) -> Plain:
    if not isinstance(value, dict):
        fail(where, f"expected a map, got {describe(value)}")
    return Plain(_plain(value, where, 1))


def _plain(value: Any, where: str, depth: int) -> Any:
    """``value`` if it is msgpack-native data of bounded depth (tuples become lists)."""
    if value is None or type(value) in (bool, str):
        return value
    if type(value) is int:
        if not _is_wire_int(value):
            fail(where, f"expected a 64-bit integer, got {describe(value)}")
        return value
    if type(value) is float:
        return value
    if depth > MAX_PLAIN_DEPTH:
        fail(where, f"nested deeper than {MAX_PLAIN_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            fail(where, "map keys must be strings")
        return {k: _plain(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    fail(where, f"{describe(value)} is not plain data")


_SCALARS: dict[type, Callable[..., Any]] = {
    int: _check_int, float: _check_float, str: _check_str, bool: _check_bool, bytes: _check_bytes,
}


def _is_wire_int(value: Any) -> bool:
    """An integer msgpack can carry; ``type`` rather than isinstance, since bool is an int."""
    return type(value) is int and _WIRE_INT_MIN <= value <= _WIRE_INT_MAX


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
    """Enforce ``min``, ``max`` (inclusive) and ``choices``."""
    low, high, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if low is not None and value < low:
        fail(where, f"{describe(value)} is below the minimum {low}")
    if high is not None and value > high:
        fail(where, f"{describe(value)} is above the maximum {high}")
    if choices is not None and value not in choices:
        fail(where, f"{describe(value)} is not one of {sorted(choices)}")


def _check_length(length: int, meta: Mapping[str, Any], where: str, unit: str) -> None:
    """Enforce ``min_len`` and ``max_len``."""
    low, high = meta.get("min_len", 0), meta.get("max_len")
    if length < low:
        fail(where, f"has {length} {unit}, fewer than the minimum {low}")
    if high is not None and length > high:
        fail(where, f"has {length} {unit}, more than the maximum {high}")


def fail(where: str, problem: str) -> NoReturn:
    raise ProtocolError(f"{where}: {problem}")


def describe(value: Any) -> str:
    """A short, safe rendering of any value for an error message."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, (str, bytes)):
        return repr(value) if len(value) <= 64 else f"{value[:64]!r}... ({len(value)} long)"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"
