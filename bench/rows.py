"""The timed rows: what each one runs, and the rounds that run them side by side."""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import measure
import wire

QEMU_SYSROOT = "/usr/arm-linux-gnueabihf"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    build: str  # workload variant: fp, nofp, lsan, armhf
    tool: str  # plain, membt, heaptrack, lsan, valgrind
    baseline: str  # key of the row of the same round that the slowdown is measured against
    backend: str = ""  # membt's MEMBT_UNWIND ("" = the recorder's default)
    ops_divisor: int = 1  # run at ops / ops_divisor (valgrind, qemu)
    qemu: bool = False


@dataclass
class Context:
    binaries: dict[str, Path]
    membt_lib: dict[str, Path]  # "x86_64" / "armhf"
    ops: int
    live: int
    timeout_s: float


@dataclass
class Sample:
    wall_s: float
    ratio: float
    maxrss_kib: int
    extra_rss_kib: int
    extra_us_per_alloc: float  # (wall - baseline wall) per allocation call of one thread
    dump: dict[str, int] = field(default_factory=dict)  # C record of the final dump (membt rows)


@dataclass
class RowResult:
    row: Row
    threads: int
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def stat(self, name: str) -> tuple[float, float, float] | None:
        values = [getattr(s, name) for s in self.samples]
        if not values:
            return None
        return statistics.median(values), min(values), max(values)


def workload_args(ctx: Context, row: Row, threads: int, ops: int | None = None, live: int | None = None) -> list[str]:
    n_ops = ctx.ops // row.ops_divisor if ops is None else ops
    return ["--threads", str(threads), "--ops", str(n_ops), "--live", str(ctx.live if live is None else live)]


def membt_env(
    lib: Path, backend: str, dump_file: Path, qemu: bool, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {
        "MEMBT_QUIET": "1",
        "MEMBT_OUTPUT": str(dump_file),
        "MEMBT_DUMP_AT_EXIT": "1",
    }
    if backend:
        env["MEMBT_UNWIND"] = backend
    env.update(extra or {})
    env["LD_PRELOAD"] = str(lib)
    return env


def command(
    ctx: Context, row: Row, args: list[str], scratch: Path, env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment for one run of row; under qemu the guest gets env through -E."""
    binary = str(ctx.binaries[row.build])
    if row.tool == "heaptrack":
        return ["heaptrack", "-r", "-o", str(scratch / "heaptrack"), binary, *args], env
    if row.tool == "valgrind":
        return [
            "valgrind",
            "-q",
            "--leak-check=full",
            "--log-file=" + str(scratch / "valgrind.log"),
            binary,
            *args,
        ], env
    if row.tool == "lsan":
        return [binary, *args], {**env, "LSAN_OPTIONS": "exitcode=0:log_path=" + str(scratch / "lsan")}
    if row.qemu:
        guest = [x for k, v in env.items() for x in ("-E", f"{k}={v}")]
        return ["qemu-arm", "-L", QEMU_SYSROOT, *guest, binary, *args], {}
    return [binary, *args], env


def run_once(
    ctx: Context, row: Row, threads: int, args: list[str] | None = None, extra_env: dict[str, str] | None = None
) -> tuple[measure.Run, wire.Dump | None, str]:
    """One run of row; returns the measurement, the recorder's last complete dump and an error text."""
    with tempfile.TemporaryDirectory(prefix="membt-bench-") as tmp:
        scratch = Path(tmp)
        dump_file = scratch / "dump.txt"
        env: dict[str, str] = {}
        if row.tool == "membt":
            lib = ctx.membt_lib["armhf" if row.qemu else "x86_64"]
            env = membt_env(lib, row.backend, dump_file, row.qemu, extra_env)
        argv, env = command(ctx, row, args or workload_args(ctx, row, threads), scratch, env)
        result = measure.run(argv, env, ctx.timeout_s)
        dump = wire.last_complete(dump_file.read_bytes()) if dump_file.exists() else None
    error = ""
    if result.timed_out:
        error = f"timed out after {ctx.timeout_s:.0f} s"
    elif result.returncode != 0:
        error = f"exit {result.returncode}: {result.stderr_tail.strip()[-300:]}"
    elif "workload threads=" not in result.stdout:
        error = "workload did not finish (no summary line)"
    elif row.tool == "membt" and dump is None:
        error = "no complete dump in MEMBT_OUTPUT"
    return result, dump, error


def run_rounds(ctx: Context, rows: list[Row], thread_counts: list[int], rounds: int) -> list[RowResult]:
    """Every row once per round, per thread count, in an order rotated each round; slowdowns are
    taken against the baseline row's run of the same round, so load from other users of the
    machine hits both sides of each ratio alike."""
    results = {(r.key, t): RowResult(r, t) for r in rows for t in thread_counts}
    for round_index in range(rounds):
        for threads in thread_counts:
            shift = round_index % len(rows)
            order = rows[shift:] + rows[:shift]
            runs: dict[str, tuple[measure.Run, wire.Dump | None]] = {}
            for row in order:
                result, dump, error = run_once(ctx, row, threads)
                print(
                    f"  round {round_index + 1}/{rounds} threads={threads} {row.key:<22} "
                    f"{result.wall_s:8.3f} s {result.maxrss_kib / 1024:8.1f} MiB {error}",
                    file=sys.stderr,
                    flush=True,
                )
                if error:
                    results[(row.key, threads)].failures.append(error)
                    continue
                runs[row.key] = (result, dump)
            for row in rows:
                if row.key not in runs or row.baseline not in runs:
                    continue
                result, dump = runs[row.key]
                base = runs[row.baseline][0]
                # each operation makes exactly one allocation call; filling the live set makes one per block
                allocs_per_thread = ctx.ops // row.ops_divisor + ctx.live // threads
                results[(row.key, threads)].samples.append(
                    Sample(
                        wall_s=result.wall_s,
                        ratio=result.wall_s / base.wall_s,
                        maxrss_kib=result.maxrss_kib,
                        extra_rss_kib=result.maxrss_kib - base.maxrss_kib,
                        extra_us_per_alloc=(result.wall_s - base.wall_s) * 1e6 / allocs_per_thread,
                        dump=dict(dump.counters) if dump else {},
                    )
                )
    return [results[(r.key, t)] for t in thread_counts for r in rows]
