"""The recorder driven through its C API (cffi, one fresh process per scenario), read back through
the host tool's parser: what a firmware engineer would rely on when reading a dump."""

from __future__ import annotations

from typing import Any

import pytest

KIB, MIB = 1024, 1024 * 1024


def group_totals(dump: Any) -> tuple[int, int, int, int]:
    return (sum(g.live_blocks for g in dump.groups), sum(g.live_bytes for g in dump.groups),
            sum(g.old_blocks for g in dump.groups), sum(g.old_bytes for g in dump.groups))


def test_counts_after_record_and_unrecord(scenario: Any) -> None:
    run = scenario("counts")
    result, dump = run.result, run.dump
    assert result["init"] == 0
    assert result["records"] == [0] * 6 and result["unrecords"] == [0, 0]
    # blocks 10, 30, 50, 60 bytes stay; 20 and 40 were forgotten
    assert (dump.counters["live_blocks"], dump.counters["live_bytes"]) == (4, 150)
    assert group_totals(dump)[:2] == (4, 150)
    assert dump.counters["unknown_frees"] == 0 and dump.counters["dropped_blocks"] == 0
    assert dump.begin["reason"] == "api" and dump.begin["ptr_bits"] == 64
    assert dump.begin["leak_age_ms"] == 60000 and dump.begin["depth"] == 16 and dump.begin["top"] == 10
    assert result["written"] == run.output.stat().st_size  # membt_dump returns what it wrote
    stats = result["stats"]
    assert (stats["live_blocks"], stats["live_bytes"], stats["dumps"], stats["enabled"]) == (4, 150, 1, 1)


def test_ages_split_old_from_young_blocks(scenario: Any) -> None:
    run = scenario("ages", sleep_s=0.6)
    dump = run.dump
    assert dump.begin["leak_age_ms"] == 200
    # two 100-byte blocks recorded 0.6 s before the dump are old; the 7-byte one is not
    assert (dump.counters["live_blocks"], dump.counters["live_bytes"]) == (3, 207)
    assert (dump.counters["old_blocks"], dump.counters["old_bytes"]) == (2, 200)
    assert group_totals(dump) == (3, 207, 2, 200)
    assert max(g.oldest_age_ms for g in dump.groups) >= 600


def test_two_call_sites_are_two_groups(scenario: Any, x86_64_target: Any) -> None:
    run = scenario("sites")
    assert run.result["a"] == [0] * 3 and run.result["b"] == [0] * 5
    dump = run.dump
    assert dump.counters["groups"] == 2 and len(dump.groups) == 2
    by_site = {}
    for group in dump.groups:
        frames = x86_64_target.frame_functions(dump, dump.stacks[group.stack_id])
        by_site[frames[0]] = group  # recorder frames are removed: the call site comes first
    assert set(by_site) == {"probe_site_a", "probe_site_b"}, by_site
    assert (by_site["probe_site_a"].live_blocks, by_site["probe_site_a"].live_bytes) == (3, 24)
    assert (by_site["probe_site_b"].live_blocks, by_site["probe_site_b"].live_bytes) == (5, 500)
    # larger live bytes first when nothing is old yet
    assert dump.groups[0].stack_id == by_site["probe_site_b"].stack_id


def test_realloc_that_moves_the_block_is_tracked_at_its_new_address(scenario: Any) -> None:
    run = scenario("realloc_moves")
    result, dump = run.result, run.dump
    assert result["moved"] != result["small"], "glibc did not move the block: the test proves nothing"
    after = result["after_realloc"]
    assert (after["live_blocks"], after["live_bytes"], after["unknown_frees"]) == (1, MIB, 0)
    assert (dump.counters["live_blocks"], dump.counters["live_bytes"]) == (1, MIB)
    assert [(g.live_blocks, g.live_bytes) for g in dump.groups] == [(1, MIB)]
    freed = result["after_free"]
    assert (freed["live_blocks"], freed["live_bytes"], freed["unknown_frees"]) == (0, 0, 0)


def test_free_of_an_unknown_pointer_is_counted_not_fatal(scenario: Any) -> None:
    run = scenario("unknown_free")
    assert run.result["unrecord"] == -1
    # one unknown membt_unrecord and one free() of a block libc handed out before the recorder started
    assert run.result["stats"]["unknown_frees"] == 2
    assert run.dump.counters["unknown_frees"] == 2
    assert run.dump.counters["live_blocks"] == 0 and run.result["stats"]["enabled"] == 1


def test_a_full_budget_drops_blocks_and_says_so(scenario: Any) -> None:
    blocks = 200_000
    run = scenario("budget", budget_bytes=MIB, blocks=blocks)
    result, dump = run.result, run.dump
    assert result["init"] == 0, run.stderr
    assert result["failed"] > 0, "1 MiB held 200,000 blocks: the test proves nothing"
    assert result["stats"]["dropped_blocks"] == result["failed"]
    assert dump.counters["dropped_blocks"] == result["failed"]
    assert dump.counters["live_blocks"] + result["failed"] == blocks
    assert dump.counters["budget_used"] <= dump.counters["budget_total"] <= MIB
    assert result["stats"]["enabled"] == 1 and result["written"] > 0


