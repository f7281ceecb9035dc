"""JSON, HTML and text reports: the fields scripts rely on, and board text that cannot hurt the reader."""

import io
import json
import re

from membt_host.analysis import Analysis
from membt_host.reporters.html import HtmlReporter
from membt_host.reporters.json import JsonReporter
from membt_host.reporters.text import TextReporter
from membt_host.symbolize import Frame, SymStack

from synthetic import dump

HOSTILE_THREAD = '<script>alert("thread")</script>'
HOSTILE_FILE = '"><img src=x onerror=alert(1)>.c'
HOSTILE_MODULE = "/usr/lib/<b>evil</b>&.so"
HOSTILE_FUNCTION = "operator<<(std::ostream&, char const*)"
TERMINAL_ATTACK = "\x1b]0;pwned\x07\x1b[2J"


def hostile_analysis() -> Analysis:
    analysis = Analysis()
    for i in range(1, 6):
        d, stacks = dump(
            i,
            i * 1000,
            {"leak": (i, i * 64, i, i * 64)},
            thread=HOSTILE_THREAD + TERMINAL_ATTACK,
        )
        frames = (
            Frame(HOSTILE_FUNCTION, HOSTILE_FILE, 7, HOSTILE_MODULE, 0x1234),
            Frame(None, None, None, HOSTILE_MODULE, 0x5678),
        )
        stacks[1] = SymStack((("ab", 0x1234), ("ab", 0x5678)), frames, True)
        analysis.add(d, stacks)
    analysis.add(*dump(6, 6000, {}, complete=False))
    return analysis


def render(reporter) -> str:
    out = io.StringIO()
    reporter.render(out)
    return out.getvalue()


def test_json_report_fields():
    summary = hostile_analysis().summary({"corrupt_lines": 2, "unknown_version_lines": 1}, ["module m: stripped"])
    doc = json.loads(render(JsonReporter.from_analysis(summary)))
    (suspect,) = doc["suspects"]
    assert suspect["class"] == "growing" and suspect["rank"] == 1 and suspect["maybe_leak"] is True
    assert (
        suspect["live_blocks"],
        suspect["live_bytes"],
        suspect["old_blocks"],
        suspect["old_bytes"],
    ) == (5, 320, 5, 320)
    assert suspect["oldest_age_s"] == 3.0 and suspect["growth_bytes_per_min"] == 64 * 60
    assert suspect["threads"] == [HOSTILE_THREAD + TERMINAL_ATTACK] and suspect["dumps_seen"] == 5
    assert suspect["frames"][0] == {
        "function": HOSTILE_FUNCTION,
        "file": HOSTILE_FILE,
        "line": 7,
        "module": HOSTILE_MODULE,
        "offset": "0x1234",
        "inlined": False,
    }
    assert suspect["frames"][1]["function"] is None and suspect["frames"][1]["offset"] == "0x5678"
    assert len(suspect["series"]) == 5 and suspect["series"][-1][1:] == [320, 5, 5, 320]
    assert doc["dumps"]["count"] == 5 and [t["live_bytes"] for t in doc["dumps"]["totals"]] == [64, 128, 192, 256, 320]
    problems = doc["problems"]
    assert (
        problems["corrupt_lines"],
        problems["unknown_version_lines"],
        problems["incomplete_dumps"],
    ) == (2, 1, 1)
    assert problems["symbols"] == ["module m: stripped"] and problems["messages"] == ["dump 6: line 3 missing"]


def test_html_escapes_everything_from_the_board():
    page = render(HtmlReporter.from_analysis(hostile_analysis().summary({}, [f"module {HOSTILE_MODULE}: x"])))
    for raw in (HOSTILE_THREAD, HOSTILE_FILE, HOSTILE_MODULE, HOSTILE_FUNCTION):
        assert raw not in page, raw
    assert "&lt;script&gt;alert(&quot;thread&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.c:7" in page
    assert "operator&lt;&lt;(std::ostream&amp;, char const*)" in page
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


def test_html_has_a_chart_per_suspect_and_an_overview():
    page = render(HtmlReporter.from_analysis(hostile_analysis().summary({}, [])))
    charts = re.findall(r"<svg\b.*?</svg>", page, re.DOTALL)
    assert len(charts) == 2  # total live bytes, and the one suspect
    assert all('<path d="M' in svg for svg in charts)
    assert "growing" in page


def test_text_view_neutralises_terminal_escapes():
    text = render(TextReporter.from_analysis(hostile_analysis().summary({}, []), live=True))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in text
    assert "GROWING" in text and f"{HOSTILE_FUNCTION} ({HOSTILE_FILE}:7)" in text
    assert f"{HOSTILE_MODULE}+0x5678" in text
    assert "1 incomplete dump" in text


def test_text_summary_lists_problems_and_limits_to_top():
    analysis = Analysis()
    for i in range(1, 4):
        analysis.add(*dump(i, i * 1000, {f"s{n}": (1, 10 * n, 1, 10 * n) for n in range(1, 6)}))
    text = render(TextReporter.from_analysis(analysis.summary({}, ["no addr2line for ARM code"]), top=2))
    assert text.count(" STABLE ") == 2 and "(3 more call stacks; -T/--top shows more)" in text
    assert "symbols:\n  no addr2line for ARM code" in text


def test_reports_of_nothing_read():
    summary = Analysis().summary({}, [])
    assert json.loads(render(JsonReporter.from_analysis(summary)))["suspects"] == []
    assert "No complete dump was read" in render(HtmlReporter.from_analysis(summary))
    assert "no complete dump was read" in render(TextReporter.from_analysis(summary))


BIDI_ATTACK = "leak\u202egnp.exe\u2066x\u200b\u2028y"


def test_bidi_and_format_characters_are_spelled_out_in_text_and_html():
    analysis = Analysis()
    for i in range(1, 4):
        analysis.add(*dump(i, i * 1000, {"leak": (i, i * 64, i, i * 64)}, thread=BIDI_ATTACK))
    summary = analysis.summary({}, [f"module {BIDI_ATTACK}: stripped"])
    for page in (render(TextReporter.from_analysis(summary)), render(HtmlReporter.from_analysis(summary))):
        for char in "\u202e\u2066\u200b\u2028":
            assert char not in page, hex(ord(char))
        assert "leak\\u202egnp.exe\\u2066x\\u200b\\u2028y" in page
