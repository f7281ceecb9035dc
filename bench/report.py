"""Render the results (as run.py collected them) as markdown, each figure beside its target."""

from __future__ import annotations

# Targets from issue 4; anchors are the figures the issue quotes for other tools on such a workload.
TARGET_FP = 1.5
TARGET_NOFP = 3.0
TARGET_BYTES_64 = 32
TARGET_BYTES_32 = 20
TARGET_DUMP_S = 0.5
TARGET_PARSE_MBS = 20.0
TARGET_SYMBOLIZE_COLD_S = 2.0
TARGET_SYMBOLIZE_CACHED_S = 0.1  # "near zero": we count a tenth of a second or less as met
ANCHORS = {"lsan": "anchor ~2x", "heaptrack": "anchor ~4.5x", "valgrind": "no anchor"}

MIB = 1024 * 1024


def at_most(value: float, target: float, unit: str = "x") -> str:
    if value <= target:
        return f"met ({value:.2f}{unit} ≤ {target:g}{unit}, {100 * (1 - value / target):.0f}% under)"
    return f"**missed by {100 * (value / target - 1):.0f}%** ({value:.2f}{unit} > {target:g}{unit})"


def at_least(value: float, target: float, unit: str) -> str:
    if value >= target:
        return f"met ({value:.1f} {unit} ≥ {target:g} {unit}, {value / target:.1f}× the target)"
    return f"**missed by {100 * (1 - value / target):.0f}%** ({value:.1f} {unit} < {target:g} {unit})"


