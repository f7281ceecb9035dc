"""The terminal: a short view after each dump while watching, and the summary at the end."""

from __future__ import annotations

from typing import TextIO

from membt_host.analysis import Summary, Suspect
from membt_host.reporters import human_bytes, human_rate, plural
from membt_host.safe_text import terminal_safe

TEXT_MESSAGES = 10  # problems shown on the terminal; the reports written to files hold them all


class TextReporter:
    def __init__(self, summary: Summary, top: int, live: bool) -> None:
        self.summary = summary
        self.top = top
        self.live = live

    @classmethod
    def from_analysis(cls, summary: Summary, top: int = 10, live: bool = False) -> TextReporter:
        return cls(summary, top, live)

    def render(self, out: TextIO) -> None:
        lines = self._header() + self._health()
        shown = self.summary.suspects[: self.top]
        frames = 3 if self.live else 16
        for rank, suspect in enumerate(shown, 1):
            lines += self._suspect(rank, suspect, frames)
        hidden = len(self.summary.suspects) - len(shown)
        if hidden > 0:
            lines.append(f"  ({hidden} more call stack{'s' if hidden != 1 else ''}; -T/--top shows more)")
        if not self.live:
            lines += self._problems()
        out.write("\n".join(terminal_safe(line) for line in lines) + "\n")
        out.flush()

    def _header(self) -> list[str]:
        s = self.summary
        if not s.dumps:
            return ["membt-host: no complete dump yet" if self.live else "membt-host: no complete dump was read"]
        d = s.dumps[-1]
        where = f"dump {d.number} · pid {d.pid} · up {d.up_ms / 1000:.1f} s"
        totals = (
            f"live {human_bytes(d.live_bytes)} in {d.live_blocks} blocks · "
            f"old {human_bytes(d.old_bytes)} in {d.old_blocks} blocks"
        )
        if self.live:
            return [f"── {where} · {totals} ──"]
        return [f"membt-host summary: {plural(s.complete_dumps, 'complete dump')}; last: {where}", f"  {totals}"]

    def _health(self) -> list[str]:
        s, p = self.summary, self.summary.problems
        last = s.dumps[-1] if s.dumps else None
        parts = [plural(p.corrupt_lines, "corrupt line"), plural(p.incomplete_dumps, "incomplete dump")]
        if p.unknown_version_lines:
            parts.append(f"{p.unknown_version_lines} lines of an unknown format version")
        if last is not None:
            parts.append(f"recorder dropped {last.dropped_blocks} blocks, {last.dropped_stacks} stacks")
            parts.append(f"{last.truncated_stacks} truncated stacks")
            if last.groups < last.groups_total:
                parts.append(f"listing {last.groups} of {last.groups_total} stacks (MEMBT_TOP)")
        return ["  health: " + " · ".join(parts)]

    @staticmethod
    def _suspect(rank: int, s: Suspect, max_frames: int) -> list[str]:
        p = s.latest
        threads = ", ".join(s.thread_names()) or "-"
        lines = [
            f" #{rank:<2} {s.klass.upper():<10} {human_rate(s.growth_bytes_per_min):>14}   "
            f"live {plural(p.live_blocks, 'block')} {human_bytes(p.live_bytes)}, "
            f"old {plural(p.old_blocks, 'block')} {human_bytes(p.old_bytes)} (oldest {s.oldest_age_ms / 1000:.1f} s)   "
            f"in {plural(s.dumps_seen, 'dump')}   thread {threads}"
        ]
        if not s.frames:
            lines.append(
                "      (no frames: "
                + (
                    "the recorder's stack table was full)"
                    if s.key and s.key[0][0] == "<overflow>"
                    else "the recorder captured none)"
                )
            )
        for frame in s.frames[:max_frames]:
            lines.append(f"      {frame.describe()}")
        if len(s.frames) > max_frames:
            lines.append(f"      … {len(s.frames) - max_frames} more frames")
        elif s.truncated:
            lines.append("      … (cut at MEMBT_DEPTH frames)")
        return lines

    def _problems(self) -> list[str]:
        p = self.summary.problems
        lines = []
        if p.symbols:
            lines.append("symbols:")
            lines += [f"  {text}" for text in p.symbols]
        if p.messages:
            lines.append("dumps not used:")
            if len(p.messages) > TEXT_MESSAGES:
                lines.append(f"  ({len(p.messages) - TEXT_MESSAGES} earlier ones in the JSON and HTML reports)")
            lines += [f"  {text}" for text in p.messages[-TEXT_MESSAGES:]]
        return lines
