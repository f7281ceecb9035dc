"""Parser behaviour a user relies on: damaged input is counted and skipped, valid dumps always come through."""

import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from membt_host.protocol import (
    KNOWN_ADDRESS_BYTES,
    MAX_LINE,
    Dump,
    Group,
    Module,
    Parser,
    Stack,
    encode_record,
    escape_text,
    group_fields,
    module_fields,
    stack_fields,
    unescape_text,
)

from wire_json import parse_all


def make_dump(number: int = 1, pid: int = 10, *, thread: str = "main", exe: str = "/bin/app") -> list[bytes]:
    return [
        encode_record(
            number,
            0,
            "B",
            [f"pid={pid}", "up_ms=100", "reason=timer", f"exe={escape_text(exe)}"],
        ),
        encode_record(number, 1, "C", ["live_blocks=1", "live_bytes=8"]),
        encode_record(number, 2, "M", module_fields(Module(1, 0, 0x1000, 0x2000, None, exe))),
        encode_record(number, 3, "S", stack_fields(Stack(5, False, [0x1234]))),
        encode_record(number, 4, "G", group_fields(Group(5, 1, 8, 1, 8, 9000, thread))),
        encode_record(
            number,
            5,
            "E",
            ["lines=6", "modules=1", "stacks=1", "groups=1", "groups_total=1"],
        ),
    ]


def test_escape_round_trip_and_special_cases():
    assert escape_text("") == "-" and unescape_text(b"-") == ""
    assert escape_text("-") == "%2D" and unescape_text(b"%2D") == "-"
    assert escape_text("a b%c") == "a%20b%25c"
    for text in ["worker 1", "/opt/x y/100%", "ünï", "tab\there", "--"]:
        assert unescape_text(escape_text(text).encode()) == text


def test_checksum_covers_marker_to_before_star():
    line = encode_record(3, 0, "B", ["pid=1"])
    body, crc = line.rstrip(b"\n").rsplit(b" *", 1)
    assert body == b"@MBT 1 3 0 B pid=1"
    assert int(crc, 16) == zlib.crc32(body)


def test_record_after_any_prefix_is_found():
    stream = b"".join(b"<6>[ 1.0] daemon.err app[1]: " + line for line in make_dump())
    (dump,), parser = parse_all(stream)
    assert dump.complete and parser.stats["noise_lines"] == 0


def test_crlf_and_missing_final_newline():
    lines = make_dump()
    stream = b"".join(line.replace(b"\n", b"\r\n") for line in lines)[:-2]  # no newline after E
    (dump,), _ = parse_all(stream)
    assert dump.complete


def test_bad_escape_or_double_space_is_corrupt_even_with_good_checksum():
    lines = make_dump()
    for bad in (
        b"@MBT 1 1 4 G 5 1 8 1 8 9000 ma%zzin",
        b"@MBT 1 1 4 G 5 1  8 1 8 9000 main",
    ):
        broken = lines[:4] + [bad + b" *%08x\n" % zlib.crc32(bad)] + lines[5:]
        (dump,), parser = parse_all(b"".join(broken))
        assert parser.stats["corrupt_lines"] == 1
        assert not dump.complete and "line 4 missing" in dump.problems[0]


@pytest.mark.parametrize(
    "tag, fields",
    [
        ("S", ["5", "-", "12AB"]),  # hex is lower case
        ("S", ["5", "-", "0x12ab"]),
        ("S", ["5", "-", "12ab", ""]),  # trailing space
        ("S", ["5", "-", "", "12ab"]),  # double space
        ("S", ["5", "-"]),  # no address: a stack without frames is written "0"
        ("S", ["5", "T", "12ab"]),  # flags are lower-case letters or "-"
        ("S", ["5", "", "12ab"]),
        ("S", ["-5", "-", "12ab"]),
        ("S", ["5", "-", "12ab", "%20"]),
        ("G", ["5", "1", "8", "1", "8", "9000"]),  # thread missing
        ("G", ["5", "1", "8", "1", "8", "9000", "main", "x"]),
        ("G", ["5", "1", "8", "1", "8", "9e3", "main"]),
        ("G", ["5", "1", "8", "1", "8", "9000", "ma%zzin"]),
        ("G", ["5", "1", "8", "1", "8", "9000", "ma\tin"]),
        ("G", ["5", "1", "8", "1", "", "8", "main"]),
        ("M", ["1", "0", "1000", "2000", "-"]),
        ("M", ["1", "0", "1000", "2000", "AB12", "/bin/app"]),
        ("M", ["1", "0", "1000", "x2000", "-", "/bin/app"]),
        ("M", ["1", "0", "1000", "2000", "-", "/bin/a%2"]),
    ],
)
def test_malformed_fields_are_corrupt_even_with_good_checksum(tag, fields):
    lines = make_dump()
    seq = {"M": 2, "S": 3, "G": 4}[tag]
    broken = lines[:seq] + [encode_record(1, seq, tag, fields)] + lines[seq + 1 :]
    (dump,), parser = parse_all(b"".join(broken))
    assert parser.stats["corrupt_lines"] == 1 and parser.stats["record_lines"] == 5
    assert not dump.complete and f"line {seq} missing (1 corrupt line seen meanwhile)" in dump.problems[0]


