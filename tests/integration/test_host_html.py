"""The HTML report of a real serial session, opened in headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

from support.chromium import drawn_fraction, render
from support.expect import CACHE_FUNCTION, LEAK_FUNCTION, SAMPLE_SOURCE
from support.session import SerialRun


def test_html_report_renders_suspects_and_chart(native_serial: SerialRun, chromium: str, tmp_path: Path) -> None:
    page = native_serial.html
    assert page.exists(), native_serial.result.describe()
    source = page.read_text()
    remote = re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", source)
    assert not remote, "the report loads something from the network"

    rendering = render(page, tmp_path)
    assert rendering.console == [], f"the page logged to the console: {rendering.console}"
    dom = rendering.dom
    for text in (LEAK_FUNCTION, CACHE_FUNCTION, SAMPLE_SOURCE, "growing", "stable"):
        assert text in dom, f"{text} missing from the rendered page"
    # Ranked as in the JSON report: the leak comes before the cache on the page too.
    assert dom.index(LEAK_FUNCTION) < dom.index(CACHE_FUNCTION), "the page does not list the leak first"
    charts = re.findall(r"<svg\b.*?</svg>", dom, re.DOTALL)
    assert charts, "no SVG chart in the rendered page"
    assert any(re.search(r"<(path|polyline|line|circle|rect)\b", svg) for svg in charts), "the SVG chart is empty"
    assert drawn_fraction(rendering.screenshot) > 0.01, "the screenshot is blank"
