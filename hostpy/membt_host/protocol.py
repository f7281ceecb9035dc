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
KNOWN_ADDRESS_BYTES = 1 << 20  # S address text kept with its numbers across dumps (a few MB in all)

_HEX = re.compile(rb"[0-9a-f]+\Z")
_HEX_DIGITS = b"0123456789abcdef"
_KEY = re.compile(rb"[a-z0-9_]+\Z")
_TEXT_FIELD = rb"(?:[!-$&-~]++|%[0-9A-F]{2})+"  # 0x21..0x7e except '%', or %XX
_TEXT = re.compile(_TEXT_FIELD + rb"\Z")
_ESCAPE = re.compile(rb"%([0-9A-F]{2})")

# A version-1 record line checked in one match (most lines are S and G: one regex call instead
# of one per field). A line it refuses is corrupt or of another version. An S or G record that does
# not fit its own branch falls to the generic one and is refused there (_payload). The S branch
# takes any address text: Parser._addresses checks it, once per distinct text.
_RECORD = re.compile(
    rb"@MBT 1 ([0-9]+) ([0-9]+) (?:"
    rb"S ([0-9]+) (-|[a-z]+) (.+)"  # stack_id flags addresses
    rb"|G ([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+) ([0-9]+) (" + _TEXT_FIELD + rb")"
    rb"|([A-Z])((?: [^ ]+)*)"  # any other tag: the fields are checked by its own function
    rb") \*([0-9a-f]{8})",
    re.DOTALL,  # "." is any byte
)
_ADDRESSES = re.compile(rb"[0-9a-f]+(?: [0-9a-f]+)*\Z")
_CRC_FIELD = len(" *01234567")

_BEGIN_INT_KEYS = frozenset({"pid", "up_ms", "leak_age_ms", "interval_ms", "depth", "top", "ptr_bits"})
_BEGIN_TEXT_KEYS = frozenset({"reason", "exe"})


@dataclass(slots=True)  # slots: smaller and cheaper for the garbage collector to scan
class Module:
    id: int
    load_bias: int
    lo: int
    hi: int
    build_id: str | None
    path: str


@dataclass(slots=True)
class Stack:
    id: int
    truncated: bool
    addrs: list[int]  # innermost first; empty when the recorder captured no frame


@dataclass(slots=True)
class Group:
    stack_id: int
    live_blocks: int
    live_bytes: int
    old_blocks: int
    old_bytes: int
    oldest_age_ms: int
    thread: str  # "" when unknown


@dataclass(slots=True)
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
    if not _TEXT.match(raw):
        raise _Corrupt("bad text field")
    return _decode_text(raw)


def _decode_text(raw: bytes) -> str:
    """unescape_text of a field already known to be valid text."""
    if raw == b"-":
        return ""
    decoded = _ESCAPE.sub(lambda m: bytes.fromhex(m.group(1).decode()), raw) if b"%" in raw else raw
    return decoded.decode("utf-8", "backslashreplace")


def encode_record(dump: int, seq: int, tag: str, fields: list[str], version: int = VERSION) -> bytes:
    """One record line, checksum included, ending in a newline."""
    body = " ".join([MARKER.decode().rstrip(), str(version), str(dump), str(seq), tag, *fields]).encode("ascii")
    return body + b" *%08x\n" % zlib.crc32(body)


def module_fields(module: Module) -> list[str]:
    """The fields of module's M record, for encode_record (the recorder's side: tests and tools)."""
    return [
        str(module.id),
        f"{module.load_bias:x}",
        f"{module.lo:x}",
        f"{module.hi:x}",
        module.build_id or "-",
        escape_text(module.path),
    ]


def stack_fields(stack: Stack) -> list[str]:
    """The fields of stack's S record, for encode_record."""
    return [str(stack.id), "t" if stack.truncated else "-", *(f"{a:x}" for a in stack.addrs or [0])]


def group_fields(group: Group) -> list[str]:
    """The fields of group's G record, for encode_record."""
    return [
        str(group.stack_id),
        str(group.live_blocks),
        str(group.live_bytes),
        str(group.old_blocks),
        str(group.old_bytes),
        str(group.oldest_age_ms),
        escape_text(group.thread),
    ]


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