def test_stack_of_one_zero_address_has_no_frames():
    lines = make_dump()
    for zero in ("0", "00"):
        lines[3] = encode_record(1, 3, "S", ["5", "t", zero])
        (dump,), _ = parse_all(b"".join(lines))
        assert dump.complete and dump.stacks[5] == Stack(5, True, [])


def test_repeated_stacks_give_each_dump_its_own_address_list():
    parser = Parser()
    first, second = parser.feed(b"".join(make_dump(1) + make_dump(2)))
    assert first.stacks[5].addrs == second.stacks[5].addrs == [0x1234]
    first.stacks[5].addrs.append(1)  # a consumer changing one dump leaves the others alone
    (third,) = parser.feed(b"".join(make_dump(3)))
    assert second.stacks[5].addrs == third.stacks[5].addrs == [0x1234]


def test_a_refused_address_text_stays_refused_when_repeated():
    bad = encode_record(1, 3, "S", ["5", "-", "12AB"])
    lines = make_dump()
    (dump1, dump2), parser = parse_all(b"".join(lines[:3] + [bad] + lines[4:]) * 2)
    assert parser.stats["corrupt_lines"] == 2 and not dump1.complete and not dump2.complete


def test_address_memory_stays_bounded_over_many_distinct_stacks():
    parser = Parser()
    addrs = [f"{0x7F0000000000 + i:x}" for i in range(16)]
    for n in range(1, 1 + 2 * KNOWN_ADDRESS_BYTES // 200):
        lines = make_dump(n)
        lines[3] = encode_record(n, 3, "S", ["5", "-", *addrs[1:], f"{n:x}"])
        (dump,) = parser.feed(b"".join(lines))
        assert dump.complete and dump.stacks[5].addrs[-1] == n
    assert parser._known_address_bytes <= KNOWN_ADDRESS_BYTES
    assert sum(map(len, parser._known_addresses)) == parser._known_address_bytes


def test_record_helpers_are_what_the_parser_reads():
    module = Module(3, 0x7F00, 0x7F1000, 0x7F9000, "ab12", "/opt/my lib.so")
    stack, bare = Stack(9, True, [0x7F1234, 0x7F5678]), Stack(10, False, [])
    group = Group(9, 2, 64, 1, 32, 5000, "worker 1")
    assert module_fields(module) == ["3", "7f00", "7f1000", "7f9000", "ab12", "/opt/my%20lib.so"]
    assert stack_fields(stack) == ["9", "t", "7f1234", "7f5678"] and stack_fields(bare) == ["10", "-", "0"]
    assert group_fields(group) == ["9", "2", "64", "1", "32", "5000", "worker%201"]
    lines = make_dump()
    lines[2] = encode_record(1, 2, "M", module_fields(module))
    lines[3] = encode_record(1, 3, "S", stack_fields(stack))
    lines[4] = encode_record(1, 4, "G", group_fields(group))
    (dump,), _ = parse_all(b"".join(lines))
    assert (dump.modules, dump.stacks, dump.groups) == ({3: module}, {9: stack}, [group])


def test_new_begin_closes_open_dump_as_incomplete():
    first, second = make_dump(1), make_dump(2)
    parser = Parser()
    assert parser.feed(b"".join(first[:3])) == []
    closed = parser.feed(b"".join(second))
    assert [(d.number, d.complete) for d in closed] == [(1, False), (2, True)]
    assert "cut off by the begin of dump 2" in closed[0].problems[0]


def test_close_ends_an_open_dump():
    parser = Parser()
    assert parser.feed(b"".join(make_dump()[:4])) == []
    (dump,) = parser.close()
    assert not dump.complete and "input ended" in dump.problems[0]
    assert parser.stats["incomplete_dumps"] == 1


def test_end_counts_must_match():
    lines = make_dump()
    lines[5] = encode_record(1, 5, "E", ["lines=6", "modules=1", "stacks=2", "groups=1", "groups_total=1"])
    (dump,), _ = parse_all(b"".join(lines))
    assert not dump.complete and dump.problems == ["dump 1 (pid 10): end record says stacks=2, 1 seen"]


def test_unknown_version_and_unknown_keys_and_tags():
    lines = make_dump()
    lines[0] = encode_record(1, 0, "B", ["pid=10", "future_key=xyz", "up_ms=100"])
    lines.insert(5, encode_record(1, 5, "Z", ["whatever"]))  # a record type this reader does not know
    lines[6] = encode_record(1, 6, "E", ["lines=7", "modules=1", "stacks=1", "groups=1", "groups_total=1"])
    lines.insert(2, encode_record(1, 2, "C", ["x=1"], version=2))
    (dump,), parser = parse_all(b"".join(lines))
    assert dump.complete and dump.begin == {"pid": 10, "up_ms": 100}
    assert parser.stats["unknown_version_lines"] == 1 and parser.stats["corrupt_lines"] == 0


def test_overlong_record_is_corrupt_but_next_line_survives():
    addrs = ["deadbeef"] * (MAX_LINE // 9 + 10)
    huge = encode_record(1, 3, "S", ["5", "-", *addrs])
    lines = make_dump()
    (dump,), parser = parse_all(b"".join(lines[:3] + [huge] + lines[4:]), chunk=1000)
    assert parser.stats["corrupt_lines"] == 1
    assert not dump.complete and dump.groups[0].live_bytes == 8


def test_memory_stays_bounded_on_endless_garbage():
    parser = Parser()
    for _ in range(2000):  # 16 MB without a newline, markers included
        assert parser.feed(b"x" * 8000 + b"@MBT 1 1 1 C ") == []
        assert len(parser._buf) <= MAX_LINE
    parser.feed(b"\n")
    assert parser.stats["corrupt_lines"] > 0
    (dump,) = parse_all(b"".join(make_dump()))[0]
    assert dump.complete


def test_noise_is_bounded_and_kept_in_order():
    parser = Parser()
    parser.feed(b"".join(b"console line %d\n" % i for i in range(1000)))
    assert parser.stats["noise_lines"] == 1000
    assert list(parser.noise)[-1] == "console line 999" and len(parser.noise) < 1000


def test_dump_fields_match_the_records():
    (dump,), _ = parse_all(b"".join(make_dump(7, 99, thread="worker 1", exe="/usr/bin/my app")))
    assert dump == Dump(
        number=7,
        complete=True,
        begin={"pid": 99, "up_ms": 100, "reason": "timer", "exe": "/usr/bin/my app"},
        counters={"live_blocks": 1, "live_bytes": 8},
        modules={1: Module(1, 0, 0x1000, 0x2000, None, "/usr/bin/my app")},
        stacks={5: Stack(5, False, [0x1234])},
        groups=[Group(5, 1, 8, 1, 8, 9000, "worker 1")],
        end={"lines": 6, "modules": 1, "stacks": 1, "groups": 1, "groups_total": 1},
        problems=[],
    )
    assert dump.module_of(0x1234) is dump.modules[1] and dump.module_of(0x2000) is None


# -- property tests ----------------------------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
# the recorder keeps 15 bytes of a thread name (a longer one is corrupt)
thread_names = texts.map(lambda t: t.encode()[:15].decode("utf-8", "ignore"))


@st.composite
def valid_dumps(draw, number: int) -> tuple[list[bytes], Dump]:
    pid = draw(st.integers(1, 2**22))
    exe = draw(texts)
    n_mod = draw(st.integers(1, 3))
    modules = {
        i: Module(
            i,
            draw(st.integers(0, 2**48)),
            i << 20,
            (i << 20) + 0x1000,
            draw(st.one_of(st.none(), st.just("ab12"))),
            draw(texts),
        )
        for i in range(1, n_mod + 1)
    }
    stack_ids = draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=4, unique=True))
    stacks = {
        s: Stack(
            s,
            draw(st.booleans()),
            draw(st.lists(st.integers(1, 2**64 - 1), min_size=0, max_size=6)),
        )
        for s in stack_ids
    }
    groups = [
        Group(s, *draw(st.tuples(*[st.integers(0, 2**40)] * 4)), draw(st.integers(0, 2**32 - 1)), draw(thread_names))
        for s in stack_ids + [0][: draw(st.integers(0, 1))]
    ]
    lines = [encode_record(number, 0, "B", [f"pid={pid}", "up_ms=5", f"exe={escape_text(exe)}"])]
    lines.append(encode_record(number, 1, "C", ["dropped_blocks=0"]))
    for m in modules.values():
        lines.append(encode_record(number, len(lines), "M", module_fields(m)))
    for s in stacks.values():
        lines.append(encode_record(number, len(lines), "S", stack_fields(s)))
    for g in groups:
        lines.append(encode_record(number, len(lines), "G", group_fields(g)))
    counts = [
        f"lines={len(lines) + 1}",
        f"modules={len(modules)}",
        f"stacks={len(stacks)}",
        f"groups={len(groups)}",
    ]
    lines.append(encode_record(number, len(lines), "E", [*counts, "groups_total=9"]))
    expected = Dump(
        number=number,
        complete=True,
        begin={"pid": pid, "up_ms": 5, "exe": exe},
        counters={"dropped_blocks": 0},
        modules=modules,
        stacks=stacks,
        groups=groups,
        end={
            "lines": len(lines),
            "modules": len(modules),
            "stacks": len(stacks),
            "groups": len(groups),
            "groups_total": 9,
        },
        problems=[],
    )
    return lines, expected


