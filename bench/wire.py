"""Just enough of the wire format (docs/protocol.md) to read the benchmark's own dump files.

The benchmark needs the C record (budget_used, ...), the S and M records (to judge stack
completeness) and each dump's byte size; the full parser lives in hostpy/membt_host.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

MARKER = b"@MBT "


@dataclass
class Dump:
    number: int
    text_bytes: int = 0  # bytes of the record lines, newlines included, as the sink wrote them
    lines: int = 0
    begin: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    modules: list[tuple[int, int, int, str]] = field(default_factory=list)  # (load_bias, lo, hi, path)
    stacks: dict[int, list[int]] = field(default_factory=dict)
    truncated: set[int] = field(default_factory=set)
    groups: list[list[str]] = field(default_factory=list)
    end: dict[str, int] | None = None


def _fields(line: bytes) -> list[str] | None:
    """The fields of a record line whose checksum matches, from the version on; else None."""
    start = line.find(MARKER)
    if start < 0:
        return None
    body, sep, crc = line[start:].rstrip(b"\r\n").rpartition(b" *")
    if not sep or len(crc) != 8 or f"{zlib.crc32(body):08x}".encode() != crc:
        return None
    return body.decode("ascii").split(" ")[1:]


def _pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items if "=" in item)


def read_dumps(data: bytes) -> list[Dump]:
    """Every dump in data, in order; a dump without its E record has end=None."""
    dumps: list[Dump] = []
    current: Dump | None = None
    for line in data.splitlines(keepends=True):
        fields = _fields(line)
        if fields is None or len(fields) < 4 or fields[0] != "1":
            continue
        number, tag, rest = int(fields[1]), fields[3], fields[4:]
        if tag == "B":
            current = Dump(number=number, begin=_pairs(rest))
            dumps.append(current)
        if current is None or current.number != number:
            continue
        current.text_bytes += len(line)
        current.lines += 1
        if tag == "C":
            current.counters = {k: int(v) for k, v in _pairs(rest).items()}
        elif tag == "M":
            current.modules.append((int(rest[1], 16), int(rest[2], 16), int(rest[3], 16), rest[5]))
        elif tag == "S":
            stack_id = int(rest[0])
            current.stacks[stack_id] = [int(a, 16) for a in rest[2:]]
            if "t" in rest[1]:
                current.truncated.add(stack_id)
        elif tag == "G":
            current.groups.append(rest)
        elif tag == "E":
            current.end = {k: int(v) for k, v in _pairs(rest).items()}
    return dumps


def last_complete(data: bytes) -> Dump | None:
    complete = [d for d in read_dumps(data) if d.end is not None and d.end.get("lines") == d.lines]
    return complete[-1] if complete else None


def link_time(dump: Dump, stack: list[int], path_suffix: str) -> list[int | None]:
    """Each frame of stack as a link-time address in the module whose path ends with path_suffix
    (None for frames elsewhere)."""
    mods = [(bias, lo, hi) for bias, lo, hi, path in dump.modules if path.endswith(path_suffix)]
    return [next((a - bias for bias, lo, hi in mods if lo <= a < hi), None) for a in stack]