def _payload(tag: str, fields: list[bytes]) -> object:
    """The payload of a record that _RECORD's S and G branches did not take."""
    if tag == "B":
        return _begin(fields)
    if tag in ("C", "E"):
        return _int_pairs(fields)
    if tag == "M":
        return _module(fields)
    if tag in ("S", "G"):
        raise _Corrupt(f"bad {tag} record")  # a valid one matches its own branch of _RECORD
    return None  # a record type this reader does not know: it still counts as a line


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
        # dumps are self-contained, so each lists its stacks again: address text -> numbers, kept
        self._known_addresses: dict[bytes, tuple[int, ...]] = {}
        self._known_address_bytes = 0

    # -- bytes to lines ----------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Dump]:
        closed: list[Dump] = []
        if not data:
            return closed
        data = bytes(data)
        self.stats["bytes"] += len(data)
        lines = data.split(b"\n")
        tail = lines.pop()  # after the last newline: the start of a line still arriving
        for line in lines:
            if self._buf or len(line) > MAX_LINE:
                self._buf += line
                self._compress()
                line = bytes(self._buf)
                self._buf.clear()
            self._end_line(line, closed)
        if tail:
            self._buf += tail
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
        if self._long_noise is not None or self._line_had_record:  # the line outgrew MAX_LINE
            long_noise, had_record = self._long_noise, self._line_had_record
            self._long_noise, self._line_had_record = None, False
            if MARKER not in line:
                if not had_record and long_noise is not None:
                    self._add_noise(long_noise + b" [...]")
                return
        end = len(line) - 1 if line.endswith(b"\r") else len(line)
        idx = line.rfind(MARKER)  # a marker holds no "\r": the same with or without it
        if idx < 0:
            if end:
                self._add_noise(line[:end])
            return
        if idx > 0:
            self.stats["corrupt_lines"] += line.count(MARKER, 0, idx)
        if end - idx > MAX_LINE:
            self.stats["corrupt_lines"] += 1
            return
        self._take_record(line, idx, end, closed)

    def _add_noise(self, line: bytes) -> None:
        self.stats["noise_lines"] += 1
        self.noise.append(line[:NOISE_CHARS].decode("utf-8", "replace"))

    # -- lines to records --------------------------------------------------------------------

    def _take_record(self, line: bytes, start: int, end: int, closed: list[Dump]) -> None:
        """line[start:end] is one record, from the marker to the checksum."""
        match = _RECORD.fullmatch(line, start, end)
        if match is None:
            self._refuse(line[start:end])
            return
        (  # the groups of _RECORD: header, S branch, G branch, any other tag, checksum
            dump_text,
            seq_text,
            s_stack_id,
            s_flags,
            s_addrs,
            g_stack_id,
            g_live_blocks,
            g_live_bytes,
            g_old_blocks,
            g_old_bytes,
            g_oldest_age_ms,
            g_thread,
            tag_text,
            fields,
            crc,
        ) = match.groups()
        if int(crc, 16) != zlib.crc32(line[start : end - _CRC_FIELD]):
            self.stats["corrupt_lines"] += 1
            return
        dump_no, seq = int(dump_text), int(seq_text)
        payload: object
        try:
            if s_addrs is not None:
                tag, payload = "S", Stack(int(s_stack_id), b"t" in s_flags, self._addresses(s_addrs))
            elif g_thread is not None:
                tag = "G"
                payload = Group(
                    int(g_stack_id),
                    int(g_live_blocks),
                    int(g_live_bytes),
                    int(g_old_blocks),
                    int(g_old_bytes),
                    int(g_oldest_age_ms),
                    _decode_text(g_thread),
                )
            else:
                tag = tag_text.decode("ascii")
                payload = _payload(tag, fields.split(b" ")[1:])
            if (seq == 0) != (tag == "B"):
                raise _Corrupt("B is line 0 and only B")
        except (_Corrupt, ValueError):
            self.stats["corrupt_lines"] += 1
            return
        self.stats["record_lines"] += 1
        self._on_record(dump_no, seq, tag, payload, closed)

    def _addresses(self, text: bytes) -> list[int]:
        """The numbers of an S record's address field (innermost first; none for "0")."""
        numbers = self._known_addresses.get(text)
        if numbers is None:
            if not _ADDRESSES.match(text):
                raise _Corrupt("bad address")
            numbers = tuple([int(a, 16) for a in text.split()])
            self._known_address_bytes += len(text)
            if self._known_address_bytes > KNOWN_ADDRESS_BYTES:
                self._known_addresses.clear()
                self._known_address_bytes = len(text)
            self._known_addresses[text] = numbers
        return [] if numbers == (0,) else list(numbers)

    def _refuse(self, record: bytes) -> None:
        """Count a record line _RECORD does not take: another format version or corrupt."""
        version = record[len(MARKER) :].partition(b" ")[0]
        # a newer format may checksum differently: any decimal version is "unknown", not corrupt
        unknown = version != b"1" and version.isdigit()  # bytes.isdigit: ASCII digits, False when empty
        self.stats["unknown_version_lines" if unknown else "corrupt_lines"] += 1

    # -- records to dumps --------------------------------------------------------------------

    def _on_record(self, dump_no: int, seq: int, tag: str, payload: object, closed: list[Dump]) -> None:
        if tag == "B":
            if self._open is not None:
                closed.append(self._finish(f"no end record (cut off by the begin of dump {dump_no})"))
            self._start(Dump(number=dump_no, begin=payload), next_seq=1)  # type: ignore[arg-type]
            return
        dump = self._open
        if dump is None or dump.number != dump_no:
            if dump is not None:
                closed.append(self._finish(f"no end record (a line of dump {dump_no} followed)"))
            dump = Dump(number=dump_no)
            dump.problems.append(f"{dump.label()}: begin record missing (joined in the middle, or its line was lost)")
            self._start(dump, next_seq=seq)
        if seq == self._next_seq:
            self._next_seq = seq + 1
        else:
            self._note_gap(dump, seq)
            self._next_seq = max(self._next_seq, seq + 1)
        counts = self._counts
        counts["lines"] += 1
        if tag == "S":
            counts["stacks"] += 1
            self._add_unique(dump, dump.stacks, payload, "stack")  # type: ignore[arg-type]
        elif tag == "G":
            counts["groups"] += 1
            dump.groups.append(payload)  # type: ignore[arg-type]
        elif tag == "C":
            dump.counters = payload  # type: ignore[assignment]
        elif tag == "M":
            counts["modules"] += 1
            self._add_unique(dump, dump.modules, payload, "module")  # type: ignore[arg-type]
        elif tag == "E":
            dump.end = payload  # type: ignore[assignment]
            closed.append(self._finish(None))
            return
        if counts["lines"] > MAX_DUMP_LINES:
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
