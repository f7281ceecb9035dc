"""The parser, the analysis and the three reporters under hostile values, not only hostile chunking:
numbers beyond what the recorder writes (and beyond a float), unknown keys with any value, invalid
UTF-8, control and bidi characters, absurd counts, duplicated and reordered records. Every line is
built with a valid checksum, so nothing is refused for a checksum: the values themselves are on trial.
The end of the file runs the real membt-host on hostile capture files.

What must hold: nothing raises, nothing ends the session, the JSON is strict (no NaN or Infinity),
the reports render and show board text harmlessly, and what one dump or one session keeps is bounded.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from membt_host.analysis import GROWING, Analysis
from membt_host.protocol import Dump, Parser, escape_text
from membt_host.reporters.html import HtmlReporter
from membt_host.reporters.json import JsonReporter
from membt_host.reporters.text import TextReporter
from membt_host.symbolize import Frame, Symbolizer, SymStack

from synthetic import dump as synthetic_dump

HOSTPY = Path(__file__).resolve().parents[2] / "hostpy"
U64 = 2**64
BIDI_AND_FORMAT = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200e\u200f\ufeff"
TERMINAL_ATTACK = b"\x1b]0;pwned\x07\x1b[2J\x1b[1;1H$ "


# -- building lines: every record with a valid checksum ---------------------------------------


def record(dump: int, seq: int, tag: str, fields: list[bytes | str]) -> bytes:
    """One record line with a valid checksum, whatever the fields hold (any bytes)."""
    parts = [f.encode() if isinstance(f, str) else f for f in fields]
    body = b" ".join([b"@MBT 1", str(dump).encode(), str(seq).encode(), tag.encode(), *parts])
    return body + b" *%08x\n" % zlib.crc32(body)


def wire_dump(
    number: int,
    up_ms: int | str = 1000,
    *,
    pid: int | str = 77,
    live_bytes: int | str | None = None,
    counters: list[str] = (),
    end_extra: list[str] = (),
    groups: list[tuple] | None = None,
    modules: int = 1,
    frames: int = 2,
    thread: bytes = b"main",
    exe: bytes = b"/usr/bin/app",
    build_id: str = "-",
) -> bytes:
    """A dump as the recorder writes it; every field can be replaced by a hostile one.
    groups: (stack_id, live_blocks, live_bytes, old_blocks, old_bytes, oldest_age_ms)."""
    if groups is None:
        lb = 1000 * number if live_bytes is None else live_bytes
        groups = [(5, number, lb, number, lb, 3000)]
    lines = [
        [
            "B",
            f"pid={pid}",
            f"up_ms={up_ms}",
            "leak_age_ms=2000",
            "interval_ms=1000",
            "depth=16",
            "top=10",
            "ptr_bits=64",
            "reason=timer",
            b"exe=" + escape_text(exe).encode(),
        ],
        ["C", "live_blocks=1", f"live_bytes={live_bytes if live_bytes is not None else 1}", *counters],
    ]
    for m in range(1, modules + 1):
        lines.append(
            ["M", str((m - 1) % 256 + 1), "0", f"{m << 24:x}", f"{(m << 24) + 0x100000:x}", build_id, "/usr/bin/app"]
        )
    stacks = 0
    for stack_id, *values in groups:
        if stack_id:
            lines.append(["S", str(stack_id), "-", *(f"{0x1000020 + stack_id * 64 + k:x}" for k in range(frames))])
            stacks += 1
        lines.append(["G", str(stack_id), *(str(v) for v in values), escape_text(thread)])
    lines.append(
        [
            "E",
            f"lines={len(lines) + 1}",
            f"modules={modules}",
            f"stacks={stacks}",
            f"groups={len(groups)}",
            f"groups_total={len(groups)}",
            *end_extra,
        ]
    )
    return b"".join(record(number, seq, tag, fields) for seq, (tag, *fields) in enumerate(lines))


def good_session(dumps: int = 30, pid: int = 77) -> bytes:
    """A leak that grows by 1000 bytes a dump."""
    return b"".join(wire_dump(n, n * 1000, pid=pid) for n in range(1, dumps + 1))


# -- the pipeline: parser -> symbolizer -> analysis -> reporters ------------------------------


class Run:
    def __init__(self, data: bytes, chunk: int | None = None) -> None:
        self.parser = Parser()
        self.analysis = Analysis()
        self.symbolizer = Symbolizer()
        self.dumps: list[Dump] = []
        step = chunk or max(len(data), 1)
        for i in range(0, len(data), step):
            self._use(self.parser.feed(data[i : i + step]))
        self._use(self.parser.close())
        self.summary = self.analysis.summary(self.parser.stats, self.symbolizer.problems)

    def _use(self, dumps: list[Dump]) -> None:
        for d in dumps:
            self.dumps.append(d)
            self.analysis.add(d, self.symbolizer.symbolize(d) if d.complete else {})

    @property
    def complete(self) -> list[Dump]:
        return [d for d in self.dumps if d.complete]

    def text(self, live: bool = False) -> str:
        out = io.StringIO()
        TextReporter.from_analysis(self.summary, 10, live=live).render(out)
        return out.getvalue()

    def json_text(self) -> str:
        out = io.StringIO()
        JsonReporter.from_analysis(self.summary).render(out)
        return out.getvalue()

    def html(self) -> str:
        out = io.StringIO()
        HtmlReporter.from_analysis(self.summary, 10).render(out)
        return out.getvalue()


def strict_json(text: str) -> dict:
    """json.loads that refuses NaN, Infinity and -Infinity (what JavaScript and jq refuse)."""

    def refuse(name: str) -> None:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def assert_reports_sound(run: Run) -> dict:
    """All three reports render; the JSON is strict; board text cannot drive a terminal or a page."""
    doc = strict_json(run.json_text())
    for text in (run.text(), run.text(live=True)):
        assert "\x1b" not in text and "\x07" not in text
        assert not set(text) & set(BIDI_AND_FORMAT)
    page = run.html()
    assert page.endswith("</html>\n") and "<script" not in page.lower()
    assert "\x1b" not in page and not set(page) & set(BIDI_AND_FORMAT)
    return doc


# -- item 6: values the recorder cannot write -------------------------------------------------


def test_a_number_beyond_a_float_is_a_corrupt_line_and_the_rest_is_kept():
    """One number above 1.8e308 used to end the session (OverflowError) with 30 good dumps read."""
    run = Run(good_session(30) + wire_dump(31, 31000, live_bytes=10**309) + wire_dump(32, 32000))
    assert len(run.complete) == 31 and [d.number for d in run.complete][-1] == 32
    assert run.parser.stats["corrupt_lines"] == 2  # C and G of dump 31
    doc = assert_reports_sound(run)
    assert doc["dumps"]["count"] == 31 and doc["problems"]["corrupt_lines"] == 2
    assert doc["problems"]["incomplete_dumps"] == 1
    assert doc["suspects"][0]["class"] == GROWING


def test_values_near_the_float_limit_never_write_infinity():
    """Values near 1e307 used to reach the analysis and write Infinity into the JSON."""
    data = good_session(30) + wire_dump(31, 31000, live_bytes=10**307) + wire_dump(32, 32000, live_bytes=10**308)
    run = Run(data)
    doc = assert_reports_sound(run)  # strict_json refuses Infinity
    assert doc["dumps"]["count"] == 30 and doc["problems"]["incomplete_dumps"] == 2


@pytest.mark.parametrize(
    "field, largest",
    [
        ("live_bytes", U64 - 1),  # counts and sizes: 64 bits
        ("up_ms", U64 - 1),
        ("pid", 2**31 - 1),  # a pid_t
        ("oldest_age_ms", 2**32 - 1),  # 32-bit ages
    ],
)
def test_each_field_holds_what_the_recorder_writes_and_no_more(field, largest):
    def one(value: int) -> Run:
        if field == "oldest_age_ms":
            return Run(wire_dump(1, groups=[(5, 1, 8, 1, 8, value)]))
        return Run(wire_dump(1, **{field: value}))

    fits, beyond = one(largest), one(largest + 1)
    assert len(fits.complete) == 1 and fits.parser.stats["corrupt_lines"] == 0
    assert not beyond.complete and beyond.parser.stats["corrupt_lines"] >= 1
    assert_reports_sound(fits)
    assert_reports_sound(beyond)


def test_largest_values_everywhere_give_finite_strict_reports():
    """Every count at 2^64-1 and the clock at its end: the analysis' arithmetic stays finite."""
    top = U64 - 1
    data = b"".join(
        wire_dump(n, top - (10 - n) * 1000, live_bytes=top, groups=[(5, top, top, top, top, 2**32 - 1)])
        for n in range(1, 11)
    )
    run = Run(data)
    assert len(run.complete) == 10
    doc = assert_reports_sound(run)
    assert doc["suspects"][0]["live_bytes"] == top


