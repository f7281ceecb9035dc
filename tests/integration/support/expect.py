"""What a user must see in a membt-host report of leaky-server, checked the same way for every source."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]

LEAK_FUNCTION = "leak_session_name"    # leaks one strdup'ed name per request, forever
CACHE_FUNCTION = "cache_insert"        # keeps at most 64 entries: fills up, then stays flat
SAMPLE_SOURCE = "leaky_server.c"


def _frames_text(suspect: dict[str, Any]) -> str:
    return "\n    ".join(f"{f.get('function')} ({f.get('file')}:{f.get('line')}) [{f.get('module')}+{f.get('offset')}]"
                         for f in suspect.get("frames", []))


def describe(report: dict[str, Any]) -> str:
    """The ranked suspects in a form that explains a failed assertion."""
    lines = []
    for rank, suspect in enumerate(report.get("suspects", [])):
        lines.append(f"#{rank} {suspect.get('class')} live={suspect.get('live_bytes')}B/{suspect.get('live_blocks')} "
                     f"old={suspect.get('old_bytes')}B growth={suspect.get('growth_bytes_per_min')}B/min\n    "
                     + _frames_text(suspect))
    lines.append(f"problems: {report.get('problems')}")
    lines.append(f"threads: {[s.get('threads') for s in report.get('suspects', [])]}")
    return "\n".join(lines)


def names(suspect: dict[str, Any]) -> list[str]:
    return [frame.get("function") or "" for frame in suspect.get("frames", [])]


def find_suspect(report: dict[str, Any], function: str) -> tuple[int, dict[str, Any]]:
    """The best-ranked suspect whose call stack passes through `function`."""
    for rank, suspect in enumerate(report["suspects"]):
        if function in names(suspect):
            return rank, suspect
    raise AssertionError(f"no suspect passes through {function}:\n{describe(report)}")


def sample_source() -> Path:
    found = sorted(p for p in REPO.glob(f"**/{SAMPLE_SOURCE}") if "build" not in p.relative_to(REPO).parts)
    assert found, f"{SAMPLE_SOURCE} not found in the repository"
    return found[0]


def assert_leak_found(report: dict[str, Any]) -> None:
    """The growing strdup leak is ranked first, named with file:line in leaky_server.c, and the
    bounded cache of the same program is told apart as stable."""
    assert report["suspects"], f"no suspects at all:\n{describe(report)}"
    rank, leak = find_suspect(report, LEAK_FUNCTION)
    assert rank == 0, f"the strdup leak is ranked #{rank}, not first:\n{describe(report)}"
    assert leak["class"] == "growing", describe(report)
    assert leak["growth_bytes_per_min"] > 0, describe(report)
    assert leak["old_blocks"] > 0 and leak["old_bytes"] > 0, describe(report)
    assert leak["live_blocks"] >= leak["old_blocks"], describe(report)

    frame = next(f for f in leak["frames"] if f["function"] == LEAK_FUNCTION)
    assert Path(frame["file"]).name == SAMPLE_SOURCE, describe(report)
    source_lines = sample_source().read_text().splitlines()
    assert 1 <= frame["line"] <= len(source_lines), describe(report)
    # The line the frame names must be the allocation inside leak_session_name, not a guess.
    window = source_lines[max(0, frame["line"] - 2):frame["line"]]
    assert any("strdup" in line for line in window), \
        f"{SAMPLE_SOURCE}:{frame['line']} is not the strdup call: {window}\n{describe(report)}"

    _, cache = find_suspect(report, CACHE_FUNCTION)
    assert cache["class"] == "stable", describe(report)
    # leaky-server names its threads with prctl; the recorder reports who allocated.
    assert leak["threads"] == ["sessions"] and cache["threads"] == ["cache"], describe(report)


# Debian strips its system libraries; their frames stay module+offset and the report says so.
SYSTEM_LIBRARY = re.compile(r"^module \S*/(libc\.so\.6|ld-linux[-\w.]*\.so\.\d)\b")


def assert_own_binaries_symbolized(report: dict[str, Any]) -> list[str]:
    """Every complaint about symbols concerns a stripped system library, never the program or
    libmembt. Returns the complaints."""
    complaints = report["problems"]["symbols"]
    unexpected = [text for text in complaints if not SYSTEM_LIBRARY.match(text)]
    assert not unexpected, f"symbol problems beyond the stripped system libraries: {unexpected}"
    return complaints
