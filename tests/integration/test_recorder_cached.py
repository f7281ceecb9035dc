"""MEMBT_UNWIND=cached, the per-thread capture cache of firmware_lib/src/threads.c, on cache-sample:
its allocations come through many call stacks, at stack depths that change (VLAs, alloca, two frames
whose sizes move by opposite amounts so the hook's stack pointer repeats), from threads that come
and go. What the cache reports must be what the plain unwinder reports for the same run.

cache-stress (firmware_lib/examples/cache_stress/) sets the traps an adversarial review found, one
case per run; before the fixes in threads.c each made VERIFY count mismatches, crashed, or never hit."""

from __future__ import annotations

import re
from typing import Any

import pytest
from membt_host.protocol import Dump, Stack

CACHING = ["x86_64", "x86_64-asan", "aarch64"]  # builds whose recorder has the cache
REFUSING = ["armhf", "musl"]             # the cache is x86_64/aarch64 only; musl-gcc builds lack libgcc unwind
DEPTHS = ["16", "6"]                     # whole stacks, and stacks cut at MEMBT_DEPTH (the cache's other end)
OPERATIONS, WORKERS = "20000", "2"       # per thread; the main thread and a late worker also run
# cache-sample's own stacks: 3 thread entries x 16 paths through its chain x 4 allocation calls
SAMPLE_STACKS = 3 * 16 * 4
# only the exit dump, every stack with a live block listed
EXIT_DUMP = {"MEMBT_INTERVAL": "0", "MEMBT_TOP": "1000", "MEMBT_OUTPUT": "stdout", "MEMBT_LEAK_AGE": "0"}
# cache-stress's cases; rounds where it takes them
STRESS_CASES = ["realigned", "zero-return", "smaller-stack", "plugin-swap", "chain"]
STRESS_ROUNDS = 4000
STRESS_ENV = {**EXIT_DUMP, "MEMBT_UNWIND": "cached", "MEMBT_UNWIND_VERIFY": "1", "MEMBT_DEPTH": "16"}
BANNER = re.compile(rb"^membt: \S+ recording \(unwind=(\w+),", re.MULTILINE)

Frame = tuple[str, int]                  # (module path, offset in it): the same in every run, ASLR or not
StackKey = tuple[bool, tuple[Frame, ...]]  # (cut at the depth, frames)

_runs: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[Any, Dump]] = {}
_stress_runs: dict[tuple[str, str], Dump] = {}


def exit_dump(target: Any, parse_wire: Any, env: dict[str, str]) -> tuple[Any, Dump]:
    """(run, its exit dump) of cache-sample with the recorder preloaded; runs once per target and env."""
    key = (target.name, tuple(sorted(env.items())))
    if key not in _runs:
        run = target.run([target.bin("cache-sample"), OPERATIONS, WORKERS], {**EXIT_DUMP, **env}, preload=True,
                         timeout=300)
        assert run.returncode == 0, run.describe()
        assert b"cache-sample done: " in run.stdout, run.describe()
        dumps = [dump for dump in parse_wire(run.stdout) if dump.complete and dump.begin["reason"] == "exit"]
        assert len(dumps) == 1, run.describe()
        dump = dumps[0]
        # every stack with a live block is listed, so the comparison covers all of them
        assert len(dump.groups) == dump.counters["groups"], dump.counters
        _runs[key] = (run, dump)
    return _runs[key]


def stress_dump(target: Any, parse_wire: Any, case: str) -> Dump:
    """The exit dump of one cache-stress case under MEMBT_UNWIND=cached with VERIFY; runs once per target."""
    key = (target.name, case)
    if key not in _stress_runs:
        if case == "plugin-swap":
            args = [str(target.build / "lib" / "cache-stress")]
        elif case == "smaller-stack":
            args = []
        else:
            args = [str(STRESS_ROUNDS)]
        run = target.run([target.bin("cache-stress"), case, *args], STRESS_ENV, preload=True, timeout=300)
        # exit 2: the case could not set its trap up (it says why); a signal: the recorder crashed
        assert run.returncode == 0, run.describe()
        assert f"cache-stress {case} done".encode() in run.stdout, run.describe()
        dumps = [dump for dump in parse_wire(run.stdout) if dump.complete and dump.begin["reason"] == "exit"]
        assert len(dumps) == 1, run.describe()
        _stress_runs[key] = dumps[0]
    return _stress_runs[key]