@pytest.mark.parametrize(
    "value",
    ["", "-1", "1e9", "nan", "inf", "0x10", "+5", "1_000", "\uff11\uff12", "9" * 30],
)
def test_a_known_key_with_a_value_the_recorder_cannot_write_is_corrupt(value):
    data = good_session(3)
    bad = [record(4, 0, "B", ["pid=77", "up_ms=4000"]), record(4, 1, "C", [b"live_bytes=" + value.encode()])]
    bad.append(record(4, 2, "E", ["lines=3", "modules=0", "stacks=0", "groups=0", "groups_total=0"]))
    run = Run(data + b"".join(bad) + wire_dump(5, 5000))
    assert [d.number for d in run.complete] == [1, 2, 3, 5]
    assert run.parser.stats["corrupt_lines"] == 1
    assert_reports_sound(run)


# -- item 7: unknown keys, any value ----------------------------------------------------------


def test_unknown_counter_and_end_keys_with_any_value_leave_dumps_complete():
    """Used to make every dump incomplete, though the protocol says readers tolerate such keys."""
    odd = ["future=abc", "ratio=0.5", "neg=-1", "huge=" + "9" * 400, "pct=%zz", "text=\x7f\xff", "inf=inf", "empty="]
    data = b"".join(
        wire_dump(n, n * 1000, counters=[odd[n % len(odd)], "newer_count=12"], end_extra=["note=hello" + str(n)])
        for n in range(1, 11)
    )
    run = Run(data)
    assert len(run.complete) == 10 and run.parser.stats["corrupt_lines"] == 0
    assert run.complete[0].counters["newer_count"] == 12  # an unknown numeric key is kept
    assert "future" not in run.complete[-1].counters
    doc = assert_reports_sound(run)
    assert doc["suspects"][0]["class"] == GROWING


