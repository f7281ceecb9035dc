"""Headless Chromium: the DOM after scripts ran, a screenshot, and the console errors of one page."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"

# Flags that let Chromium run as root in a container with no display and no network chatter.
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]

# With --enable-logging=stderr, console messages come out as
#   [pid:tid:time:INFO:CONSOLE:12] "Uncaught TypeError: ...", source: file:///... (12)
# (older releases wrote CONSOLE(12)). The level is always INFO, so errors are told by their words:
# uncaught exceptions, console.error texts that say error, CSP refusals, failed loads.
_CONSOLE = re.compile(r':CONSOLE[:(]\d+\)?\] "(?P<message>.*)", source: (?P<source>.*)$', re.MULTILINE)
_ERROR_WORDS = re.compile(r"uncaught|error|refused|failed|exception", re.IGNORECASE)


@dataclass(frozen=True)
class Rendering:
    dom: str
    screenshot: Path
    console: list[str]        # every console message the page produced
    log: str                  # Chromium's whole stderr, for failure messages

    @property
    def console_errors(self) -> list[str]:
        return [line for line in self.console if _ERROR_WORDS.search(line)]


def _run(extra: list[str], page: Path, user_data: Path, timeout: float) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, *_FLAGS, f"--user-data-dir={user_data}", *extra, page.resolve().as_uri()]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def render(page: Path, workdir: Path, timeout: float = 120) -> Rendering:
    """Load `page` twice (DOM dump, then screenshot), each in a fresh profile under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    dom_run = _run(["--dump-dom"], page, workdir / "profile-dom", timeout)
    screenshot = workdir / "page.png"
    shot_run = _run([f"--screenshot={screenshot}", "--window-size=1280,2000"], page, workdir / "profile-shot",
                    timeout)
    log = dom_run.stderr + shot_run.stderr
    console = [f"{m['message']} ({m['source']})" for m in _CONSOLE.finditer(dom_run.stderr)]
    assert dom_run.returncode == 0, f"chromium --dump-dom failed ({dom_run.returncode}):\n{log}"
    assert shot_run.returncode == 0 and screenshot.exists(), f"chromium --screenshot failed:\n{log}"
    return Rendering(dom_run.stdout, screenshot, console, log)


def drawn_fraction(png: Path) -> float:
    """Share of pixels that differ from the page background (the most common colour) in an 8-bit
    RGB/RGBA, non-interlaced PNG as Chromium writes it: 0.0 means a blank screenshot."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG layout in {png}"
    channels = 3 if colour == 2 else 4
    stride = width * channels
    raw = zlib.decompress(bytes(idat))
    previous = bytearray(stride)
    counts: Counter[bytes] = Counter()
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            up_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - up_left
                pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + predictor) & 0xFF
        counts.update(bytes(line[i:i + channels]) for i in range(0, stride, channels))
        previous = line
    total = width * height
    return (total - counts.most_common(1)[0][1]) / total if total else 0.0
