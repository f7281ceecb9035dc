"""--json FILE: the whole analysis for scripts and CI (the format is described in hostpy/README.md)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, TextIO

from membt_host import __version__
from membt_host.analysis import Summary, Suspect
from membt_host.symbolize import Frame

FORMAT_VERSION = 1


def frame_json(frame: Frame) -> dict[str, Any]:
    return {
        "function": frame.function,
        "file": frame.file,
        "line": frame.line,
        "module": frame.module,
        "offset": f"{frame.offset:#x}",
        "inlined": frame.inlined,
    }


def suspect_json(rank: int, suspect: Suspect) -> dict[str, Any]:
    latest = suspect.latest
    return {
        "rank": rank,
        "class": suspect.klass,
        "maybe_leak": latest.old_blocks > 0,  # the seed's rule: blocks older than the leak age
        "live_blocks": latest.live_blocks,
        "live_bytes": latest.live_bytes,
        "old_blocks": latest.old_blocks,
        "old_bytes": latest.old_bytes,
        "oldest_age_s": round(suspect.oldest_age_ms / 1000.0, 3),
        "growth_bytes_per_min": suspect.growth_bytes_per_min,
        "dumps_seen": suspect.dumps_seen,
        "first_seen_s": suspect.first_seen,
        "last_seen_s": suspect.last_seen,
        "threads": suspect.thread_names(),
        "truncated": suspect.truncated,
        "key": [[module, f"{offset:#x}"] for module, offset in suspect.key],
        "frames": [frame_json(f) for f in suspect.frames],
        "series": [[p.t, p.live_bytes, p.live_blocks, p.old_blocks, p.old_bytes] for p in suspect.series],
    }


class JsonReporter:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    @classmethod
    def from_analysis(cls, summary: Summary) -> JsonReporter:
        problems = asdict(summary.problems)
        return cls(
            {
                "membt_host": __version__,
                "format": FORMAT_VERSION,
                "series_fields": ["t", "live_bytes", "live_blocks", "old_blocks", "old_bytes"],
                "suspects": [suspect_json(rank, s) for rank, s in enumerate(summary.suspects, 1)],
                "dumps": {
                    "count": summary.complete_dumps,
                    "totals": [asdict(d) for d in summary.dumps],
                },
                "problems": problems,
            }
        )

    def render(self, out: TextIO) -> None:
        # strict JSON: a number JSON cannot hold (inf, nan) is written as null, never as Infinity
        json.dump(_strict(self.document), out, indent=1, ensure_ascii=True, allow_nan=False)
        out.write("\n")


def _strict(value: Any) -> Any:
    """value with every float that is not finite replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value