# -- item 12: one dump is bounded by what the recorder can write ------------------------------


@pytest.mark.parametrize(
    "hostile, why",
    [
        (dict(groups=[(i, 1, 8, 1, 8, 3000) for i in range(1, 1002)]), "more than 1000 stacks"),
        (dict(groups=[(0, 1, 8, 1, 8, 3000)] * 1001), "more than 1000 groups"),
        (dict(modules=257), "more than 256 modules"),
    ],
    ids=["1001 stacks", "1001 groups", "257 modules"],
)
def test_a_dump_beyond_the_recorder_caps_is_refused_in_one_problem(hostile, why):
    run = Run(good_session(5) + wire_dump(6, 6000, **hostile) + wire_dump(7, 7000))
    (refused,) = [d for d in run.dumps if not d.complete]
    assert refused.number == 6
    assert refused.problems[-1] == f"dump 6 (pid 77): {why}, more than the recorder writes; rest ignored"
    assert [d.number for d in run.complete] == [1, 2, 3, 4, 5, 7]
    assert len(refused.groups) <= 1000 and len(refused.modules) <= 256
    assert_reports_sound(run)


@pytest.mark.parametrize(
    "hostile",
    [dict(frames=65), dict(thread=b"t" * 16), dict(exe=b"/" * 1025), dict(build_id="ab" * 33), dict(build_id="abc")],
    ids=["65 frames", "16-byte thread", "1025-byte path", "66-digit build-id", "odd build-id"],
)
def test_a_record_beyond_the_recorder_caps_is_a_corrupt_line(hostile):
    run = Run(good_session(3) + wire_dump(4, 4000, **hostile) + wire_dump(5, 5000))
    assert [d.number for d in run.complete] == [1, 2, 3, 5] and run.parser.stats["corrupt_lines"] == 1
    assert_reports_sound(run)


