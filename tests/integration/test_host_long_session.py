"""A day of dumps replayed fast through the real membt-host: its memory stays bounded, and a leak in
that day is still told from a cache that filled up and from call stacks that come and go.

The capture has the shape the recorder writes (docs/protocol.md; valid checksums): one program with
the default 20 s interval for 24 hours (4,320 dumps), a handful of modules, MEMBT_TOP=10 groups per
dump, and call stacks that keep changing (a request handler whose stacks differ from one request to
the next, as a board with dlopen'ed plugins or JIT-like code shows), which is what used to make the
host's analysis grow without bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

HOSTPY = Path(__file__).resolve().parents[2] / "hostpy"
DUMPS = 4_320  # 24 h at MEMBT_INTERVAL=20
INTERVAL_MS = 20_000
CHURN_PER_DUMP = 3  # new call stacks per dump
PEAK_RSS_BOUND_MB = 400  # generous: the bounded analysis needs well under half of it
TIMEOUT_S = 600  # a hang becomes a failure; the run itself takes well under a minute here

EXE = "/usr/sbin/routerd"
MODULES = [  # id, lo, hi, build-id, path
    (1, 0x55D0C0A00000, 0x55D0C0A40000, "3f1a2b4c5d6e7f8091a2b3c4d5e6f708192a3b4c", EXE),
    (2, 0x7F3E5C000000, 0x7F3E5C1D6000, "9a8b7c6d5e4f30211203f4e5d6c7b8a990817263", "/lib/libc.so.6"),
    (3, 0x7F3E5D000000, 0x7F3E5D080000, "-", "/usr/lib/routerd/plugin_dhcp.so"),
]


def _line(dump: int, seq: int, body: str) -> bytes:
    text = f"@MBT 1 {dump} {seq} {body}".encode()
    return text + b" *%08x\n" % zlib.crc32(text)


def _stack(site: int) -> list[str]:
    """Return addresses of a call stack: a site in the program, then through the plugin and libc."""
    return [f"{0x55D0C0A01000 + site * 0x10:x}", f"{0x7F3E5D001000 + (site % 97) * 8:x}", f"{0x7F3E5C029D90:x}"]


def day_of_dumps() -> bytes:
    out = []
    for n in range(1, DUMPS + 1):
        up_ms = n * INTERVAL_MS
        groups = [  # stack id, sites, live blocks, live bytes, old blocks, old bytes, oldest age, thread
            (1, 1, 3 * n, 96 * n, 3 * n - 3, 96 * n - 96, max(0, up_ms - 60_000), "main"),  # the leak: 96 B a dump
            (2, 2, min(n, 50), 4096 * min(n, 50), min(n, 50) - 1, 4096 * (min(n, 50) - 1), up_ms, "cache"),
            (3, 3, 2, 256, 0, 0, 1_500, "worker%201"),  # short-lived
        ]
        for k in range(CHURN_PER_DUMP):  # stacks seen once (ids and code paths that keep changing)
            site = 1000 + n * CHURN_PER_DUMP + k
            groups.append((site, site, 1, 64, 0, 0, 900, "worker%202"))
        lines = [
            f"B pid=1234 up_ms={up_ms} leak_age_ms=60000 interval_ms={INTERVAL_MS} depth=16 top=10 ptr_bits=64 "
            f"reason=timer exe={EXE}",
            f"C live_blocks={sum(g[2] for g in groups)} live_bytes={sum(g[3] for g in groups)} "
            f"old_blocks={sum(g[4] for g in groups)} old_bytes={sum(g[5] for g in groups)} stacks={1000 + n * 3} "
            f"groups={len(groups)} block_cap=1048576 stack_cap=65536 dropped_blocks=0 dropped_stacks=0 "
            f"truncated_stacks=0 unknown_frees=0 budget_used=4194304 budget_total=67108864",
        ]
        lines += [f"M {i} {lo:x} {lo:x} {hi:x} {bid} {path}" for i, lo, hi, bid, path in MODULES]  # PIE: bias = lo
        for stack_id, site, *values, thread in groups:
            lines.append(f"S {stack_id} - " + " ".join(_stack(site)))
            lines.append(f"G {stack_id} " + " ".join(str(v) for v in values) + f" {thread}")
        lines.append(
            f"E lines={len(lines) + 1} modules={len(MODULES)} stacks={len(groups)} groups={len(groups)} "
            f"groups_total={len(groups)}"
        )
        out += [_line(n, seq, body) for seq, body in enumerate(lines)]
    return b"".join(out)


def test_a_day_of_dumps_keeps_the_host_bounded_and_finds_the_leak(tmp_path: Path) -> None:
    capture = tmp_path / "day.log"
    capture.write_bytes(day_of_dumps())
    report = tmp_path / "day.json"
    argv = [sys.executable, "-m", "membt_host", "--file", str(capture), "--json", str(report), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(HOSTPY)}
    with open(tmp_path / "stderr", "wb") as err:
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    watchdog = threading.Timer(TIMEOUT_S, child.kill)  # a hang becomes a failure, not a stuck suite
    watchdog.start()
    try:
        _, status, usage = os.wait4(child.pid, 0)  # the peak memory of this very child
    finally:
        watchdog.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    assert child.returncode == 0, f"exit {child.returncode}: " + (tmp_path / "stderr").read_text()
    assert peak_mb < PEAK_RSS_BOUND_MB, f"membt-host peaked at {peak_mb:.0f} MB over a day of dumps"
    print(f"membt-host peak RSS {peak_mb:.0f} MB")
    doc = json.loads(report.read_text(), parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert doc["dumps"]["count"] == DUMPS and doc["problems"]["corrupt_lines"] == 0
    first = doc["suspects"][0]
    assert first["class"] == "growing", [(s["class"], s["frames"][0]["offset"]) for s in doc["suspects"][:5]]
    assert first["frames"][0]["offset"] == "0x1010"  # site 1: the leak
    classes = {s["frames"][0]["offset"]: s["class"] for s in doc["suspects"]}
    assert classes["0x1020"] == "stable"  # the cache filled up in the first 50 dumps, then stayed flat
    assert len(doc["suspects"]) <= 2000  # the stacks that came and went were not all kept