garbage = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=64).map(lambda b: b + b"@MBT " + b),
    st.sampled_from([b"@MBT 1 1 3 G 5", b"@MBT 2 1 0 B x *00000000\n", b"\r\n", b"@MBT", b"@MB"]),
    st.integers(4000, 9000).map(lambda n: b"\x7f" * n),
)


@st.composite
def streams_with_garbage(draw):
    dumps = [draw(valid_dumps(n)) for n in range(1, draw(st.integers(1, 4)) + 1)]
    parts: list[bytes] = []
    for lines, _ in dumps:
        for line in lines:
            if draw(st.integers(0, 3)) == 0:
                parts.append(draw(garbage))  # garbage at the start of any line, even without a newline
            parts.append(line)
    parts.append(draw(garbage))
    return b"".join(parts), [expected for _, expected in dumps]


def feed_in_chunks(data: bytes, cuts: list[int]) -> tuple[list[Dump], Parser]:
    parser = Parser()
    dumps: list[Dump] = []
    last = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        dumps += parser.feed(data[last:cut])
        assert len(parser._buf) <= MAX_LINE
        last = max(last, cut)
    return dumps + parser.close(), parser


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(streams_with_garbage(), st.lists(st.integers(0, 10**6), max_size=20))
def test_valid_dumps_survive_garbage_between_lines(stream, cuts):
    data, expected = stream
    dumps, _ = feed_in_chunks(data, cuts)
    complete = [d for d in dumps if d.complete]
    assert complete == expected


@st.composite
def mutated(draw):
    data = bytearray(b"".join(line for n in range(1, 3) for line in draw(valid_dumps(n))[0]))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "duplicate"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 200))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(max_size=40))
        elif kind == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 300))]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=3000), mutated()),
    st.lists(st.integers(0, 10**6), max_size=10),
)
def test_any_input_never_raises_and_every_dump_is_judged(data, cuts):
    dumps, parser = feed_in_chunks(data, cuts)
    for dump in dumps:
        assert dump.complete == (not dump.problems)
    assert parser.stats["complete_dumps"] + parser.stats["incomplete_dumps"] == len(dumps)
    assert all(v >= 0 for v in parser.stats.values())


def test_marker_split_across_chunks_after_a_long_garbage_run():
    lines = make_dump()
    parser = Parser()
    dumps = parser.feed(b"x" * 5000 + lines[0][:3])  # "...xxx@MB" with no newline yet
    dumps += parser.feed(lines[0][3:] + b"".join(lines[1:]))
    assert [d.complete for d in dumps] == [True]
