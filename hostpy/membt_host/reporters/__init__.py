"""One reporter per output format, each built with from_analysis(summary, ...) and written with render(out)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def human_rate(per_min: float) -> str:
    sign = "+" if per_min > 0 else ("-" if per_min < 0 else "±")
    return f"{sign}{human_bytes(abs(per_min))}/min"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
