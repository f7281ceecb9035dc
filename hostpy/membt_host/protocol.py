"""Push parser for the membt wire format, version 1 (docs/protocol.md is the contract).

Bytes go in through Parser.feed() in chunks of any size, from any transport; finished dumps come
out. Nothing the board (or a noisy cable) sends can make it raise or grow without bound.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from dataclasses import dataclass, field

MARKER = b"@MBT "
VERSION = 1
MAX_LINE = 4096  # a record longer than this is corrupt (protocol.md, "Lines")
MAX_DUMP_LINES = 100_000  # a dump that never ends must not hold memory forever
NOISE_KEEP = 200  # console lines kept for context
NOISE_CHARS = 512  # of a console line that is too long, this much is kept

_DEC = re.compile(rb"[0-9]+\Z")
_HEX = re.compile(rb"[0-9a-f]+\Z")
_HEX_DIGITS = b"0123456789abcdef"
_CRC = re.compile(rb"[0-9a-f]{8}\Z")
_KEY = re.compile(rb"[a-z0-9_]+\Z")
_TEXT = re.compile(rb"(?:[!-$&-~]|%[0-9A-F]{2})+\Z")  # 0x21..0x7e except '%', or %XX
_ESCAPE = re.compile(rb"%([0-9A-F]{2})")
_FLAGS = re.compile(rb"(?:-|[a-z]+)\Z")
_TAG = re.compile(rb"[A-Z]\Z")

_BEGIN_INT_KEYS = frozenset({"pid", "up_ms", "leak_age_ms", "interval_ms", "depth", "top", "ptr_bits"})
_BEGIN_TEXT_KEYS = frozenset({"reason", "exe"})


@dataclass
class Module:
    id: int
    load_bias: int
    lo: int
    hi: int
    build_id: str | None
    path: str


@dataclass
class Stack:
    id: int
    truncated: bool
    addrs: list[int]  # innermost first; empty when the recorder captured no frame


@dataclass
class Group:
    stack_id: int
    live_blocks: int
    live_bytes: int
    old_blocks: int
    old_bytes: int
    oldest_age_ms: int
    thread: str  # "" when unknown


@dataclass
class Dump:
    number: int
    complete: bool = False
    begin: dict = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    modules: dict[int, Module] = field(default_factory=dict)
    stacks: dict[int, Stack] = field(default_factory=dict)
    groups: list[Group] = field(default_factory=list)
    end: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.begin.get("pid")

    def module_of(self, addr: int) -> Module | None:
        """The module whose run-time range holds addr (ranges come from the M records)."""
        for module in self.modules.values():
            if module.lo <= addr < module.hi:
                return module
        return None

    def label(self) -> str:
        pid = self.begin.get("pid")
        return f"dump {self.number}" + (f" (pid {pid})" if pid is not None else "")


class _Corrupt(Exception):
    """A record line that does not parse; counted and dropped, never seen outside this module."""


def escape_text(text: str | bytes) -> str:
    """The protocol's escaping of board text (the recorder's side; used by tests and tools)."""
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    if not raw:
        return "-"
    if raw == b"-":
        return "%2D"
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in raw)


def unescape_text(raw: bytes) -> str:
    """Decode an escaped text field; "-" (empty or unknown) becomes ""."""
    if raw == b"-":
        return ""
    if not _TEXT.match(raw):
        raise _Corrupt("bad text field")
    decoded = _ESCAPE.sub(lambda m: bytes.fromhex(m.group(1).decode()), raw) if b"%" in raw else raw
    return decoded.decode("utf-8", "backslashreplace")


def encode_record(dump: int, seq: int, tag: str, fields: list[str], version: int = VERSION) -> bytes:
    """One record line, checksum included, ending in a newline."""
    body = " ".join([MARKER.decode().rstrip(), str(version), str(dump), str(seq), tag, *fields]).encode("ascii")
    return body + b" *%08x\n" % zlib.crc32(body)


def _dec(raw: bytes) -> int:
    if not raw.isdigit():  # bytes.isdigit: ASCII digits only, False when empty
        raise _Corrupt("not a decimal number")
    return int(raw)


def _hex(raw: bytes) -> int:
    if not raw or raw.translate(None, _HEX_DIGITS):  # anything left is not lower-case hex
        raise _Corrupt("not a hex number")
    return int(raw, 16)


def _pairs(fields: list[bytes]) -> list[tuple[str, bytes]]:
    pairs = []
    for f in fields:
        key, sep, value = f.partition(b"=")
        if not sep or not value or not _KEY.match(key):
            raise _Corrupt("not key=value")
        pairs.append((key.decode("ascii"), value))
    return pairs


def _int_pairs(fields: list[bytes]) -> dict[str, int]:
    return {key: _dec(value) for key, value in _pairs(fields)}


def _begin(fields: list[bytes]) -> dict:
    begin: dict = {}
    for key, value in _pairs(fields):
        if key in _BEGIN_INT_KEYS:
            begin[key] = _dec(value)
        elif key in _BEGIN_TEXT_KEYS:
            begin[key] = unescape_text(value)
        # other keys belong to a later revision of version 1: ignored (protocol.md)
    return begin


def _module(fields: list[bytes]) -> Module:
    if len(fields) != 6:
        raise _Corrupt("M wants 6 fields")
    build_id = None if fields[4] == b"-" else fields[4]
    if build_id is not None and not _HEX.match(build_id):
        raise _Corrupt("bad build-id")
    return Module(
        id=_dec(fields[0]),
        load_bias=_hex(fields[1]),
        lo=_hex(fields[2]),
        hi=_hex(fields[3]),
        build_id=build_id.decode("ascii") if build_id is not None else None,
        path=unescape_text(fields[5]),
    )


def _stack(fields: list[bytes]) -> Stack:
    if len(fields) < 3 or not _FLAGS.match(fields[1]):
        raise _Corrupt("bad S record")
    addrs = [_hex(a) for a in fields[2:]]
    if addrs == [0]:
        addrs = []
    return Stack(id=_dec(fields[0]), truncated=b"t" in fields[1], addrs=addrs)


def _group(fields: list[bytes]) -> Group:
    if len(fields) != 7:
        raise _Corrupt("G wants 7 fields")
    n = [_dec(f) for f in fields[:6]]
    return Group(n[0], n[1], n[2], n[3], n[4], n[5], unescape_text(fields[6]))


class Parser:
    """Feed it bytes; it hands back each dump once the dump is closed (complete or not)."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = {
            "bytes": 0,
            "record_lines": 0,
            "corrupt_lines": 0,
            "unknown_version_lines": 0,
            "noise_lines": 0,
            "complete_dumps": 0,
            "incomplete_dumps": 0,
            "unfinished_lines": 0,
        }
        self.noise: deque[str] = deque(maxlen=NOISE_KEEP)
        self._buf = bytearray()  # the current line so far (bounded by _compress)
        self._long_noise: bytes | None = None  # head of a console line that outgrew MAX_LINE
        self._line_had_record = False  # part of the current line was already taken as a record
        self._open: Dump | None = None
        self._next_seq = 0
        self._counts = {"lines": 0, "modules": 0, "stacks": 0, "groups": 0}
        self._corrupt_at_open = 0

    # -- bytes to lines ----------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Dump]:
        closed: list[Dump] = []
        if not data:
            return closed
        data = bytes(data)
        self.stats["bytes"] += len(data)
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            if self._buf or nl - start > MAX_LINE:
                self._buf += data[start:nl]
                self._compress()
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = data[start:nl]
            self._end_line(line, closed)
            start = nl + 1
        if start < len(data):
            self._buf += data[start:]
            self._compress()
        return closed

    @property
    def idle(self) -> bool:
        """Between dumps and at the start of a line: a good moment to cut the byte stream."""
        return self._open is None and not self._buf and self._long_noise is None and not self._line_had_record

    def close(self) -> list[Dump]:
        """End of input: a last line without newline is taken if it is whole (one cut short by the
        end of input is counted as unfinished_lines, not corrupt); an open dump closes incomplete."""
        closed: list[Dump] = []
        if self._buf or self._long_noise is not None or self._line_had_record:
            line = bytes(self._buf)
            self._buf.clear()
            corrupt_before = self.stats["corrupt_lines"]
            self._end_line(line, closed)
            if self.stats["corrupt_lines"] > corrupt_before:  # the last record was cut by the end of input
                self.stats["corrupt_lines"] -= 1
                self.stats["unfinished_lines"] += 1
        if self._open is not None:
            closed.append(self._finish("no end record (input ended)"))
        return closed

    def _compress(self) -> None:
        """Keep the current line within MAX_LINE while no newline arrives."""
        buf = self._buf
        if len(buf) <= MAX_LINE:
            return
        keep = len(MARKER) - 1  # a marker may be split across chunks
        idx = buf.rfind(MARKER)
        if idx < 0:
            if not self._line_had_record and self._long_noise is None:
                self._long_noise = bytes(buf[:NOISE_CHARS])
            del buf[: len(buf) - keep]
            return
        if idx > 0:
            # earlier markers on this line start records cut short by the later one
            self.stats["corrupt_lines"] += buf.count(MARKER, 0, idx)
            self._line_had_record = True
            del buf[:idx]
        if len(buf) > MAX_LINE:
            self.stats["corrupt_lines"] += 1  # a record over the limit
            self._line_had_record = True
            del buf[: len(buf) - keep]

    def _end_line(self, line: bytes, closed: list[Dump]) -> None:
        long_noise, had_record = self._long_noise, self._line_had_record
        self._long_noise, self._line_had_record = None, False
        if line.endswith(b"\r"):
            line = line[:-1]
        idx = line.rfind(MARKER)
        if idx < 0:
            if had_record:
                return
            if long_noise is not None:
                self._add_noise(long_noise + b" [...]")
            elif line:
                self._add_noise(line)
            return
        if idx > 0:
            self.stats["corrupt_lines"] += line.count(MARKER, 0, idx)
        record = line[idx:]
        if len(record) > MAX_LINE:
            self.stats["corrupt_lines"] += 1
            return
        self._take_record(record, closed)

    def _add_noise(self, line: bytes) -> None:
        self.stats["noise_lines"] += 1
        self.noise.append(line[:NOISE_CHARS].decode("utf-8", "replace"))

    # -- lines to records --------------------------------------------------------------------

    def _take_record(self, record: bytes, closed: list[Dump]) -> None:
        fields = record.split(b" ")
        # fields: @MBT version dump seq tag ... *crc
        version = fields[1] if len(fields) > 1 else b""
        crc = fields[-1]
        body = record[: len(record) - len(crc) - 1]
        crc_ok = (
            len(fields) >= 6 and crc[:1] == b"*" and bool(_CRC.match(crc[1:])) and int(crc[1:], 16) == zlib.crc32(body)
        )
        if version != b"1":
            # a newer format may checksum differently: any decimal version is "unknown", not corrupt
            key = "unknown_version_lines" if _DEC.match(version) else "corrupt_lines"
            self.stats[key] += 1
            return
        if not crc_ok:
            self.stats["corrupt_lines"] += 1
            return
        try:
            if b"" in fields or not _TAG.match(fields[4]):
                raise _Corrupt("empty field or bad tag")
            dump_no, seq, tag = _dec(fields[2]), _dec(fields[3]), fields[4].decode("ascii")
            payload = self._payload(tag, seq, fields[5:-1])
        except (_Corrupt, ValueError):
            self.stats["corrupt_lines"] += 1
            return
        self.stats["record_lines"] += 1
        self._on_record(dump_no, seq, tag, payload, closed)

    @staticmethod
    def _payload(tag: str, seq: int, fields: list[bytes]) -> object:
        if tag == "B":
            if seq != 0:
                raise _Corrupt("B must be line 0")
            return _begin(fields)
        if seq == 0:
            raise _Corrupt("only B is line 0")
        if tag in ("C", "E"):
            return _int_pairs(fields)
        if tag == "M":
            return _module(fields)
        if tag == "S":
            return _stack(fields)
        if tag == "G":
            return _group(fields)
        return None  # a record type this reader does not know: it still counts as a line

    # -- records to dumps --------------------------------------------------------------------

    def _on_record(self, dump_no: int, seq: int, tag: str, payload: object, closed: list[Dump]) -> None:
        if tag == "B":
            if self._open is not None:
                closed.append(self._finish(f"no end record (cut off by the begin of dump {dump_no})"))
            self._start(Dump(number=dump_no, begin=payload), next_seq=1)  # type: ignore[arg-type]
            return
        if self._open is not None and self._open.number != dump_no:
            closed.append(self._finish(f"no end record (a line of dump {dump_no} followed)"))
        if self._open is None:
            dump = Dump(number=dump_no)
            dump.problems.append(f"{dump.label()}: begin record missing (joined in the middle, or its line was lost)")
            self._start(dump, next_seq=seq)
        dump = self._open
        assert dump is not None
        if seq != self._next_seq:
            self._note_gap(dump, seq)
        self._next_seq = max(self._next_seq, seq + 1)
        self._counts["lines"] += 1
        if tag == "C":
            dump.counters = payload  # type: ignore[assignment]
        elif tag == "M":
            self._counts["modules"] += 1
            self._add_unique(dump, dump.modules, payload, "module")
        elif tag == "S":
            self._counts["stacks"] += 1
            self._add_unique(dump, dump.stacks, payload, "stack")
        elif tag == "G":
            self._counts["groups"] += 1
            dump.groups.append(payload)  # type: ignore[arg-type]
        elif tag == "E":
            dump.end = payload  # type: ignore[assignment]
            closed.append(self._finish(None))
            return
        if self._counts["lines"] > MAX_DUMP_LINES:
            closed.append(self._finish(f"no end record after {MAX_DUMP_LINES} lines; dropped the rest"))

    def _start(self, dump: Dump, next_seq: int) -> None:
        self._open = dump
        self._next_seq = next_seq
        self._counts = {"lines": 1 if next_seq == 1 else 0, "modules": 0, "stacks": 0, "groups": 0}
        self._corrupt_at_open = self.stats["corrupt_lines"]

    def _note_gap(self, dump: Dump, seq: int) -> None:
        if seq < self._next_seq:
            dump.problems.append(f"{dump.label()}: line {seq} repeated or out of order")
            return
        lost = self.stats["corrupt_lines"] - self._corrupt_at_open
        why = f" ({lost} corrupt line{'s' if lost != 1 else ''} seen meanwhile)" if lost else ""
        first, last = self._next_seq, seq - 1
        span = f"line {first}" if first == last else f"lines {first}..{last}"
        dump.problems.append(f"{dump.label()}: {span} missing{why}")

    @staticmethod
    def _add_unique(dump: Dump, table: dict, item: Module | Stack, what: str) -> None:
        if item.id in table:
            dump.problems.append(f"{dump.label()}: {what} {item.id} listed twice")
        table[item.id] = item

    def _finish(self, missing_end: str | None) -> Dump:
        dump = self._open
        assert dump is not None
        self._open = None
        if missing_end is not None:
            dump.problems.append(f"{dump.label()}: {missing_end}")
        else:
            self._check_end(dump)
        for group in dump.groups:
            if group.stack_id != 0 and group.stack_id not in dump.stacks:
                dump.problems.append(f"{dump.label()}: group refers to stack {group.stack_id}, which the dump lacks")
        dump.complete = not dump.problems
        self.stats["complete_dumps" if dump.complete else "incomplete_dumps"] += 1
        return dump

    def _check_end(self, dump: Dump) -> None:
        for key, seen in self._counts.items():
            said = dump.end.get(key)
            if said is None:
                dump.problems.append(f"{dump.label()}: end record lacks {key}=")
            elif said != seen:
                dump.problems.append(f"{dump.label()}: end record says {key}={said}, {seen} seen")