def _mmm(stat: list | tuple | None, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    if not stat:
        return "–"
    med, lo, hi = (v / scale for v in stat)
    return f"{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})"


def _quality(results: dict) -> dict[tuple[str, str], dict]:
    return {(q["build"], q["backend"]): q for q in results.get("stacks", [])}


def _complete_text(q: dict | None) -> str:
    if not q:
        return "–"
    if q.get("error"):
        return f"error: {q['error'][:60]}"
    return f"{q['complete']}/{q['chain_stacks']}"


def _is_complete(q: dict | None) -> bool:
    return bool(q) and not q.get("error") and q.get("chain_stacks", 0) > 0 and q["complete"] == q["chain_stacks"]


def _row_target(row: dict, quality: dict) -> tuple[str, str]:
    """(target text, verdict) for one timed row."""
    ratio = row["ratio"][0] if row["ratio"] else None
    if row["tool"] == "membt" and ratio is not None:
        target = TARGET_FP if row["build"] == "fp" else TARGET_NOFP
        verdict = at_most(ratio, target)
        if row["build"] == "nofp" and not _is_complete(quality.get((row["build"], row["backend"]))):
            verdict += "; stacks incomplete"
        return f"≤ {target:g}x", verdict
    return ANCHORS.get(row["tool"], ""), ""


def _rows_table(rows: list[dict], quality: dict, threads: int, qemu: bool) -> list[str]:
    out = [
        (
            "| row | build | wall s, median (min–max) | slowdown, median (min–max) | target | verdict "
            "| extra µs per allocation "
            "| peak RSS MiB | RSS over baseline MiB | recorder budget_used MiB | complete stacks |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["threads"] != threads:
            continue
        target, verdict = ("", "") if qemu else _row_target(row, quality)
        if row["failures"] and not row["samples"]:
            verdict = f"failed: {row['failures'][0][:80]}"
        elif row["failures"]:
            verdict += f" ({len(row['failures'])} runs failed)"
        budget = f"{row['budget_used'] / MIB:.2f}" if row.get("budget_used") is not None else "–"
        build_key = row["build"]
        complete = _complete_text(quality.get((build_key, row["backend"]))) if row["tool"] == "membt" else ""
        label = row["label"]
        if row["tool"] == "valgrind":
            label += "; slowdown against plain-fp-reduced"
        out.append(
            f"| {row['key']} | {row['build']} | {_mmm(row['wall_s'])} | {_mmm(row['ratio'], '{:.2f}')}"
            f" | {target} | {verdict} | {_mmm(row['extra_us_per_alloc'], '{:.2f}')}"
            f" | {_mmm(row['maxrss_kib'], '{:.1f}', 1024)}"
            f" | {_mmm(row['extra_rss_kib'], '{:.1f}', 1024)} | {budget} | {complete} |"
        )
        out[-1] = out[-1].replace(f"| {row['key']} |", f"| {row['key']} ({label}) |", 1)
    return out


def _find(rows: list[dict], key: str, threads: int) -> dict | None:
    for row in rows:
        if row["key"] == key and row["threads"] == threads and row["ratio"]:
            return row
    return None


def _bytes_verdict(value: float, target: float) -> str:
    if value <= target:
        return f"met ({value:.1f} B ≤ {target:g} B, {target - value:.1f} B under)"
    return f"**missed by {value - target:.1f} B, {100 * (value / target - 1):.1f}%** ({value:.1f} B > {target:g} B)"


def _budget_runs(mem: dict) -> tuple[dict | None, dict | None]:
    """(the run at the stated budget, the run at the default budget) of one memory entry."""
    stated = next((b for b in mem.get("budgets", []) if b["stated"]), None)
    default = next((b for b in mem.get("budgets", []) if not b["stated"]), None)
    return stated, default


def _memory_targets(mem: dict) -> list[str]:
    """The two memory rows of the target table for one build. The bytes verdict is on resident
    memory at the stated budget: the block table's pages are all resident once the live set fills
    its shards, so budget_used (what is stored per block) understates what a device pays."""
    bits = mem.get("ptr_bits") or (32 if mem["build"] == "armhf" else 64)
    target = TARGET_BYTES_32 if bits == 32 else TARGET_BYTES_64
    where = f"{mem['build']}{' (qemu-arm)' if mem['qemu'] else ''}"
    stated, default = _budget_runs(mem)
    name = f"≤ {target} B per live block, {bits}-bit, {where}"
    hold = f"{mem['live']:,} live blocks inside the stated budget, {bits}-bit"
    if mem.get("error") or stated is None:
        why = mem.get("error", "not measured")
        return [f"| {name} | {why} | – |", f"| {hold} | {why} | – |"]
    name += f": resident bytes at the stated MEMBT_BUDGET={stated['budget']}"
    if stated.get("error") or "rss_bytes_per_block" not in stated:
        why = stated.get("error", "no blocks tracked")
        return [f"| {name} | {why} | – |", f"| {hold} | MEMBT_BUDGET={stated['budget']}: {why} | – |"]
    figure = (
        f"resident {stated['rss_bytes_per_block']:.1f} B/block beyond membt's {stated['rss_fixed'] / MIB:.1f} MiB "
        f"with 1,000 blocks (which holds the interned stacks), {stated['rss_total_per_block']:.1f} B/block all in; "
        f"stored (budget_used) {stated['budget_bytes_per_block']:.1f} B/block"
    )
    if default and "rss_bytes_per_block" in default:
        figure += (
            f"; at the {default['budget_total'] / MIB:.0f} MiB default: resident "
            f"{default['rss_bytes_per_block']:.1f} B/block ({default['rss_total_per_block']:.1f} all in)"
        )
    elif default:
        figure += f"; at the default: {default.get('error', 'no blocks tracked')}"
    verdict = f"resident at {stated['budget']}: {_bytes_verdict(stated['rss_bytes_per_block'], target)}"
    inside = stated["dropped_blocks"] == 0 and stated["budget_used"] <= stated["budget_total"]
    held = (
        f"MEMBT_BUDGET={stated['budget']} ({stated['budget_total'] / MIB:.0f} MiB): used "
        f"{stated['budget_used'] / MIB:.1f} MiB, block_cap {stated['block_cap']:,}, tracked "
        f"{stated['live_blocks']:,}, dropped {stated['dropped_blocks']:,}"
    )
    if default and "dropped_blocks" in default:
        held += f"; default {default['budget_total'] / MIB:.0f} MiB: dropped {default['dropped_blocks']:,}"
    return [
        f"| {name} | {figure} | {verdict} |",
        f"| {hold} | {held} | {'met' if inside else '**missed**'} |",
    ]


def _summary(results: dict) -> list[str]:
    quality = _quality(results)
    x86 = results["x86_64"]
    out = ["| target (issue 4) | measured | verdict |", "|---|---|---|"]
    for threads in results["settings"]["threads"]:
        membt_rows = [r for r in x86 if r["tool"] == "membt" and r["threads"] == threads and r["ratio"]]
        for build_name, target, what in (
            ("fp", TARGET_FP, "with frame pointers"),
            ("nofp", TARGET_NOFP, "without frame pointers, complete stacks"),
        ):
            default = _find(x86, f"membt-{build_name}-default", threads)
            complete = [
                r
                for r in membt_rows
                if r["build"] == build_name and _is_complete(quality.get((build_name, r["backend"])))
            ]
            best = min(complete, key=lambda r: r["ratio"][0]) if complete else None
            name = f"membt ≤ {target:g}x {what}, {threads} thread(s)"
            if default is None and best is None:
                out.append(f"| {name} | not measured | – |")
                continue
            figure, verdict = [], []
            if best is not None:
                figure.append(f"fastest backend with complete stacks: `{best['backend']}` {best['ratio'][0]:.2f}x")
                verdict.append(f"`{best['backend']}`: " + at_most(best["ratio"][0], target))
            else:
                verdict.append("no backend gives complete stacks")
            if default is not None and default is not best:
                figure.append(f"default backend {default['ratio'][0]:.2f}x")
                verdict.append("default: " + at_most(default["ratio"][0], target))
                if not _is_complete(quality.get((build_name, "default"))):
                    verdict[-1] += ", stacks incomplete"
            heaptrack = _find(x86, f"heaptrack-{build_name}", threads)
            if build_name == "nofp" and heaptrack is not None and best is not None:
                figure.append(f"heaptrack -r {heaptrack['ratio'][0]:.2f}x")
                ahead = best["ratio"][0] < heaptrack["ratio"][0]
                verdict.append("ahead of heaptrack -r" if ahead else "**not ahead of heaptrack -r**")
            out.append(f"| {name} | {'; '.join(figure)} | {'; '.join(verdict)} |")
    for mem in results.get("memory", []):
        out += _memory_targets(mem)
    for dump in results.get("dump_size", []):
        if dump.get("error") or "bytes" not in dump:
            continue
        where = "armhf" if dump["qemu"] else f"x86_64 {dump['build']}"
        out.append(
            f"| default dump (top={dump['top']}, depth={dump['depth']}) < {TARGET_DUMP_S} s at 115200 baud, "
            f"{where} | {dump['bytes']:,} B = {dump['seconds_at_115200']:.3f} s | "
            f"{at_most(dump['seconds_at_115200'], TARGET_DUMP_S, ' s')} |"
        )
    host = results.get("host", {})
    parse = host.get("parse", {})
    if "mb_per_s_median" in parse:
        out.append(
            f"| parse ≥ {TARGET_PARSE_MBS:g} MB/s of wire text | {parse['mb_per_s_median']:.1f} MB/s "
            f"| {at_least(parse['mb_per_s_median'], TARGET_PARSE_MBS, 'MB/s')} |"
        )
    sym = host.get("symbolize", {})
    if "cold_s" in sym:
        out.append(
            f"| symbolize 10,000 addresses < {TARGET_SYMBOLIZE_COLD_S:g} s cold | {sym['cold_s']:.2f} s "
            f"| {at_most(sym['cold_s'], TARGET_SYMBOLIZE_COLD_S, ' s')} |"
        )
        out.append(
            f"| ... near zero cached | {sym['cached_s']:.4f} s "
            f"| {at_most(sym['cached_s'], TARGET_SYMBOLIZE_CACHED_S, ' s')} |"
        )
    return out


def _quality_table(results: dict) -> list[str]:
    out = [
        (
            "| build | backend | stacks listed | through the chain | complete (all 12 levels) "
            "| frames per chain stack (median) | truncated at depth (captures) |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for q in results.get("stacks", []):
        if q.get("error"):
            out.append(f"| {q['build']} | {q['backend']} | error: {q['error'][:100]} | | | | |")
            continue
        out.append(
            f"| {q['build']} | {q['backend']} | {q['stacks']} | {q['chain_stacks']} | "
            f"{q['complete']}/{q['chain_stacks']} | {q['median_frames']:g} | "
            f"{q['truncated_stacks']:,} (depth {q['depth']}) |"
        )
    return out


def _memory_table(results: dict) -> list[str]:
    out = [
        (
            "| build | MEMBT_BUDGET | budget_total | block_cap | live blocks tracked | dropped blocks "
            "| budget_used | budget_used, 1,000 blocks | stored B/block (budget_used) | RSS uninstrumented "
            "| RSS membt | membt's RSS with 1,000 blocks | resident B/block beyond that | all membt RSS / live blocks |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in results.get("memory", []):
        build = f"{m['build']}{' (qemu-arm)' if m['qemu'] else ''}"
        if m.get("error"):
            out.append(f"| {build} | | error: {m['error'][:100]} ||||||||||||")
            continue
        for b in m["budgets"]:
            budget = f"{b['budget']}{' (stated)' if b['stated'] else ''}"
            if b.get("error") or "rss_bytes_per_block" not in b:
                out.append(f"| {build} | {budget} | error: {b.get('error', 'no blocks tracked')[:100]} ||||||||||||")
                continue
            out.append(
                f"| {build} | {budget} | {b['budget_total'] / MIB:.0f} MiB | {b['block_cap']:,} "
                f"| {b['live_blocks']:,} | {b['dropped_blocks']:,} | {b['budget_used'] / MIB:.1f} MiB "
                f"| {b['budget_used_small'] / MIB:.2f} MiB | {b['budget_bytes_per_block']:.1f} "
                f"| {m['rss_plain'] / MIB:.1f} MiB | {b['rss_membt'] / MIB:.1f} MiB | {b['rss_fixed'] / MIB:.1f} MiB "
                f"| {b['rss_bytes_per_block']:.1f} | {b['rss_total_per_block']:.1f} |"
            )
    return out


def _dump_table(results: dict) -> list[str]:
    out = ["| program | threads | bytes | lines | modules | stacks | at 115200 baud |", "|---|---|---|---|---|---|---|"]
    for d in results.get("dump_size", []):
        if d.get("error") or "bytes" not in d:
            out.append(f"| {d['build']} | {d['threads']} | error: {d.get('error', '')[:100]} |||||")
            continue
        out.append(
            f"| {d['build']}{' (qemu-arm)' if d['qemu'] else ''} | {d['threads']} | {d['bytes']:,} "
            f"| {d['lines']} | {d['modules']} | {d['stacks']} | {d['seconds_at_115200']:.3f} s |"
        )
    return out


def _host_lines(results: dict) -> list[str]:
    host = results.get("host", {})
    out = []
    parse = host.get("parse", {})
    if "mb_per_s_median" in parse:
        out.append(
            f"- Parse: {parse['bytes'] / 1e6:.1f} MB synthetic capture ({parse['dumps']:,} copies of a "
            f"{parse['lines_per_dump']}-line dump from {parse['origin']}, renumbered, checksums recomputed), "
            f"fed in 64 KiB chunks: median {parse['mb_per_s_median']:.1f} MB/s "
            f"(best {parse['mb_per_s_best']:.1f} MB/s, {parse['lines_per_s_median']:,.0f} lines/s); "
            f"every dump came out complete."
        )
    else:
        out.append(f"- Parse: {parse.get('skipped') or parse.get('error') or 'not measured'}")
    sym = host.get("symbolize", {})
    if "cold_s" in sym:
        out.append(
            f"- Symbolize: {sym['addresses']:,} distinct addresses in one module ({sym['module']}, "
            f"{sym['functions']:,} functions): cold {sym['cold_s']:.2f} s, cached {sym['cached_s']:.4f} s; "
            f"{sym['named']:,} resolved to the right function name."
        )
    else:
        out.append(f"- Symbolize: {sym.get('skipped') or sym.get('error') or 'not measured'}")
    return out


def render(results: dict) -> str:
    s = results["settings"]
    quality = _quality(results)
    lines = [
        "# membt benchmark results",
        "",
        (
            f"Run {results['started_utc']} → {results['finished_utc']} on {results['machine']['cpu']} "
            f"({results['machine']['cores']} cores, shared; load average at the end "
            f"{' '.join(f'{x:.2f}' for x in results['machine']['loadavg_end'])}), "
            f"recorder commit `{results['commit']}`."
        ),
        (
            f"{s['rounds']} rounds{' (--quick)' if s['quick'] else ''}; each round runs every row once, in an order "
            f"rotated each round; slowdown = wall time / the baseline row's wall time in the same round; "
            f"figures are medians with min–max. Workload: {s['ops']:,} operations per thread, {s['live']:,} live "
            f"blocks, whole-process wall time (fork to reap), peak RSS from wait4 in bench/launch.c."
        ),
        "",
        "## Targets",
        "",
        *_summary(results),
        "",
    ]
    for threads in s["threads"]:
        lines += [f"## x86_64, {threads} thread(s)", "", *_rows_table(results["x86_64"], quality, threads, False), ""]
    lines += [
        "## Stack completeness per backend",
        "",
        (
            "One run per backend with every stack listed (`MEMBT_TOP=1000`). A stack whose innermost workload "
            "frame is in `alloc_leaf` came through the chain; it is complete when it holds the whole chain "
            "(≥ 14 frames inside the workload: alloc_leaf, 12 levels, allocate_via_chain). The other stacks are "
            "main's setup, stdio and pthread_create."
        ),
        "",
        *_quality_table(results),
        "",
    ]
    lines += [
        "## Recorder memory per live block",
        "",
        (
            f"`--ops 0 --live N`, 1 thread, with membt at the stated `MEMBT_BUDGET={s.get('memory_budget', '?')}` "
            f"(64-bit; `{s.get('memory_budget_32', s.get('memory_budget', '?'))}` for 32-bit) "
            "and at the default (unset). Stored B/block = (budget_used at N − budget_used at 1,000 blocks) / "
            "(blocks difference). membt's RSS with 1,000 blocks = RSS with membt − RSS uninstrumented, both "
            "holding 1,000 blocks: the recorder's fixed cost (library, reporter thread, interned stacks, tables "
            "touched). Resident B/block beyond that = the growth of that difference from 1,000 to N blocks, per "
            "block; the target's verdict uses it at the stated budget. The block table's shards reach their final "
            "size as the live set grows and then all their pages are resident, so resident bytes follow the "
            "budget: state the one that holds the live set."
        ),
        "",
        *_memory_table(results),
        "",
    ]
    lines += ["## Dump size (defaults: MEMBT_TOP, MEMBT_DEPTH unset)", "", *_dump_table(results), ""]
    if results.get("armhf_qemu"):
        lines += [
            (f"## armhf under qemu-arm (informational: emulation distorts absolute figures; ops/{s['qemu_divisor']})"),
            "",
        ]
        for threads in s["threads"]:
            lines += [f"{threads} thread(s):", "", *_rows_table(results["armhf_qemu"], quality, threads, True), ""]
    lines += ["## Host side", "", *_host_lines(results), ""]
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in results["skipped"].items()] + [""]
    lines += ["## Workload builds", ""] + [f"- `{k}`: `{v}`" for k, v in results.get("compile", {}).items()] + [""]
    return "\n".join(lines)