def test_what_the_recorder_can_write_at_its_caps_is_accepted():
    data = wire_dump(
        1,
        groups=[(i, 1, 8, 1, 8, 3000) for i in range(1, 1001)],
        modules=256,
        frames=64,
        thread=b"t" * 15,
        build_id="ab" * 32,
    )
    run = Run(data)
    assert len(run.complete) == 1 and len(run.complete[0].groups) == 1000


def test_a_flood_of_repeated_lines_gives_a_bounded_problem_list():
    one = wire_dump(1).split(b"\n")
    g_line = next(line for line in one if b" G " in line)
    flood = b"\n".join(one[:5] + [g_line] * 2000 + one[5:])
    run = Run(flood)
    (d,) = run.dumps
    assert not d.complete and len(d.problems) <= 21
    assert d.problems[-1].startswith("dump 1 (pid 77): and ") and d.problems[-1].endswith("more problems")
    assert_reports_sound(run)


# -- item 12: the analysis keeps a bounded amount over a long session -------------------------


def distinct_stacks(made: tuple[Dump, dict], groups: dict) -> tuple[Dump, dict]:
    """synthetic.dump's stacks, each name given a code path of its own (its offsets may collide)."""
    d, stacks = made
    for i, name in enumerate(sorted(groups), 1):
        offset = 0x100000 + (zlib.crc32(name.encode()) & 0xFFFFFF) * 16
        frames = (Frame(name, "app.c", 10, "/usr/bin/app", offset),)
        stacks[i] = SymStack((("ab12", offset),), frames, False)
    return d, stacks


def test_call_stacks_that_keep_changing_are_followed_up_to_a_bound():
    """A board whose stacks keep changing (or lie): new call stacks every dump. The analysis follows
    at most 2000, forgets those gone longest, keeps the leak and says how many it forgot."""
    analysis = Analysis()
    for n in range(1, 701):
        groups = {f"churn{n}_{k}": (1, 16, 0, 0) for k in range(5)}
        groups["leak"] = (n, 100 * n, n, 100 * n)
        analysis.add(*distinct_stacks(synthetic_dump(n, n * 1000, groups, groups_total=len(groups)), groups))
    assert len(analysis.suspects) <= 2000
    summary = analysis.summary({}, [])
    assert summary.suspects[0].klass == GROWING and summary.suspects[0].frames[0].function == "leak"
    assert any("call stacks no longer followed" in m for m in summary.problems.messages)


def test_series_hold_a_bounded_number_of_points_in_all():
    """300 call stacks for 1100 dumps: 330,000 points unthinned; at most 250,000 are kept."""
    analysis = Analysis()
    names = [f"s{k}" for k in range(300)]
    for n in range(1, 1101):
        groups = {name: (1, 16 + n, 1, 16) for name in names}
        analysis.add(*distinct_stacks(synthetic_dump(n, n * 1000, groups), groups))
    assert sum(len(s.series) for s in analysis.suspects.values()) <= 250_000
    ranked = analysis.ranked()
    assert {s.klass for s in ranked} == {"stable"}  # old bytes flat: the thinning keeps the trend


def test_thread_names_and_messages_are_capped_and_counted():
    analysis = Analysis()
    for n in range(1, 101):
        analysis.add(*synthetic_dump(n, n * 1000, {"leak": (n, n * 64, n, n * 64)}, thread=f"worker{n}"))
    for n in range(101, 401):
        analysis.add(*synthetic_dump(n, n * 1000, {}, complete=False))
    summary = analysis.summary({}, [])
    (suspect,) = summary.suspects
    names = suspect.thread_names()
    assert len(names) == 33 and names[-1] == "(and 68 more)"
    assert summary.problems.messages[-1] == "and 100 earlier problems (only the latest 200 are kept)"
    assert len(summary.problems.messages) == 201


