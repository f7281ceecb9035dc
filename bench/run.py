#!/usr/bin/env python3
"""membt benchmark suite: one command builds the workload, runs every row side by side in
alternating rounds, and writes bench/results/latest.md and latest.json (see bench/README.md)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import build
import hostside
import measure
import report
import rows
import wire
from rows import Row

# Debian packages for each external tool the suite compares against or runs on.
TOOL_PACKAGES = {
    "heaptrack": "heaptrack",
    "valgrind": "valgrind",
    "qemu-arm": "qemu-user",
    "arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf libc6-dev-armhf-cross",
}

BACKENDS = ["", "fp", "unwind", "glibc", "cached"]  # "" = the recorder's default (MEMBT_UNWIND unset)
VALGRIND_DIVISOR = 4
QEMU_DIVISOR = 20
CHAIN_FRAMES = 14  # alloc_leaf + 12 chain levels + allocate_via_chain, all in the workload itself


DEFAULT_OUT = build.BENCH / "results"
README_BEGIN = "<!-- latest results: written by bench/run.py after a full run -->"
README_END = "<!-- end of latest results -->"


def update_readme(markdown: str) -> None:
    """Put a full run's results into bench/README.md between the two markers."""
    readme = build.BENCH / "README.md"
    text = readme.read_text()
    head, found, rest = text.partition(README_BEGIN)
    _, found_end, tail = rest.partition(README_END)
    if not found or not found_end:
        print("bench/README.md has no results markers; not updated", file=sys.stderr)
        return
    body = markdown.replace("# membt benchmark results", "### Latest full run", 1).replace("\n## ", "\n#### ")
    readme.write_text(head + README_BEGIN + "\n" + body.strip() + "\n" + README_END + tail)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 rounds, fewer operations: for development")
    p.add_argument("--rounds", type=int, help="rounds of every row (default 5, --quick 2)")
    p.add_argument("--ops", type=int, help="operations per thread (default 2000000, --quick 300000)")
    p.add_argument("--live", type=int, default=10000, help="live blocks in the timed rows (default 10000)")
    p.add_argument("--threads", default="1,2", help="thread counts, comma separated (default 1,2)")
    p.add_argument(
        "--memory-live", type=int, default=1_000_000, help="live blocks in the bytes-per-block runs (default 1000000)"
    )
    p.add_argument(
        "--memory-budget",
        default="38M",
        help="MEMBT_BUDGET stated for the 64-bit bytes-per-block runs, which also run at the 64 MiB default "
        "(default 38M: holds 1,000,000 blocks of the workload with none dropped and ~10%% to spare; 36M dropped "
        "113). Resident memory per block follows the budget, because the block table's shards reach their final "
        "size and touch all their pages: state the budget that holds --memory-live blocks, not more",
    )
    p.add_argument(
        "--memory-budget-32",
        default="22M",
        help="the same for the 32-bit build (armhf): its 16-byte slots need less; 22M holds 1,000,000 blocks with "
        "none dropped and ~5%% to spare, 20M dropped 46,660 (default 22M)",
    )
    p.add_argument("--no-install", action="store_true", help="never apt-get install missing tools")
    p.add_argument("--no-scons", action="store_true", help="use build/*/lib/libmembt.so as it is")
    p.add_argument(
        "--recorder-tree",
        type=Path,
        default=build.REPO,
        help="source tree whose recorder is measured (default: this repository; e.g. an export of "
        "one commit made with `git archive`, with the commit id in a MEMBT_COMMIT file)",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before one run is killed")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where latest.md/json go (default bench/results)")
    args = p.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.ops = args.ops or (300_000 if args.quick else 2_000_000)
    args.thread_counts = [int(t) for t in args.threads.split(",")]
    return args