def live_by_stack(dump: Dump) -> dict[StackKey, tuple[int, int]]:
    """(live blocks, live bytes) of every listed stack, its frames as module offsets."""
    found: dict[StackKey, tuple[int, int]] = {}
    for group in dump.groups:
        stack = dump.stacks[group.stack_id]
        frames = []
        for addr in stack.addrs:
            module = dump.module_of(addr)
            frames.append((module.path, addr - module.load_bias) if module is not None else ("?", addr))
        key = (stack.truncated, tuple(frames))
        assert key not in found, f"two stack ids for one call stack: {key}"
        found[key] = (group.live_blocks, group.live_bytes)
    return found


def function_names(target: Any, dump: Dump, frames: tuple[Frame, ...]) -> list[str | None]:
    """The functions of frames given as module offsets, through a dump that has their modules."""
    by_path = {module.path: module for module in dump.modules.values()}
    addrs = [offset + by_path[path].load_bias if path in by_path else offset for path, offset in frames]
    return target.frame_functions(dump, Stack(0, False, addrs))


def differences(target: Any, dump: Dump, expected: dict[StackKey, tuple[int, int]],
                got: dict[StackKey, tuple[int, int]]) -> str:
    """The stacks whose live blocks differ from the unwinder's, by function names (innermost first)."""
    lines = []
    for key in sorted(set(expected) | set(got)):
        if expected.get(key) != got.get(key):
            names = " < ".join(str(name) for name in function_names(target, dump, key[1]))
            lines.append(f"unwind {expected.get(key)}, this run {got.get(key)}: {names}")
    return f"{len(lines)} stacks differ in (live blocks, live bytes):\n" + "\n".join(lines[:40])


def cache_counters(dump: Dump) -> dict[str, int]:
    return {name: value for name, value in dump.counters.items() if name.startswith("unwind_")}


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("any_target", CACHING, indirect=True)
def test_every_cache_hit_matches_a_fresh_capture(any_target: Any, parse_wire: Any, depth: str) -> None:
    _, dump = exit_dump(any_target, parse_wire, {"MEMBT_UNWIND": "cached", "MEMBT_UNWIND_VERIFY": "1",
                                                 "MEMBT_DEPTH": depth})
    counters = cache_counters(dump)
    assert counters.get("unwind_cache_hits", 0) > 0, counters
    assert counters["unwind_verified"] == counters["unwind_cache_hits"], counters
    if depth != DEPTHS[0]:
        assert dump.counters["truncated_stacks"] > 0, dump.counters  # the cut-stack path ran
    assert counters["unwind_mismatches"] == 0, counters


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("any_target", CACHING, indirect=True)
def test_cached_stacks_and_live_blocks_equal_the_unwinders(any_target: Any, parse_wire: Any, depth: str) -> None:
    _, reference = exit_dump(any_target, parse_wire, {"MEMBT_UNWIND": "unwind", "MEMBT_DEPTH": depth})
    _, cached = exit_dump(any_target, parse_wire, {"MEMBT_UNWIND": "cached", "MEMBT_DEPTH": depth})
    assert "unwind_cache_hits" not in reference.counters  # the reference really ran without the cache
    assert cache_counters(cached).get("unwind_cache_hits", 0) > 0, cached.counters
    expected, got = live_by_stack(reference), live_by_stack(cached)
    assert got == expected, differences(any_target, reference, expected, got)
    assert cached.counters["stacks"] == reference.counters["stacks"]