# -- the standing property: hostile values anywhere ------------------------------------------

HOSTILE_NUMBERS = st.sampled_from(
    [
        str(2**32),
        str(2**64),
        str(2**64 - 1),
        str(10**307),
        str(10**308),
        str(10**309),
        "9" * 4000,
        "-1",
        "nan",
        "inf",
        "-inf",
        "1e308",
        "0x10",
        "+5",
        "00012",
        "0",
    ]
)
VALID_NUMBERS = st.integers(0, 2**20).map(str)
HOSTILE_BYTES = st.one_of(
    st.binary(min_size=1, max_size=24),
    st.sampled_from(
        [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", TERMINAL_ATTACK, BIDI_AND_FORMAT.encode(), b"%", b"-", b"=", b"\r"]
    ),
)
# board text as the recorder escapes it: invalid UTF-8, controls and bidi characters inside
BOARD_TEXT = st.one_of(
    st.just(b"main"),
    st.sampled_from([TERMINAL_ATTACK, "\u202eexe.txt\u202c".encode(), "a\u2066b\u2069".encode(), b"\xff\xfe\xc3\x28"]),
    st.text(max_size=6).map(lambda t: t.encode("utf-8", "surrogatepass")),
).map(lambda b: escape_text(b[:15]).encode())


# an unknown key's value: anything without a space or a line end
UNKNOWN_VALUES = st.one_of(HOSTILE_NUMBERS.map(str.encode), st.binary(min_size=1, max_size=12)).map(
    lambda b: b.replace(b" ", b"_").replace(b"\n", b"_").replace(b"\r", b"_")
)


class Fields:
    """Draws a dump's fields: all valid, one hostile (the case that used to crash the analysis: a
    complete dump with one value beyond a float), or each hostile one time in ten."""

    def __init__(self, draw) -> None:
        self.draw = draw
        self.mode = draw(st.sampled_from(["valid", "one", "many"]))
        self.hostile_at = draw(st.integers(0, 20))
        self.count = 0
        self.spoiled = False  # a known field got a value the recorder cannot write

    def __call__(self, valid: st.SearchStrategy[str] = VALID_NUMBERS) -> bytes:
        self.count += 1
        hostile = (self.mode == "one" and self.count == self.hostile_at) or (
            self.mode == "many" and self.draw(st.integers(0, 9)) == 0
        )
        if not hostile:
            return self.draw(valid).encode()
        self.spoiled = True
        return self.draw(st.one_of(HOSTILE_NUMBERS.map(str.encode), HOSTILE_BYTES))


@st.composite
def hostile_dump(draw, number: int) -> tuple[list[bytes], bool]:
    """The lines of one dump with hostile values, and whether the dump must come out complete (no
    known field given a hostile value, no record moved: unknown keys of any value are tolerated)."""
    v = Fields(draw)
    unknown = draw(st.lists(st.tuples(st.sampled_from([b"future", b"x_9", b"newer"]), UNKNOWN_VALUES), max_size=2))
    extra = [k + b"=" + val for k, val in unknown]
    stack_ids = draw(st.lists(st.integers(1, 50), max_size=4, unique=True))
    records = [
        (
            "B",
            [
                b"pid=" + v(st.integers(1, 99).map(str)),
                b"up_ms=" + str(number * 1000).encode(),
                b"ptr_bits=" + v(st.sampled_from(["32", "64"])),
                b"exe=" + draw(BOARD_TEXT),
                *extra,
            ],
        ),
        ("C", [b"live_bytes=" + v(), b"old_bytes=" + v(), b"groups_total=" + v(), *extra]),
        ("M", [v(st.just("1")), b"0", b"1000000", v(st.just("2000000")), b"-", draw(BOARD_TEXT)]),
    ]
    for sid in stack_ids:
        addrs = [v(st.integers(0x1000000, 0x1FFFFFF).map(lambda a: f"{a:x}")) for _ in range(draw(st.integers(1, 6)))]
        records.append(("S", [v(st.just(str(sid))), draw(st.sampled_from([b"-", b"t", b"tx"])), *addrs]))
        records.append(("G", [v(st.just(str(sid))), *(v() for _ in range(5)), draw(BOARD_TEXT)]))
    n = len(stack_ids)
    counts = {"lines": len(records) + 1, "modules": 1, "stacks": n, "groups": n, "groups_total": n}
    end = [k.encode() + b"=" + v(st.just(str(c))) for k, c in counts.items()]
    records.append(("E", [*end, *extra]))
    lines = [record(number, seq, tag, fields) for seq, (tag, fields) in enumerate(records)]
    moved = False  # duplicated, reordered or lost records, with their valid checksums
    for _ in range(draw(st.integers(0, 2))):
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["dup", "swap", "drop"]))
        moved = moved or op != "swap" or i != j
        if op == "dup":
            lines.insert(j, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif len(lines) > 1:
            del lines[i]
    too_long = any(len(line) > 4096 + 1 for line in lines)  # a line is corrupt beyond 4096 bytes and its newline
    return lines, not v.spoiled and not moved and not too_long


@st.composite
def hostile_sessions(draw) -> tuple[bytes, int]:
    """A session of dumps (numbers may repeat, as after a restart) and how many must be complete."""
    numbers = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6))
    out, must_complete = [], 0
    for k, n in enumerate(numbers):
        if draw(st.integers(0, 3)) == 0:
            out.append(wire_dump(n, (k + 1) * 1000))  # some dumps exactly as the recorder writes them
            must_complete += 1
        else:
            lines, complete = draw(hostile_dump(n))
            out += lines
            must_complete += complete
    return b"".join(out), must_complete


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_sessions(), st.sampled_from([None, 1, 13, 4096]))
def test_hostile_values_never_raise_and_reports_stay_strict(session, chunk):
    data, must_complete = session
    run = Run(data, chunk)
    doc = assert_reports_sound(run)
    # a spoiled or moved dump may still be whole (a hostile-looking "0", a repeated B record)
    assert len(run.complete) >= must_complete and doc["dumps"]["count"] == len(run.complete)
    for d in run.complete:  # what the analysis was given is within the recorder's limits
        assert len(d.groups) <= 1000 and all(len(s.addrs) <= 64 for s in d.stacks.values())
        assert all(0 <= getattr(g, f) < U64 for g in d.groups for f in ("live_bytes", "old_bytes", "live_blocks"))
    for d in run.dumps:
        assert len(d.problems) <= 21 and all(len(p) < 600 for p in d.problems)


