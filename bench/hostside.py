"""Host-side figures: wire parse throughput and symbolization time, using membt_host from hostpy/."""

from __future__ import annotations

import statistics
import sys
import time
import zlib
from pathlib import Path

import wire

CHUNK = 64 * 1024  # what a serial or socket reader hands the parser at a time, at most


def _import_host(repo: Path) -> None:
    hostpy = str(repo / "hostpy")
    if hostpy not in sys.path:
        sys.path.insert(0, hostpy)


def _renumber(lines: list[bytes], number: int) -> bytes:
    """The dump's record lines as dump `number`, checksums recomputed."""
    out = []
    for line in lines:
        body = line[line.find(wire.MARKER) :].rstrip(b"\r\n").rpartition(b" *")[0]
        fields = body.split(b" ")
        fields[2] = str(number).encode()
        body = b" ".join(fields)
        out.append(body + b" *" + f"{zlib.crc32(body):08x}".encode() + b"\n")
    return b"".join(out)


def synthetic_capture(sample: bytes, target_bytes: int) -> tuple[bytes, int, int]:
    """Copies of the last complete dump in sample, numbered 1, 2, 3 ..., about target_bytes long.
    Returns the capture, the number of dumps in it and the record lines per dump."""
    dump = wire.last_complete(sample)
    if dump is None:
        raise ValueError("the sample holds no complete dump")
    lines = [
        line
        for line in sample.splitlines(keepends=True)
        if (fields := wire._fields(line)) is not None and int(fields[1]) == dump.number
    ]
    per_dump = len(_renumber(lines, 1))
    count = max(1, target_bytes // per_dump)
    return b"".join(_renumber(lines, n) for n in range(1, count + 1)), count, len(lines)


def parse_throughput(repo: Path, sample: bytes, origin: str, quick: bool) -> dict:
    _import_host(repo)
    try:
        from membt_host.protocol import Parser
    except ImportError as exc:
        return {"skipped": f"membt_host.protocol not importable: {exc}"}
    capture, count, lines = synthetic_capture(sample, (8 if quick else 48) * 1024 * 1024)
    seconds = []
    stats: dict[str, int] = {}
    for _ in range(3):
        parser = Parser()
        start = time.perf_counter()
        dumps = []
        for offset in range(0, len(capture), CHUNK):
            dumps += parser.feed(capture[offset : offset + CHUNK])
        dumps += parser.close()
        seconds.append(time.perf_counter() - start)
        stats = dict(parser.stats)
        if stats.get("complete_dumps") != count or len(dumps) != count:
            return {"error": f"parser saw {stats.get('complete_dumps')} complete dumps of {count}: {stats}"}
    best = min(seconds)
    return {
        "origin": origin,
        "bytes": len(capture),
        "dumps": count,
        "lines_per_dump": lines,
        "seconds": seconds,
        "mb_per_s_median": len(capture) / statistics.median(seconds) / 1e6,
        "mb_per_s_best": len(capture) / best / 1e6,
        "lines_per_s_median": count * lines / statistics.median(seconds),
        "parser_stats": stats,
    }


def symbolize_time(repo: Path, out_dir: Path, quick: bool) -> dict:
    if not (repo / "hostpy" / "membt_host" / "symbolize.py").exists():
        return {"skipped": "hostpy/membt_host/symbolize.py not written yet"}
    return {"skipped": "symbolize benchmark not wired to the symbolize API yet"}


def run_all(repo: Path, out_dir: Path, sample: bytes, origin: str, quick: bool) -> dict:
    return {
        "parse": parse_throughput(repo, sample, origin, quick),
        "symbolize": symbolize_time(repo, out_dir, quick),
    }
