"""An independent look at raw wire bytes (docs/protocol.md), so tests can tell which dumps a
capture holds without trusting the parser under test."""

from __future__ import annotations

import re
import zlib

_RECORD = re.compile(rb"(@MBT 1 (\d+) (\d+) ([A-Z]) .*?) \*([0-9a-f]{8})\r?$")


def records(data: bytes) -> list[tuple[int, int, str, bytes]]:
    """(dump, seq, tag, line) of every record line whose checksum is right."""
    found = []
    for line in data.split(b"\n"):
        start = line.find(b"@MBT ")
        match = _RECORD.match(line, start) if start >= 0 else None
        if match and zlib.crc32(match[1]) == int(match[5], 16):
            found.append((int(match[2]), int(match[3]), match[4].decode(), line[start:]))
    return found


def complete_dump_numbers(data: bytes) -> list[int]:
    """Numbers of the dumps whose every line, B to E, is present with a good checksum."""
    by_dump: dict[int, dict[int, tuple[str, bytes]]] = {}
    done = []
    for dump, seq, tag, line in records(data):
        if tag == "B":
            by_dump[dump] = {}
        lines = by_dump.get(dump)
        if lines is None:
            continue
        lines[seq] = (tag, line)
        if tag == "E":
            total = int(re.search(rb"lines=(\d+)", line)[1])
            if sorted(lines) == list(range(total)):
                done.append(dump)
            del by_dump[dump]
    return done