# -- the real membt-host on hostile capture files ---------------------------------------------


def membt_host(tmp_path: Path, capture: bytes, *extra: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    path = tmp_path / "hostile.log"
    path.write_bytes(capture)
    report, page = tmp_path / "report.json", tmp_path / "report.html"
    env = {**os.environ, "PYTHONPATH": str(HOSTPY)}
    done = subprocess.run(
        [sys.executable, "-m", "membt_host", "--file", str(path), "--json", str(report), "--html", str(page), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    return done, report, page


def test_cli_one_rogue_number_does_not_end_a_session_of_good_dumps(tmp_path):
    """The live case: 30 good dumps, then a rogue client's number above 1.8e308 (valid checksum)."""
    done, report, page = membt_host(tmp_path, good_session(30) + wire_dump(31, 31000, live_bytes=10**309))
    assert done.returncode == 0, done.stderr
    doc = strict_json(report.read_text())
    assert doc["dumps"]["count"] == 30 and doc["problems"]["corrupt_lines"] == 2
    assert doc["suspects"][0]["class"] == GROWING
    assert "corrupt line" in done.stdout and page.read_text().endswith("</html>\n")


def test_cli_writes_strict_json_for_values_near_the_float_limit(tmp_path):
    capture = good_session(30) + wire_dump(31, 31000, live_bytes=10**307) + wire_dump(32, 32000, live_bytes=10**308)
    done, report, _ = membt_host(tmp_path, capture, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Infinity" not in report.read_text() and "NaN" not in report.read_text()
    assert strict_json(report.read_text())["dumps"]["count"] == 30


def test_cli_unknown_keys_with_text_values_keep_every_dump(tmp_path):
    capture = b"".join(
        wire_dump(n, n * 1000, counters=["future_mode=fast"], end_extra=["crc_mode=zlib"]) for n in range(1, 11)
    )
    done, report, _ = membt_host(tmp_path, capture, "--quiet", "--fail-on-growing")
    assert done.returncode == 3, done.stderr  # the leak is found: every dump was used
    doc = strict_json(report.read_text())
    assert doc["dumps"]["count"] == 10 and doc["problems"]["incomplete_dumps"] == 0


def test_cli_hostile_capture_of_every_kind_keeps_the_good_dumps(tmp_path):
    hostile = [
        wire_dump(101, 1, groups=[(i, 1, 8, 1, 8, 3000) for i in range(1, 1002)]),  # beyond MEMBT_TOP's cap
        wire_dump(102, 2, pid="9" * 400),  # a pid beyond a pid_t
        wire_dump(103, 3, pid=78, thread=TERMINAL_ATTACK[:15], exe="\u202e/usr/bin/evil\u202c".encode()),
        wire_dump(104, 4, pid=78, counters=["x=\xff"], frames=65),
        b"\xff\xfe\x00 console garbage \x1b[2J\n",
    ]
    capture = good_session(10) + b"".join(hostile) + b"".join(wire_dump(n, n * 1000) for n in range(11, 21))
    done, report, page = membt_host(tmp_path, capture)
    assert done.returncode == 0, done.stderr
    doc = strict_json(report.read_text())
    assert doc["dumps"]["count"] == 21  # 20 good ones, and dump 103 (its text is shown harmlessly)
    assert "\x1b" not in done.stdout and "\u202e" not in done.stdout and "\u202e" not in page.read_text()


def test_the_json_reporter_writes_null_for_what_json_cannot_hold():
    """Whatever reaches it (here: an analysis fed directly, past the parser's ranges), the JSON report
    is strict: a growth rate that overflowed a float is written as null, never as Infinity."""
    analysis = Analysis()
    for n in range(1, 6):
        analysis.add(*synthetic_dump(n, n * 1000, {"leak": (n, n * 10**307, n, n * 10**307)}))
    summary = analysis.summary({}, [])
    assert summary.suspects[0].growth_bytes_per_min == float("inf")  # the analysis' arithmetic overflowed
    out = io.StringIO()
    JsonReporter.from_analysis(summary).render(out)
    doc = strict_json(out.getvalue())
    assert doc["suspects"][0]["growth_bytes_per_min"] is None
    TextReporter.from_analysis(summary).render(io.StringIO())  # and the other two still render
    HtmlReporter.from_analysis(summary).render(io.StringIO())


def test_program_runs_remembered_are_bounded():
    """A board whose every dump comes from another pid (a forking server, or a lying board)."""
    analysis = Analysis()
    for n in range(1, 3001):
        analysis.add(*synthetic_dump(1, 1000, {"leak": (1, 64, 1, 64)}, pid=n))
    assert len(analysis._processes) <= 1024
    analysis.add(*synthetic_dump(2, 2000, {"leak": (2, 128, 2, 128)}, pid=3000))  # the latest run goes on
    assert analysis.suspects[next(iter(analysis.suspects))].latest.process == 3000


def test_a_dump_the_session_cannot_use_is_counted_and_said():
    analysis = Analysis()
    for n in range(1, 4):
        analysis.add(*synthetic_dump(n, n * 1000, {"leak": (n, n * 64, n, n * 64)}))
    analysis.add_unusable(synthetic_dump(4, 4000, {})[0], "addr2line failed: OSError")
    summary = analysis.summary({}, [])
    assert summary.complete_dumps == 3 and summary.problems.incomplete_dumps == 1
    assert summary.problems.messages == ["dump 4 (pid 100): not used (addr2line failed: OSError)"]
