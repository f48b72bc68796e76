"""docs/protocol.md describes the wire exactly: its field tables are the schema's, so the
document cannot drift from the code. (Regenerate a table: ``python tests/test_protocol_doc.py``.)"""

import dataclasses
import inspect
import re
import sys
import typing
from pathlib import Path

from leptonrt import config, messages

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
RECORDS = [messages.ArrayRef, messages.DatasetInfo, config.Slowdown, config.TrainJob, messages.JobSpec,
           messages.StepStat, messages.CacheArray, messages.HostActor, *typing.get_args(messages.Message)]


def _comments(cls) -> dict[str, str]:
    """The comment after each field, from the source (the schema's own words)."""
    out = {}
    for line in inspect.getsource(cls).splitlines():
        match = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.*))?$", line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            out[match.group(1)] = (match.group(2) or "").strip()
    return out


def _type(hint) -> str:
    text = str(hint).replace("typing.", "").replace("leptonrt.messages.records.", "").replace("leptonrt.messages.actors.", "").replace("leptonrt.messages.clients.", "").replace("leptonrt.messages.cachefill.", "").replace("leptonrt.messages.hosts.", "").replace("leptonrt.messages.", "").replace("leptonrt.config.", "").replace("leptonrt.wire.", "")
    return text.replace("<class '", "").replace("'>", "").replace("NoneType", "None")


def _limits(meta) -> str:
    parts = [f"{k} {v!r}" if k != "choices" else f"one of {', '.join(sorted(v))}" for k, v in meta.items()]
    return "; ".join(parts).replace("'", "")


def table(cls) -> str:
    hints, comments = typing.get_type_hints(cls), _comments(cls)
    rows = ["| field | type | limits | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        default = "" if f.default is dataclasses.MISSING else f" (default {f.default!r})"
        cells = [f"`{f.name}`", f"`{_type(hints[f.name])}`", f"{_limits(f.metadata)}{default}".strip(),
                 comments.get(f.name, "")]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def rewrite(text: str) -> str:
    """``text`` with the table of every record's section replaced by the schema's."""
    for cls in RECORDS:
        head = f"### {cls.__name__}\n"
        if head not in text:
            continue
        before, after = text.split(head, 1)
        section, rest = (after.split("\n### ", 1) + [""])[:2]
        lines = section.split("\n")
        first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
        if first is not None:
            last = first
            while last < len(lines) and lines[last].startswith("|"):
                last += 1
            lines[first:last] = table(cls).split("\n")
        text = before + head + "\n".join(lines) + ("\n### " + rest if rest else "")
    return text


def test_every_record_is_documented_with_the_schemas_own_table():
    text = DOC.read_text()
    for cls in RECORDS:
        assert f"### {cls.__name__}\n" in text, f"docs/protocol.md has no section for {cls.__name__}"
        section = text.split(f"### {cls.__name__}\n", 1)[1].split("\n### ", 1)[0]
        assert table(cls) in section, f"the table of {cls.__name__} in docs/protocol.md is not the schema's:\n{table(cls)}"


def test_the_documented_version_and_limits_are_the_codes():
    text = DOC.read_text()
    assert f"version {messages.VERSION}" in text
    for name in ("CLIENT_LIMITS", "SERVICE_LIMITS", "ACTOR_LIMITS"):
        limits = getattr(messages, name)
        assert f"| {name} | {limits.frame_bytes:,} | {limits.frames} | {limits.array_len:,} | {limits.map_len:,} |" in text


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:   # after a schema change: rewrite the doc's tables
        DOC.write_text(rewrite(DOC.read_text()))
    else:
        for cls in RECORDS:
            print(f"### {cls.__name__}\n\n{inspect.cleandoc(cls.__doc__ or '')}\n\n{table(cls)}\n")
