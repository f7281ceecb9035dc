"""Drive libmembt.so through cffi, one scenario per fresh Python process (the recorder is a
process-wide singleton: its budget and tables are set once per process).

    python3 driver.py LIBMEMBT PROBE|- SCENARIO JSON_ARGS

prints one JSON object (the scenario's result) as its last stdout line.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cffi import FFI

HEADER = Path(__file__).resolve().parents[2] / "firmware_lib" / "include" / "membt.h"

PROBE_CDEF = """
int probe_site_a(uintptr_t addr, size_t len);
int probe_site_b(uintptr_t addr, size_t len);
int probe_race(int threads, int blocks, int free_every, uintptr_t base);
"""

HOOKS_CDEF = """
void *malloc(size_t size);
void *realloc(void *ptr, size_t size);
void free(void *ptr);
"""

# Fake block addresses: the recorder keys blocks by address and never touches the memory.
BASE = 0x10000000


def header_declarations(text: str) -> str:
    """membt.h without its preprocessor lines and C++ guards: the types and prototypes cffi needs."""
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


class Recorder:
    def __init__(self, library: str, probe: str | None) -> None:
        self.ffi = FFI()
        self.ffi.cdef(header_declarations(HEADER.read_text()))
        self.lib = self.ffi.dlopen(library)
        hooks = FFI()
        hooks.cdef(HOOKS_CDEF)
        self.hooks_ffi, self.hooks = hooks, hooks.dlopen(library)  # the PRELOAD hooks, called directly
        self.probe = None
        if probe:
            self.ffi.cdef(PROBE_CDEF)
            self.probe = self.ffi.dlopen(probe)

    def config(self, **fields: Any) -> Any:
        cfg = self.ffi.new("membt_config *")
        self.lib.membt_config_init(cfg)
        for name, value in fields.items():
            setattr(cfg, name, value.encode() if isinstance(value, str) else value)
        return cfg

    def config_dict(self, cfg: Any) -> dict[str, Any]:
        return {name: (self.ffi.string(getattr(cfg, name)).decode()
                       if name in ("output", "format", "unwind") else int(getattr(cfg, name)))
                for name in ("leak_age_ms", "interval_ms", "depth", "top", "budget_bytes", "output", "format",
                             "dump_signal", "unwind", "start_reporter")}

    def start(self, output: str, **fields: Any) -> int:
        """Start recording into `output` with no reporter thread: dumps come only from dump()."""
        return int(self.lib.membt_init(self.config(output=output, start_reporter=0, **fields)))

    def record(self, addr: int, size: int) -> int:
        return int(self.lib.membt_record(self.ffi.cast("void *", addr), size))

    def unrecord(self, addr: int) -> int:
        return int(self.lib.membt_unrecord(self.ffi.cast("void *", addr)))

    def dump(self) -> int:
        return int(self.lib.membt_dump())

    def stats(self) -> dict[str, int]:
        stats = self.ffi.new("membt_stats *")
        self.lib.membt_get_stats(stats)
        return {name: int(getattr(stats, name)) for name in (
            "live_blocks", "live_bytes", "stacks", "stack_cap", "block_cap", "dropped_blocks", "dropped_stacks",
            "truncated_stacks", "unknown_frees", "budget_used", "budget_total", "dumps", "enabled")}


# ---- scenarios: each returns what the test needs besides the dump file ----------------------------

def counts(rec: Recorder, output: str) -> dict[str, Any]:
    init = rec.start(output)
    sizes = [10, 20, 30, 40, 50, 60]
    records = [rec.record(BASE + i * 64, size) for i, size in enumerate(sizes)]
    unrecords = [rec.unrecord(BASE + i * 64) for i in (1, 3)]
    written = rec.dump()
    return {"init": init, "records": records, "unrecords": unrecords, "written": written, "stats": rec.stats()}


def ages(rec: Recorder, output: str, sleep_s: float) -> dict[str, Any]:
    init = rec.start(output, leak_age_ms=200)
    rec.record(BASE, 100)
    rec.record(BASE + 64, 100)
    time.sleep(sleep_s)
    rec.record(BASE + 128, 7)
    rec.dump()
    return {"init": init, "stats": rec.stats()}


def sites(rec: Recorder, output: str) -> dict[str, Any]:
    assert rec.probe is not None
    init = rec.start(output)
    a = [rec.probe.probe_site_a(BASE + i * 64, 8) for i in range(3)]
    b = [rec.probe.probe_site_b(BASE + 0x100000 + i * 64, 100) for i in range(5)]
    rec.dump()
    return {"init": init, "a": a, "b": b, "stats": rec.stats()}


def realloc_moves(rec: Recorder, output: str) -> dict[str, Any]:
    init = rec.start(output)
    ffi, hooks = rec.hooks_ffi, rec.hooks
    small = hooks.malloc(16)
    moved = hooks.realloc(small, 1 << 20)  # far past the small chunk: glibc must move it
    after_realloc = rec.stats()
    rec.dump()
    hooks.free(moved)
    after_free = rec.stats()
    return {"init": init, "small": int(ffi.cast("uintptr_t", small)), "moved": int(ffi.cast("uintptr_t", moved)),
            "after_realloc": after_realloc, "after_free": after_free}


def unknown_free(rec: Recorder, output: str) -> dict[str, Any]:
    libc = FFI()
    libc.cdef("void *malloc(size_t size);")
    before_recorder = libc.dlopen(None).malloc(40)  # allocated by libc itself, never seen by the recorder
    init = rec.start(output)
    rc = rec.unrecord(BASE + 0xabc0)
    rec.hooks.free(before_recorder)  # the free hook must pass it on to libc and only count it
    rec.dump()
    return {"init": init, "unrecord": rc, "stats": rec.stats()}


def budget(rec: Recorder, output: str, budget_bytes: int, blocks: int) -> dict[str, Any]:
    init = rec.start(output, budget_bytes=budget_bytes)
    failed = sum(1 for i in range(blocks) if rec.record(BASE + i * 64, 32) != 0)
    written = rec.dump()
    return {"init": init, "failed": failed, "written": written, "stats": rec.stats()}


def race(rec: Recorder, output: str, threads: int, blocks: int, free_every: int) -> dict[str, Any]:
    assert rec.probe is not None
    init = rec.start(output)
    failures = rec.probe.probe_race(threads, blocks, free_every, BASE)
    rec.dump()
    return {"init": init, "failures": failures, "stats": rec.stats()}


def python_threads(rec: Recorder, output: str, threads: int, blocks: int) -> dict[str, Any]:
    """cffi releases the GIL around calls: these threads meet inside the recorder too."""
    init = rec.start(output)
    failures: list[int] = []

    def worker(index: int) -> None:
        first = BASE + index * blocks * 64
        bad = sum(1 for i in range(blocks) if rec.record(first + i * 64, 3) != 0)
        bad += sum(1 for i in range(0, blocks, 2) if rec.unrecord(first + i * 64) != 0)
        failures.append(bad)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    rec.dump()
    return {"init": init, "failures": sum(failures), "stats": rec.stats()}


def shaped(rec: Recorder, output: str, **fields: Any) -> dict[str, Any]:
    """Three call sites (two through the probe, one from here) under a given depth/top/format."""
    assert rec.probe is not None
    init = rec.start(output, **fields)
    for i in range(4):
        rec.probe.probe_site_a(BASE + i * 64, 10)
    for i in range(2):
        rec.probe.probe_site_b(BASE + 0x100000 + i * 64, 1000)
    rec.record(BASE + 0x200000, 5)
    written = rec.dump()
    return {"init": init, "written": written, "stats": rec.stats()}


def options(rec: Recorder) -> dict[str, Any]:
    """membt_config_init under the environment this process was started with."""
    return {"config": rec.config_dict(rec.config())}


SCENARIOS = {f.__name__: f for f in (counts, ages, sites, realloc_moves, unknown_free, budget, race,
                                      python_threads, shaped, options)}


def main() -> None:
    library, probe, name, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    recorder = Recorder(library, None if probe == "-" else probe)
    result = SCENARIOS[name](recorder, **args)
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
