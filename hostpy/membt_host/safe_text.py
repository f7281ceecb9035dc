"""Board text made harmless for a human's screen: the terminal and the HTML page show what the board
sent, never let it drive the display. Every layer that prints board bytes (reporters, ssh's stderr)
goes through here."""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls (escape sequences), then the Unicode characters that reorder or hide text:
# bidi embeddings, overrides and isolates, zero-width and other format characters (category Cf),
# line/paragraph separators and lone surrogates.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _shown(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _hidden(char: str) -> bool:
    return unicodedata.category(char) == "Cf"


def visible(text: str) -> str:
    """`text` with every control, format and bidi character spelled out as \\xNN or \\uNNNN."""
    text = _UNPRINTABLE.sub(lambda m: _shown(m.group()), text)
    if text.isascii():
        return text
    return "".join(_shown(c) if _hidden(c) else c for c in text)


def terminal_safe(text: str) -> str:
    """Board text must not drive the terminal (escape sequences in a thread name or path)."""
    return visible(text)