def expected_race_totals(threads: int, blocks: int, free_every: int) -> tuple[int, int]:
    kept = [i for i in range(blocks) if i % free_every != 0]
    return threads * len(kept), threads * sum(i % 7 + 1 for i in kept)


def test_eight_c_threads_racing_keep_exact_totals(scenario: Any) -> None:
    threads, blocks, free_every = 8, 20_000, 3
    run = scenario("race", threads=threads, blocks=blocks, free_every=free_every)
    live_blocks, live_bytes = expected_race_totals(threads, blocks, free_every)
    assert run.result["failures"] == 0
    dump = run.dump
    assert dump.counters["dropped_blocks"] == 0 and dump.counters["unknown_frees"] == 0
    assert (dump.counters["live_blocks"], dump.counters["live_bytes"]) == (live_blocks, live_bytes)
    assert group_totals(dump)[:2] == (live_blocks, live_bytes)
    assert (run.result["stats"]["live_blocks"], run.result["stats"]["live_bytes"]) == (live_blocks, live_bytes)
    assert {g.thread[:5] for g in dump.groups} == {"racer"}


def test_eight_python_threads_racing_keep_exact_totals(scenario: Any) -> None:
    run = scenario("python_threads", threads=8, blocks=5000)
    assert run.result["failures"] == 0
    assert (run.dump.counters["live_blocks"], run.dump.counters["live_bytes"]) == (8 * 2500, 8 * 2500 * 3)


def test_depth_cuts_stacks_and_marks_them(scenario: Any) -> None:
    dump = scenario("shaped", depth=2).dump
    assert dump.begin["depth"] == 2
    assert dump.stacks and all(len(stack.addrs) <= 2 for stack in dump.stacks.values())
    assert all(stack.truncated for stack in dump.stacks.values())  # every site here is deeper than 2
    assert dump.counters["truncated_stacks"] > 0


def test_top_limits_the_groups_listed(scenario: Any) -> None:
    dump = scenario("shaped", top=1).dump
    assert len(dump.groups) == 1 and dump.end["groups_total"] == 3
    assert (dump.groups[0].live_blocks, dump.groups[0].live_bytes) == (2, 2000)  # the biggest call stack
    assert len(dump.stacks) == 1  # only stacks that a listed group refers to
    assert dump.counters["live_blocks"] == 7  # the counters still cover every block


def test_text_format_is_for_people(scenario: Any, parse_wire: Any) -> None:
    run = scenario("shaped", format="text")
    text = run.output.read_bytes()
    assert run.result["written"] == len(text) > 0
    assert b"@MBT" not in text and parse_wire(text) == []
    decoded = text.decode("ascii")
    assert all(line.isprintable() for line in decoded.splitlines())
    # the seed's words, with the totals and the biggest call stack's share
    assert "current malloc buffer count: 7 blocks / 2045 bytes in 3 call stacks" in decoded, decoded
    assert "2 blocks / 2000 bytes live" in decoded, decoded


@pytest.mark.parametrize(("variable", "value", "field", "expected"), [
    ("MEMBT_LEAK_AGE", "1.5", "leak_age_ms", 1500),
    ("MEMBT_INTERVAL", "0.25", "interval_ms", 250),
    ("MEMBT_INTERVAL", "0", "interval_ms", 0),
    ("MEMBT_DEPTH", "8", "depth", 8),
    ("MEMBT_TOP", "3", "top", 3),
    ("MEMBT_OUTPUT", "fd:7", "output", "fd:7"),
    ("MEMBT_FORMAT", "text", "format", "text"),
    ("MEMBT_SIGNAL", "10", "dump_signal", 10),
])
def test_good_option_values_are_taken(scenario: Any, variable: str, value: str, field: str, expected: Any) -> None:
    run = scenario("options", env={variable: value})
    assert run.result["config"][field] == expected
    assert run.stderr.strip() == ""


@pytest.mark.parametrize(("variable", "value", "field", "default"), [
    ("MEMBT_DEPTH", "banana", "depth", 16),
    ("MEMBT_DEPTH", "1000", "depth", 16),
    ("MEMBT_LEAK_AGE", "-3", "leak_age_ms", 60000),
    ("MEMBT_INTERVAL", "1s", "interval_ms", 20000),
    ("MEMBT_TOP", "-1", "top", 10),
    ("MEMBT_FORMAT", "xml", "format", "wire"),
])
def test_a_bad_option_value_warns_once_and_keeps_the_default(scenario: Any, variable: str, value: str, field: str,
                                                             default: Any) -> None:
    run = scenario("options", env={variable: value})
    assert run.result["config"][field] == default
    warnings = run.stderr.strip().splitlines()
    assert len(warnings) == 1 and variable in warnings[0], run.stderr


def test_two_bad_values_give_two_lines(scenario: Any) -> None:
    run = scenario("options", env={"MEMBT_DEPTH": "x", "MEMBT_BUDGET": "lots"})
    warnings = run.stderr.strip().splitlines()
    assert len(warnings) == 2
    assert any("MEMBT_DEPTH" in line for line in warnings) and any("MEMBT_BUDGET" in line for line in warnings)
    assert run.result["config"]["budget_bytes"] == 64 * MIB
