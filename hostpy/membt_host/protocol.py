"""Push parser for the membt wire format, version 1 (docs/protocol.md is the contract).

Bytes go in through Parser.feed() in chunks of any size, from any transport; finished dumps come
out. Nothing the board (or a noisy cable) sends can make it raise or grow without bound.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

MARKER = b"@MBT "
VERSION = 1
MAX_LINE = 4096  # a record longer than this is corrupt (protocol.md, "Lines")

# What one dump may hold: the recorder cannot write more (protocol.md, "Limits"); a dump beyond
# them is refused, so that one dump costs the host a bounded amount of memory and time.
MAX_MODULES = 256  # dump.c MBT_MODULES_MAX
MAX_GROUPS = 1000  # mbt_internal.h MBT_TOP_MAX: the largest MEMBT_TOP
MAX_STACKS = MAX_GROUPS  # one S record per listed group at most
MAX_FRAMES = 64  # membt.h MEMBT_MAX_DEPTH
MAX_DUMP_LINES = 2 + MAX_MODULES + MAX_STACKS + MAX_GROUPS + 1  # B, C, M..., S and G..., E
MAX_BUILD_ID = 64  # hex digits (modules.c keeps 32 bytes of the note)
MAX_PATH = 1024  # bytes of a path before escaping (dump.c MBT_PATH_MAX_IN)
MAX_THREAD = 15  # bytes of a thread name (MBT_THREAD_NAME less its NUL)
MAX_PROBLEMS = 20  # problems kept per dump; the rest are counted
U32, U64 = 1 << 32, 1 << 64  # exclusive upper bounds of the recorder's unsigned fields
_MAX_DIGITS = len(str(U64 - 1))  # no field of the recorder has more decimal digits
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
_COUNTED = {"M": "modules", "S": "stacks", "G": "groups"}  # records the E record counts
_DUMP_LIMITS = {"lines": MAX_DUMP_LINES, "modules": MAX_MODULES, "stacks": MAX_STACKS, "groups": MAX_GROUPS}
_ADDRESSES = re.compile(rb"[0-9a-f]+(?: [0-9a-f]+)*\Z")
_CRC_FIELD = len(" *01234567")

# Known keys and the values the recorder can write for them (as range(lo, hi)): anything else is
# corrupt. Keys a reader does not know are tolerated whatever their value (protocol.md).
_BEGIN_INT_KEYS: dict[str, range] = {
    "pid": range(1, 1 << 31),  # a pid_t
    "up_ms": range(U64),
    "leak_age_ms": range(U32),
    "interval_ms": range(U32),
    "depth": range(1, MAX_FRAMES + 1),
    "top": range(1, MAX_GROUPS + 1),
    "ptr_bits": range(32, 65, 32),  # 32 or 64
}
_BEGIN_TEXT_KEYS = {"reason": 64, "exe": MAX_PATH}  # longest text in bytes
_COUNTER_KEYS = frozenset(
    {
        "live_blocks",
        "live_bytes",
        "old_blocks",
        "old_bytes",
        "stacks",
        "groups",
        "block_cap",
        "stack_cap",
        "dropped_blocks",
        "dropped_stacks",
        "truncated_stacks",
        "unknown_frees",
        "budget_used",
        "budget_total",
        "unwind_cache_hits",
        "unwind_cache_misses",
        "unwind_verified",
        "unwind_mismatches",
    }
)
_END_KEYS: dict[str, range] = {
    "lines": range(3, MAX_DUMP_LINES + 1),
    "modules": range(MAX_MODULES + 1),
    "stacks": range(MAX_STACKS + 1),
    "groups": range(MAX_GROUPS + 1),
    "groups_total": range(U64),
}


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
    _by_address: list[Module] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def pid(self) -> int | None:
        return self.begin.get("pid")

    def module_of(self, addr: int) -> Module | None:
        """The module whose run-time range holds addr (ranges come from the M records; a complete
        dump's do not overlap). A binary search: a dump may list hundreds of modules."""
        by_address = self._by_address
        if len(by_address) != len(self.modules):
            by_address[:] = sorted(self.modules.values(), key=lambda m: (m.lo, m.hi))
        i = bisect_right(by_address, addr, key=lambda m: m.lo) - 1
        if i >= 0 and addr < by_address[i].hi:
            return by_address[i]
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


def unescape_text(raw: bytes, max_bytes: int = MAX_LINE) -> str:
    """Decode an escaped text field; "-" (empty or unknown) becomes "". A text longer than the
    recorder writes (max_bytes before escaping) is corrupt."""
    if not _TEXT.match(raw) or _text_bytes(raw) > max_bytes:
        raise _Corrupt("bad text field")
    return _decode_text(raw)


def _text_bytes(raw: bytes) -> int:
    """How many bytes an escaped text field stands for."""
    return len(raw) - 2 * raw.count(b"%")


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


def _dec(raw: bytes, limit: range = range(U64)) -> int:
    """A decimal field whose value the recorder can write (`limit`); the digits are counted before
    converting, so a field of thousands of digits costs nothing."""
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:  # bytes.isdigit: ASCII digits only, False when empty
        raise _Corrupt("not a decimal number the recorder writes")
    value = int(raw)
    if value not in limit:
        raise _Corrupt("number out of range")
    return value


def _hex(raw: bytes, bits: int = 64) -> int:
    """A hex field that fits `bits` (addresses fit the pointer size)."""
    if not raw or len(raw) > bits // 4 or raw.translate(None, _HEX_DIGITS):  # anything left is not hex
        raise _Corrupt("not a hex number the recorder writes")
    return int(raw, 16)


def _pairs(fields: list[bytes]) -> list[tuple[str, bytes]]:
    """key=value fields; the value may be anything (an empty one is refused by a known key's check)."""
    pairs = []
    for f in fields:
        key, sep, value = f.partition(b"=")
        if not sep or not _KEY.match(key):
            raise _Corrupt("not key=value")
        pairs.append((key.decode("ascii"), value))
    return pairs


def _counts(fields: list[bytes], known: dict[str, range] | frozenset[str]) -> dict[str, int]:
    """C and E: known keys must hold a number the recorder writes; a key this reader does not know
    is kept when its value is such a number and ignored otherwise (newer recorders add keys)."""
    counts: dict[str, int] = {}
    for key, value in _pairs(fields):
        if key in known:
            counts[key] = _dec(value, known[key] if isinstance(known, dict) else range(U64))
        else:
            with contextlib.suppress(_Corrupt):
                counts[key] = _dec(value)
    return counts


def _begin(fields: list[bytes]) -> dict:
    begin: dict = {}
    for key, value in _pairs(fields):
        if key in _BEGIN_INT_KEYS:
            begin[key] = _dec(value, _BEGIN_INT_KEYS[key])
        elif key in _BEGIN_TEXT_KEYS:
            begin[key] = unescape_text(value, _BEGIN_TEXT_KEYS[key])
        # other keys belong to a later revision of version 1: ignored, whatever their value (protocol.md)
    return begin


def _module(fields: list[bytes], bits: int) -> Module:
    if len(fields) != 6:
        raise _Corrupt("M wants 6 fields")
    build_id = None if fields[4] == b"-" else fields[4]
    if build_id is not None and (not _HEX.match(build_id) or len(build_id) > MAX_BUILD_ID or len(build_id) % 2):
        raise _Corrupt("bad build-id")
    module = Module(
        id=_dec(fields[0], range(1, MAX_MODULES + 1)),
        load_bias=_hex(fields[1], bits),
        lo=_hex(fields[2], bits),
        hi=_hex(fields[3], bits),
        build_id=build_id.decode("ascii") if build_id is not None else None,
        path=unescape_text(fields[5], MAX_PATH),
    )
    if module.lo > module.hi:
        raise _Corrupt("module range ends before it starts")
    return module


def _payload(tag: str, fields: list[bytes], bits: int) -> object:
    """The payload of a record that _RECORD's S and G branches did not take."""
    if tag == "B":
        return _begin(fields)
    if tag == "C":
        return _counts(fields, _COUNTER_KEYS)
    if tag == "E":
        return _counts(fields, _END_KEYS)
    if tag == "M":
        return _module(fields, bits)
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
        self._more_problems = 0  # of the open dump, beyond MAX_PROBLEMS
        self._ignoring: int | None = None  # a dump refused for its size: the rest of its lines go
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
        payload: object
        try:
            dump_no, seq = _dec(dump_text), _dec(seq_text, range(MAX_DUMP_LINES))
            bits = self._pointer_bits(dump_no)
            if s_addrs is not None:
                tag = "S"
                payload = Stack(_dec(s_stack_id, range(1, U32)), b"t" in s_flags, self._addresses(s_addrs, bits))
            elif g_thread is not None:
                tag = "G"
                payload = Group(
                    _dec(g_stack_id, range(U32)),
                    _dec(g_live_blocks),
                    _dec(g_live_bytes),
                    _dec(g_old_blocks),
                    _dec(g_old_bytes),
                    _dec(g_oldest_age_ms, range(U32)),
                    unescape_text(g_thread, MAX_THREAD),
                )
            else:
                tag = tag_text.decode("ascii")
                payload = _payload(tag, fields.split(b" ")[1:], bits)
            if (seq == 0) != (tag == "B"):
                raise _Corrupt("B is line 0 and only B")
        except (_Corrupt, ValueError):
            self.stats["corrupt_lines"] += 1
            return
        self.stats["record_lines"] += 1
        self._on_record(dump_no, seq, tag, payload, closed)

    def _pointer_bits(self, dump_no: int) -> int:
        """The pointer size of the dump a line belongs to (64 until its B record said otherwise)."""
        dump = self._open
        if dump is not None and dump.number == dump_no:
            return dump.begin.get("ptr_bits", 64)
        return 64

    def _addresses(self, text: bytes, bits: int) -> list[int]:
        """The numbers of an S record's address field (innermost first; none for "0"): at most
        MAX_FRAMES of them, each fitting the pointer size."""
        numbers = self._known_addresses.get(text)
        if numbers is None:
            if not _ADDRESSES.match(text):
                raise _Corrupt("bad address")
            words = text.split()
            if len(words) > MAX_FRAMES or max(map(len, words)) > 16:
                raise _Corrupt("more frames than the recorder keeps, or an address wider than 64 bits")
            numbers = tuple([int(a, 16) for a in words])
            self._known_address_bytes += len(text)
            if self._known_address_bytes > KNOWN_ADDRESS_BYTES:
                self._known_addresses.clear()
                self._known_address_bytes = len(text)
            self._known_addresses[text] = numbers
        if bits < 64 and max(numbers) >> bits:
            raise _Corrupt("address wider than the pointer size")
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
            self._ignoring = None
            if self._open is not None:
                closed.append(self._finish(f"no end record (cut off by the begin of dump {dump_no})"))
            self._start(Dump(number=dump_no, begin=payload), next_seq=1)  # type: ignore[arg-type]
            return
        if self._ignoring == dump_no:
            return
        self._ignoring = None
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
        kind = _COUNTED.get(tag)
        if kind is not None:
            counts[kind] += 1
        for what in ("lines", kind):
            if what is not None and counts[what] > _DUMP_LIMITS[what]:
                limit = _DUMP_LIMITS[what]
                closed.append(self._finish(f"more than {limit} {what}, more than the recorder writes; rest ignored"))
                self._ignoring = dump_no
                return
        if tag == "S":
            self._add_unique(dump, dump.stacks, payload, "stack")  # type: ignore[arg-type]
        elif tag == "G":
            dump.groups.append(payload)  # type: ignore[arg-type]
        elif tag == "C":
            dump.counters = payload  # type: ignore[assignment]
        elif tag == "M":
            self._add_unique(dump, dump.modules, payload, "module")  # type: ignore[arg-type]
        elif tag == "E":
            dump.end = payload  # type: ignore[assignment]
            closed.append(self._finish(None))

    def _start(self, dump: Dump, next_seq: int) -> None:
        self._open = dump
        self._next_seq = next_seq
        self._counts = {"lines": 1 if next_seq == 1 else 0, "modules": 0, "stacks": 0, "groups": 0}
        self._corrupt_at_open = self.stats["corrupt_lines"]
        self._more_problems = 0

    def _problem(self, dump: Dump, text: str) -> None:
        """One problem of the open dump; beyond MAX_PROBLEMS they are only counted."""
        if len(dump.problems) < MAX_PROBLEMS:
            dump.problems.append(f"{dump.label()}: {text}")
        else:
            self._more_problems += 1

    def _note_gap(self, dump: Dump, seq: int) -> None:
        if seq < self._next_seq:
            self._problem(dump, f"line {seq} repeated or out of order")
            return
        lost = self.stats["corrupt_lines"] - self._corrupt_at_open
        why = f" ({lost} corrupt line{'s' if lost != 1 else ''} seen meanwhile)" if lost else ""
        first, last = self._next_seq, seq - 1
        span = f"line {first}" if first == last else f"lines {first}..{last}"
        self._problem(dump, f"{span} missing{why}")

    def _add_unique(self, dump: Dump, table: dict, item: Module | Stack, what: str) -> None:
        if item.id in table:
            self._problem(dump, f"{what} {item.id} listed twice")
        table[item.id] = item

    def _finish(self, missing_end: str | None) -> Dump:
        dump = self._open
        assert dump is not None
        self._open = None
        if missing_end is not None:
            self._problem(dump, missing_end)
        else:
            self._check_end(dump)
        for group in dump.groups:
            if group.stack_id != 0 and group.stack_id not in dump.stacks:
                self._problem(dump, f"group refers to stack {group.stack_id}, which the dump lacks")
        by_address = sorted(dump.modules.values(), key=lambda m: (m.lo, m.hi))
        for before, after in zip(by_address, by_address[1:], strict=False):
            if after.lo < before.hi:
                self._problem(dump, f"modules {before.id} and {after.id} overlap")
        if self._more_problems:
            dump.problems.append(f"{dump.label()}: and {self._more_problems} more problems")
            self._more_problems = 0
        dump.complete = not dump.problems
        self.stats["complete_dumps" if dump.complete else "incomplete_dumps"] += 1
        return dump

    def _check_end(self, dump: Dump) -> None:
        for key, seen in self._counts.items():
            said = dump.end.get(key)
            if said is None:
                self._problem(dump, f"end record lacks {key}=")
            elif said != seen:
                self._problem(dump, f"end record says {key}={said}, {seen} seen")