def ensure_tools(install: bool) -> dict[str, str]:
    """Install missing tools with apt when root; returns tool -> why it is unavailable."""
    missing = [tool for tool in TOOL_PACKAGES if shutil.which(tool) is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = " ".join(TOOL_PACKAGES[t] for t in missing).split()
        print(f"installing {' '.join(packages)} with apt-get", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-q"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *packages],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return {
        t: f"{t} not installed (Debian package {TOOL_PACKAGES[t]})" for t in TOOL_PACKAGES if shutil.which(t) is None
    }


def backend_name(backend: str) -> str:
    return backend or "default"


def timed_rows(have: set[str], membt: bool) -> list[Row]:
    """x86_64 rows; a row whose tool or build is unavailable is left out (reported as skipped)."""
    out = [
        Row("plain-fp", "uninstrumented", "fp", "plain", "plain-fp"),
        Row("plain-nofp", "uninstrumented", "nofp", "plain", "plain-nofp"),
    ]
    if membt:
        for build_name in ("fp", "nofp"):
            for backend in BACKENDS:
                out.append(
                    Row(
                        f"membt-{build_name}-{backend_name(backend)}",
                        f"membt LD_PRELOAD, MEMBT_UNWIND={backend or '(unset)'}",
                        build_name,
                        "membt",
                        f"plain-{build_name}",
                        backend,
                    )
                )
    if "heaptrack" in have:
        out += [
            Row("heaptrack-fp", "heaptrack -r", "fp", "heaptrack", "plain-fp"),
            Row("heaptrack-nofp", "heaptrack -r", "nofp", "heaptrack", "plain-nofp"),
        ]
    if "lsan" in have:
        out.append(Row("lsan-fp", "-fsanitize=leak build", "lsan", "lsan", "plain-fp"))
    if "valgrind" in have:
        out += [
            Row(
                "plain-fp-reduced",
                f"uninstrumented at ops/{VALGRIND_DIVISOR}",
                "fp",
                "plain",
                "plain-fp-reduced",
                ops_divisor=VALGRIND_DIVISOR,
            ),
            Row(
                "valgrind-fp",
                f"valgrind memcheck at ops/{VALGRIND_DIVISOR}",
                "fp",
                "valgrind",
                "plain-fp-reduced",
                ops_divisor=VALGRIND_DIVISOR,
            ),
        ]
    return [r for r in out if r.build in have and (r.tool in ("plain", "membt", "lsan") or r.tool in have)]


def qemu_rows(membt_arm: bool) -> list[Row]:
    out = [
        Row(
            "qemu-plain",
            f"uninstrumented under qemu-arm, ops/{QEMU_DIVISOR}",
            "armhf",
            "plain",
            "qemu-plain",
            ops_divisor=QEMU_DIVISOR,
            qemu=True,
        )
    ]
    if membt_arm:
        for backend in ("", "unwind"):
            out.append(
                Row(
                    f"qemu-membt-{backend_name(backend)}",
                    f"membt under qemu-arm, MEMBT_UNWIND={backend or '(unset)'}, ops/{QEMU_DIVISOR}",
                    "armhf",
                    "membt",
                    "qemu-plain",
                    backend,
                    ops_divisor=QEMU_DIVISOR,
                    qemu=True,
                )
            )
    return out


def function_range(binary: Path, name: str) -> tuple[int, int]:
    """Link-time [start, end) of a function in the workload (the Thumb bit cleared)."""
    from elftools.elf.elffile import ELFFile

    with binary.open("rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym.name == name:
                start = sym["st_value"] & ~1
                return start, start + sym["st_size"]
    raise LookupError(f"{name} not in {binary}")


def stack_quality(ctx: rows.Context, builds: list[str], qemu: bool) -> list[dict]:
    """For each backend: are the captured stacks complete? One run with every stack listed. A stack
    whose innermost workload frame is in alloc_leaf came through the chain; it is complete when all
    its levels are there. Other stacks (main's setup, stdio, pthread_create) are counted apart."""
    out = []
    for build_name in builds:
        binary = ctx.binaries[build_name]
        leaf_lo, leaf_hi = function_range(binary, "alloc_leaf")
        for backend in ["", "unwind"] if qemu else BACKENDS:
            row = Row("quality", "", build_name, "membt", "", backend, qemu=qemu)
            ops = max(ctx.ops // (QEMU_DIVISOR if qemu else 10), 1000)
            args = ["--threads", "1", "--ops", str(ops), "--live", "2000"]
            _, dump, error = rows.run_once(ctx, row, 1, args, {"MEMBT_TOP": "1000"})
            entry: dict = {"build": build_name, "backend": backend_name(backend), "error": error}
            if dump is not None:
                chain, complete, lengths = 0, 0, []
                for stack in dump.stacks.values():
                    own = [a for a in wire.link_time(dump, stack, binary.name) if a is not None]
                    if own and leaf_lo <= own[0] - 1 < leaf_hi:  # a return address points after its call
                        chain += 1
                        lengths.append(len(stack))
                        complete += len(own) >= CHAIN_FRAMES
                entry.update(
                    stacks=len(dump.stacks),
                    chain_stacks=chain,
                    complete=complete,
                    median_frames=statistics.median(lengths) if lengths else 0,
                    depth=int(dump.begin.get("depth", "0")),
                    truncated_stacks=dump.counters.get("truncated_stacks", 0),
                    groups_total=dump.end.get("groups_total", 0) if dump.end else 0,
                )
            out.append(entry)
            print(f"  stacks {build_name} {backend_name(backend)}: {entry}", file=sys.stderr, flush=True)
    return out


def memory_per_block(ctx: rows.Context, build_name: str, qemu: bool, live: int, budget: str) -> dict:
    """Recorder memory per live block: runs holding `live` blocks and 1,000 blocks (`--ops 0`: fill
    the live set, then exit), uninstrumented and with membt at the stated MEMBT_BUDGET and at the
    default. The block table's pages are resident once its shards reach their final size, so the
    resident bytes per block follow the budget, not what budget_used counts: both are reported."""
    entry: dict = {"build": build_name, "live": live, "qemu": qemu, "budgets": []}
    small = 1000
    plain = Row("mem-plain", "", build_name, "plain", "", qemu=qemu)
    rss_plain = {}
    for n in (live, small):
        result, _, error = _memory_run(ctx, plain, n, None)
        if error:
            entry["error"] = f"uninstrumented, {n:,} blocks: {error}"
            return entry
        rss_plain[n] = result.maxrss_kib * 1024
    entry.update(rss_plain=rss_plain[live], rss_plain_small=rss_plain[small])
    membt = Row("mem-membt", "", build_name, "membt", "", qemu=qemu)
    for setting in (budget, ""):  # "" = MEMBT_BUDGET unset, the recorder's default
        at: dict = {"budget": setting or "default", "stated": bool(setting)}
        entry["budgets"].append(at)
        runs = {}
        for n in (live, small):
            result, dump, error = _memory_run(ctx, membt, n, setting)
            if error:
                at["error"] = f"{n:,} blocks: {error}"
                break
            assert dump is not None  # run_once reports a missing dump as an error
            runs[n] = (result.maxrss_kib * 1024, dump)
        if "error" in at:
            continue
        (rss_big, big), (rss_small, small_dump) = runs[live], runs[small]
        c, s = big.counters, small_dump.counters
        entry["ptr_bits"] = int(big.begin.get("ptr_bits", "0"))
        at.update(
            live_blocks=c.get("live_blocks", 0),
            dropped_blocks=c.get("dropped_blocks", 0),
            dropped_stacks=c.get("dropped_stacks", 0),
            stacks=c.get("stacks", 0),
            block_cap=c.get("block_cap", 0),
            budget_used=c.get("budget_used", 0),
            budget_total=c.get("budget_total", 0),
            budget_used_small=s.get("budget_used", 0),
            live_blocks_small=s.get("live_blocks", 0),
            rss_membt=rss_big,
            rss_membt_small=rss_small,
            # what the recorder costs holding few blocks: library, reporter thread, interned stacks
            rss_fixed=rss_small - rss_plain[small],
        )
        blocks = at["live_blocks"] - at["live_blocks_small"]
        if blocks > 0:
            at["budget_bytes_per_block"] = (at["budget_used"] - at["budget_used_small"]) / blocks
            extra = rss_big - rss_plain[live]
            at["rss_bytes_per_block"] = (extra - at["rss_fixed"]) / blocks
            at["rss_total_per_block"] = extra / at["live_blocks"]
    return entry


def _memory_run(
    ctx: rows.Context, row: Row, blocks: int, budget: str | None
) -> tuple[measure.Run, wire.Dump | None, str]:
    env = {"MEMBT_BUDGET": budget} if budget else None
    result, dump, error = rows.run_once(ctx, row, 1, ["--threads", "1", "--ops", "0", "--live", str(blocks)], env)
    what = f"MEMBT_BUDGET={budget or '(unset)'}" if row.tool == "membt" else "uninstrumented"
    print(
        f"  memory {row.build} {what} live={blocks}: {result.wall_s:.2f} s {result.maxrss_kib / 1024:.1f} MiB {error}",
        file=sys.stderr,
        flush=True,
    )
    return result, dump, error


def dump_size(ctx: rows.Context, build_name: str, qemu: bool, threads: int) -> dict:
    """Bytes of a default dump (MEMBT_TOP, MEMBT_DEPTH unset) and its time on a 115200-baud console."""
    row = Row("dump", "", build_name, "membt", "", qemu=qemu)
    ops = max(ctx.ops // (QEMU_DIVISOR if qemu else 4), 1000)
    _, dump, error = rows.run_once(
        ctx, row, threads, ["--threads", str(threads), "--ops", str(ops), "--live", str(ctx.live)]
    )
    entry: dict = {"build": build_name, "qemu": qemu, "threads": threads, "error": error}
    if dump is not None:
        entry.update(
            bytes=dump.text_bytes,
            lines=dump.lines,
            stacks=len(dump.stacks),
            modules=len(dump.modules),
            groups=len(dump.groups),
            depth=int(dump.begin.get("depth", "0")),
            top=int(dump.begin.get("top", "0")),
            seconds_at_115200=dump.text_bytes * 10 / 115200,
        )
    return entry


def real_dump_sample(ctx: rows.Context) -> tuple[bytes, str]:
    """A real dump of the workload with many stacks listed, the raw material of the parse benchmark."""
    row = Row("sample", "", "nofp", "membt", "")
    with tempfile.TemporaryDirectory(prefix="membt-bench-") as tmp:
        dump_file = Path(tmp) / "sample.txt"
        env = rows.membt_env(ctx.membt_lib["x86_64"], "", dump_file, False, {"MEMBT_TOP": "200"})
        env["MEMBT_OUTPUT"] = str(dump_file)
        argv, env = rows.command(ctx, row, ["--threads", "2", "--ops", "100000", "--live", "5000"], Path(tmp), env)
        result = measure.run(argv, env, ctx.timeout_s)
        data = dump_file.read_bytes() if dump_file.exists() else b""
    if result.returncode != 0 or wire.last_complete(data) is None:
        return b"", ""
    return data, "the workload (nofp build, 2 threads, MEMBT_TOP=200)"


def summarize(results: list[rows.RowResult]) -> list[dict]:
    out = []
    for r in results:
        entry: dict = {
            "key": r.row.key,
            "label": r.row.label,
            "build": r.row.build,
            "tool": r.row.tool,
            "backend": backend_name(r.row.backend) if r.row.tool == "membt" else "",
            "threads": r.threads,
            "baseline": r.row.baseline,
            "ops_divisor": r.row.ops_divisor,
            "rounds": len(r.samples),
            "failures": r.failures,
            "samples": [asdict(s) for s in r.samples],
        }
        for name in ("wall_s", "ratio", "maxrss_kib", "extra_rss_kib", "extra_us_per_alloc"):
            entry[name] = r.stat(name)
        budgets = [s.dump.get("budget_used") for s in r.samples if s.dump.get("budget_used") is not None]
        entry["budget_used"] = statistics.median(budgets) if budgets else None
        out.append(entry)
    return out


def main() -> int:
    args = parse_args()
    started = datetime.datetime.now(datetime.UTC)
    print(f"membt bench: rounds={args.rounds} ops={args.ops} threads={args.thread_counts}", file=sys.stderr)
    unavailable = ensure_tools(not args.no_install)
    build.build_launcher()
    workloads = build.build_workloads()
    recorder = build.build_recorder(args.recorder_tree.resolve(), not args.no_scons)
    have = set(workloads.binaries) | {t for t in ("heaptrack", "valgrind") if t not in unavailable}
    skipped = {
        **{f"workload-{k}": v for k, v in workloads.skipped.items()},
        **{f"libmembt ({k})": v for k, v in recorder.skipped.items()},
        **unavailable,
    }

    ctx = rows.Context(workloads.binaries, recorder.lib, args.ops, args.live, args.timeout)
    membt_x86 = "x86_64" in recorder.lib
    membt_arm = "armhf" in recorder.lib and "armhf" in workloads.binaries and "qemu-arm" not in unavailable

    print("timed rows, x86_64:", file=sys.stderr)
    x86 = summarize(rows.run_rounds(ctx, timed_rows(have, membt_x86), args.thread_counts, args.rounds))
    arm: list[dict] = []
    if "armhf" in workloads.binaries and "qemu-arm" not in unavailable:
        print("timed rows, armhf under qemu-arm:", file=sys.stderr)
        arm = summarize(rows.run_rounds(ctx, qemu_rows(membt_arm), args.thread_counts, args.rounds))

    quality, memory, dumps = [], [], []
    if membt_x86:
        print("stack completeness, memory per block, dump size:", file=sys.stderr)
        quality += stack_quality(ctx, ["fp", "nofp"], qemu=False)
        memory.append(memory_per_block(ctx, "fp", False, args.memory_live, args.memory_budget))
        dumps += [dump_size(ctx, "fp", False, 1), dump_size(ctx, "nofp", False, 2)]
    if membt_arm:
        quality += stack_quality(ctx, ["armhf"], qemu=True)
        memory.append(memory_per_block(ctx, "armhf", True, args.memory_live, args.memory_budget_32))
        dumps.append(dump_size(ctx, "armhf", True, 1))

    print("host side:", file=sys.stderr)
    sample, origin = real_dump_sample(ctx) if membt_x86 else (b"", "")
    if not sample:
        vector = build.REPO / "tests" / "data" / "wire" / "basic.txt"
        sample, origin = vector.read_bytes(), "the test vector tests/data/wire/basic.txt (no recorder dump)"
    host = hostside.run_all(build.REPO, build.OUT, sample, origin, quick=args.quick)

    results = {
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": build.cpu_model(), "cores": build.cores(), "loadavg_end": os.getloadavg()},
        "commit": recorder.commit,
        "settings": {
            "rounds": args.rounds,
            "ops": args.ops,
            "live": args.live,
            "threads": args.thread_counts,
            "valgrind_divisor": VALGRIND_DIVISOR,
            "qemu_divisor": QEMU_DIVISOR,
            "memory_live": args.memory_live,
            "memory_budget": args.memory_budget,
            "memory_budget_32": args.memory_budget_32,
            "quick": args.quick,
        },
        "compile": workloads.commands,
        "skipped": skipped,
        "x86_64": x86,
        "armhf_qemu": arm,
        "stacks": quality,
        "memory": memory,
        "dump_size": dumps,
        "host": host,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    markdown = report.render(results)
    (args.out / "latest.md").write_text(markdown)
    if not args.quick and args.out == DEFAULT_OUT:
        update_readme(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
