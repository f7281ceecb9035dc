"""--html FILE: one self-contained page (no script, nothing fetched) with the ranked suspects, their
frames and an inline SVG chart of live bytes over time per suspect. All board text is escaped."""

from __future__ import annotations

import html
from typing import TextIO

from membt_host import __version__
from membt_host.analysis import GROWING, MAYBE_LEAK, STABLE, TRANSIENT, DumpTotals, Summary, Suspect
from membt_host.reporters import human_bytes, human_rate, plural
from membt_host.safe_text import visible

CHART_W, CHART_H, PAD_L, PAD_B, PAD_T, PAD_R = 420, 120, 64, 22, 8, 8
CLASS_COLOURS = {GROWING: "#c0392b", STABLE: "#2471a3", TRANSIENT: "#7f8c8d", MAYBE_LEAK: "#d68910"}

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#555;margin-bottom:12px}
.suspect{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:12px 0;
 display:grid;grid-template-columns:1fr 440px;gap:16px}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:1px 8px;font-weight:600;font-size:12px}
.num{font-variant-numeric:tabular-nums}
table{border-collapse:collapse} td,th{padding:2px 8px 2px 0;text-align:left;vertical-align:top}
.frames td{font-family:ui-monospace,monospace;font-size:12.5px}
.raw{color:#888} .inl{color:#888;font-style:italic}
.problems li{font-family:ui-monospace,monospace;font-size:12.5px}
svg text{font:10px system-ui,sans-serif;fill:#555}
"""


def esc(text: object) -> str:
    return html.escape(visible(str(text)), quote=True)


def chart(points: list[tuple[float, float]], colour: str, label: str, span_t: tuple[float, float] | None = None) -> str:
    """A small line chart of value over time, drawn as SVG; `span_t` is the time axis (all charts
    of a page share the session's, so that they line up)."""
    w, h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" '
        f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{esc(label)}">',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>',
    ]
    if points:
        t0, t1 = span_t or (min(p[0] for p in points), max(p[0] for p in points))
        top = max(max(p[1] for p in points), 1)
        span = (t1 - t0) or 1.0

        def xy(t: float, v: float) -> tuple[float, float]:
            return PAD_L + (t - t0) / span * w, PAD_T + h - v / top * h

        coords = [xy(t, v) for t, v in points]
        if len(coords) == 1:
            x, y = coords[0]
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        else:
            path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(coords))
            parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [
            f'<text x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end">{esc(human_bytes(top))}</text>',
            f'<text x="{PAD_L - 4}" y="{PAD_T + h}" text-anchor="end">0</text>',
            f'<text x="{PAD_L}" y="{CHART_H - 6}">{t0:.1f} s</text>',
            f'<text x="{PAD_L + w}" y="{CHART_H - 6}" text-anchor="end">{t1:.1f} s</text>',
        ]
    else:
        parts.append(f'<text x="{PAD_L + 8}" y="{PAD_T + h / 2}">no complete dump</text>')
    parts.append("</svg>")
    return "".join(parts)


class HtmlReporter:
    def __init__(self, summary: Summary, top: int) -> None:
        self.summary = summary
        self.top = top

    @classmethod
    def from_analysis(cls, summary: Summary, top: int = 10) -> HtmlReporter:
        return cls(summary, top)

    def render(self, out: TextIO) -> None:
        s = self.summary
        body = [
            "<h1>membt leak report</h1>",
            f'<div class="meta">{esc(self._meta())}</div>',
            "<h2>Total live bytes per dump</h2>",
            chart([(d.t, d.live_bytes) for d in s.dumps], "#555", "total live bytes over time"),
            f"<h2>Suspects ({len(s.suspects)} call stacks, ranked)</h2>",
        ]
        if not s.suspects:
            body.append("<p>No call stack holds live blocks in the dumps read.</p>")
        for rank, suspect in enumerate(s.suspects[: self.top], 1):
            body.append(self._suspect(rank, suspect))
        if len(s.suspects) > self.top:
            body.append(f"<p>{len(s.suspects) - self.top} more call stacks in the JSON report (--top shows more).</p>")
        body.append(self._problems())
        out.write(
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>membt leak report</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body)
            + f'\n<p class="meta">membt-host {esc(__version__)}</p></body></html>\n'
        )

    def _meta(self) -> str:
        s = self.summary
        if not s.dumps:
            return "No complete dump was read."
        last: DumpTotals = s.dumps[-1]
        return (
            f"{s.complete_dumps} complete dumps over {last.t - s.dumps[0].t:.1f} s; last: dump {last.number}, "
            f"pid {last.pid}, live {human_bytes(last.live_bytes)} in {last.live_blocks} blocks, "
            f"old {human_bytes(last.old_bytes)} in {last.old_blocks} blocks; recorder dropped "
            f"{last.dropped_blocks} blocks and {last.dropped_stacks} stacks, {last.truncated_stacks} stacks truncated."
        )

    def _suspect(self, rank: int, s: Suspect) -> str:
        p = s.latest
        colour = CLASS_COLOURS.get(s.klass, "#555")
        rows = []
        for frame in s.frames:
            if frame.function is None:
                rows.append(f'<tr><td class="raw" colspan="2">{esc(frame.describe())}</td></tr>')
                continue
            where = f"{frame.file}:{frame.line}" if frame.file and frame.line else (frame.file or "")
            inlined = ' <span class="inl">inlined</span>' if frame.inlined else ""
            rows.append(f"<tr><td>{esc(frame.function)}{inlined}</td><td>{esc(where)}</td></tr>")
        if not rows:
            rows.append('<tr><td class="raw">no frames</td></tr>')
        facts = [
            ("growth", human_rate(s.growth_bytes_per_min)),
            ("live", f"{plural(p.live_blocks, 'block')}, {human_bytes(p.live_bytes)}"),
            (
                "old",
                f"{plural(p.old_blocks, 'block')}, {human_bytes(p.old_bytes)} (oldest {s.oldest_age_ms / 1000:.1f} s)",
            ),
            ("seen in", plural(s.dumps_seen, "dump")),
            ("threads", ", ".join(s.thread_names()) or "-"),
        ]
        fact_rows = "".join(f'<tr><th>{esc(k)}</th><td class="num">{esc(v)}</td></tr>' for k, v in facts)
        series = [(pt.t, pt.live_bytes) for pt in s.series]
        dumps = self.summary.dumps
        span_t = (dumps[0].t, dumps[-1].t) if dumps else None
        return (
            f'<div class="suspect"><div><div><b>#{rank}</b> '
            f'<span class="badge" style="background:{colour}">{esc(s.klass)}</span></div>'
            f"<table>{fact_rows}</table>"
            f'<table class="frames">{"".join(rows)}</table></div>'
            f"<div>{chart(series, colour, f'live bytes of suspect #{rank} over time', span_t)}</div></div>"
        )

    def _problems(self) -> str:
        p = self.summary.problems
        items = [
            f"{p.corrupt_lines} corrupt lines, {p.incomplete_dumps} incomplete dumps, "
            f"{p.unknown_version_lines} lines of an unknown format version, {p.noise_lines} console lines"
        ]
        items += p.symbols + p.messages
        return '<h2>Problems</h2><ul class="problems">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"
