"""The recorder in real programs: the seed's demo (explicit API) and leaky-server with the recorder
LD_PRELOADed, on x86_64, x86_64 with ASan, and armhf under qemu-arm. Dumps are read back with the
host tool's parser and their raw frames named with the target's addr2line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECORDER_ENV = {"MEMBT_LEAK_AGE": "1", "MEMBT_INTERVAL": "1", "MEMBT_OUTPUT": "stdout", "MEMBT_QUIET": "1"}


def in_order(names: list[str | None], expected: list[str]) -> bool:
    """`expected` appears in `names` as a subsequence (innermost first)."""
    position = 0
    for name in names:
        if position < len(expected) and name == expected[position]:
            position += 1
    return position == len(expected)


def complete_run_dumps(run: Any, parse_wire: Any) -> list[Any]:
    dumps = parse_wire(run.stdout)
    assert dumps, f"no dump\n{run.describe()}"
    incomplete = [(dump.number, dump.problems) for dump in dumps if not dump.complete]
    assert not incomplete, f"incomplete dumps {incomplete}\n{run.describe()}"
    return dumps


def test_demo_shows_the_leaking_stack(any_target: Any, parse_wire: Any) -> None:
    run = any_target.run([any_target.bin("membt-demo"), "5"],
                         {**RECORDER_ENV, "MEMBT_LEAK_AGE": "2"})
    assert run.returncode == 0, run.describe()
    assert b"membt-demo done" in run.stdout
    dumps = complete_run_dumps(run, parse_wire)
    assert [dump.begin["reason"] for dump in dumps][-1] == "exit"
    assert sum(dump.begin["reason"] == "timer" for dump in dumps) >= 2, run.describe()

    leaks = [any_target.groups_through(dump, ["leaking_thread"]) for dump in dumps]
    final = leaks[-1]
    assert len(final) == 1, f"the leaking stack is not one group: {final}"
    group, frames = final[0]
    assert group.thread == "thread0"
    assert in_order(frames, ["mymalloc", "test3", "test2", "leaking_thread"]), frames
    assert group.old_blocks > 0 and group.old_bytes == 20 * group.old_blocks
    assert group.live_bytes == 20 * group.live_blocks
    # it grows: the number of blocks never goes down from one dump to the next
    counts = [found[0][0].live_blocks if found else 0 for found in leaks]
    assert counts == sorted(counts) and counts[-1] > counts[0], counts

    workers = {g.thread for dump in dumps for g, _ in any_target.groups_through(dump, ["working_thread"])}
    assert workers and workers <= {"thread1", "thread2", "thread3", "thread4"}, workers


def test_preloaded_leaky_server_is_seen_whole(any_target: Any, parse_wire: Any) -> None:
    # MEMBT_TOP: every call stack, the nine one-block tables included, is listed
    run = any_target.run([any_target.bin("leaky-server"), "5"], {**RECORDER_ENV, "MEMBT_TOP": "50"}, preload=True)
    assert run.returncode == 0, run.describe()
    assert b"leaky-server done" in run.stdout
    dumps = complete_run_dumps(run, parse_wire)
    assert len(dumps) >= 3, run.describe()
    final = dumps[-1]
    server = [m for m in final.modules.values() if Path(m.path).name == "leaky-server"]
    assert len(server) == 1 and server[0].build_id, final.modules

    # the leak: strdup inside leak_session_name, named even though libc's strdup has no unwind info on armhf
    leak = any_target.groups_through(final, ["leak_session_name", "accept_session"])
    assert len(leak) == 1, leak
    group, frames = leak[0]
    stack = final.stacks[group.stack_id]
    first_own = next(i for i, addr in enumerate(stack.addrs) if final.module_of(addr) is server[0])
    assert frames[first_own] in ("leak_session_name", "accept_session"), frames
    assert in_order(frames, ["leak_session_name", "accept_session", "sessions_thread"]), frames
    assert group.thread == "sessions" and group.old_blocks > 0
    series = []
    for dump in dumps:
        found = any_target.groups_through(dump, ["leak_session_name"])
        series.append(found[0][0].live_blocks if found else 0)
    assert series == sorted(series) and series[-1] > series[0], series

    # the cache: full at 64 entries of 256 bytes, and it stays there
    cache = any_target.groups_through(final, ["cache_insert"])
    assert [(g.live_blocks, g.live_bytes, g.thread) for g, _ in cache] == [(64, 64 * 256, "cache")]

    # one long-lived block from every member of the malloc family, each from its own function
    makers = ["table_calloc", "table_realloc", "table_reallocarray", "table_posix_memalign", "table_aligned_alloc",
              "table_memalign", "table_valloc", "table_pvalloc", "table_malloc"]
    seen = {}
    for group in final.groups:
        frames = any_target.frame_functions(final, final.stacks[group.stack_id])
        for maker in makers:
            if maker in frames:
                seen.setdefault(maker, []).append((group.live_blocks, group.live_bytes))
    assert sorted(seen) == sorted(makers), f"missing: {set(makers) - set(seen)}"
    assert seen["table_calloc"] == [(1, 16 * 32)] and seen["table_reallocarray"] == [(1, 24 * 40)]
    # realloc moved the 16-byte block: only the 256 KiB block at its new address is live
    assert seen["table_realloc"] == [(1, 256 * 1024)]
    assert seen["table_aligned_alloc"] == [(1, 1024)] and seen["table_posix_memalign"] == [(1, 512)]