@pytest.mark.parametrize("any_target", CACHING[:1], indirect=True)
def test_the_sample_reaches_the_hooks_through_all_its_paths(any_target: Any, parse_wire: Any) -> None:
    """Otherwise the comparisons above would cover fewer stacks than they claim (e.g. the compiler
    folded two functions of the chain into one)."""
    _, dump = exit_dump(any_target, parse_wire, {"MEMBT_UNWIND": "unwind", "MEMBT_DEPTH": DEPTHS[0]})
    chains, call_sites = set(), set()
    for group, names in any_target.groups_through(dump, ["allocate"]):
        stack = dump.stacks[group.stack_id]
        assert not stack.truncated, names
        chain = tuple(names[:names.index("run_lane") + 2])
        chains.add(chain)
        call_sites.add((stack.addrs[0], chain))  # the four allocation calls are in one function
    assert len(chains) == SAMPLE_STACKS // 4, sorted(chains)
    assert len(call_sites) == SAMPLE_STACKS
    assert {chain[-1] for chain in chains} == {"main", "worker", "late_worker"}
    # allocate .. run_lane and the thread's entry; decode_field adds a frame on half of the paths
    assert {len(chain) for chain in chains} == {9, 10}


@pytest.mark.parametrize("any_target", CACHING, indirect=True)
def test_default_backend_reports_what_the_unwinder_does(any_target: Any, parse_wire: Any) -> None:
    run, default = exit_dump(any_target, parse_wire, {})
    banner = BANNER.search(run.stderr)
    assert banner is not None, run.describe()
    backend = banner[1].decode()
    assert backend == any_target.toolchain["UNWIND"], "MEMBT_UNWIND=auto is not the build's choice"
    if backend == "cached":
        assert cache_counters(default).get("unwind_cache_hits", 0) > 0, default.counters
    else:
        assert cache_counters(default) == {}, default.counters
    _, reference = exit_dump(any_target, parse_wire, {"MEMBT_UNWIND": "unwind", "MEMBT_DEPTH": DEPTHS[0]})
    expected, got = live_by_stack(reference), live_by_stack(default)
    assert got == expected, differences(any_target, reference, expected, got)


@pytest.mark.parametrize("case", STRESS_CASES)
@pytest.mark.parametrize("any_target", CACHING, indirect=True)
def test_stress_case_runs_and_every_hit_matches_a_fresh_capture(any_target: Any, parse_wire: Any, case: str) -> None:
    """realigned: x86_64 DRAP frames, whose CFA is a stack word (was: mismatches). zero-return: an
    aarch64 coroutine entered with x30 = 0 or from a trampoline at the same sp (was: mismatches).
    smaller-stack: a smaller stack mapped where a deep one was (was: SIGSEGV). plugin-swap: other
    code at a dlclosed plugin's address (was: mismatches). On aarch64 nothing hit at all before."""
    if case == "plugin-swap" and any_target.emulated:
        pytest.skip("qemu-user maps the second plugin elsewhere, not at the first one's freed address")
    counters = cache_counters(stress_dump(any_target, parse_wire, case))
    assert counters.get("unwind_cache_hits", 0) > 0, counters
    assert counters["unwind_verified"] == counters["unwind_cache_hits"], counters
    assert counters["unwind_mismatches"] == 0, counters


@pytest.mark.parametrize("any_target", CACHING, indirect=True)
def test_a_repeated_call_stack_hits_the_cache_nearly_every_time(any_target: Any, parse_wire: Any) -> None:
    """aarch64 code calling malloc through a lazily bound PLT left copies of its return addresses
    in the frame, and the cache learned nothing from it (0 hits of 4000)."""
    counters = cache_counters(stress_dump(any_target, parse_wire, "chain"))
    assert counters.get("unwind_cache_hits", 0) >= STRESS_ROUNDS * 99 // 100, counters


@pytest.mark.parametrize("any_target", REFUSING, indirect=True)
def test_cached_is_refused_in_one_line_and_the_program_runs(any_target: Any, parse_wire: Any) -> None:
    run = any_target.run([any_target.bin("cache-sample"), "200", "2"],
                         {**EXIT_DUMP, "MEMBT_UNWIND": "cached"}, preload=True)
    assert run.returncode == 0, run.describe()
    assert b"cache-sample done: 200 operations in each of 4 threads" in run.stdout, run.describe()
    said = [line for line in run.stderr.decode(errors="replace").splitlines() if line.startswith("membt")]
    assert len(said) == 1 and said[0].startswith("membt: disabled: MEMBT_UNWIND=cached "), run.describe()
    assert parse_wire(run.stdout) == [], "a refused recorder still dumped"
