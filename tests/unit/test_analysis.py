"""Classification and ranking on synthetic series: what a user reads first must be the leak."""

from membt_host.analysis import (
    GROWING,
    MAYBE_LEAK,
    STABLE,
    TRANSIENT,
    Analysis,
    is_rising,
    slope,
)

from synthetic import dump


def feed(
    analysis: Analysis,
    series: list[dict],
    pid: int = 100,
    start_ms: int = 1000,
    step_ms: int = 1000,
    first_number: int = 1,
) -> None:
    for i, groups in enumerate(series):
        analysis.add(*dump(first_number + i, start_ms + i * step_ms, groups, pid=pid))


def classes(analysis: Analysis) -> dict[str, str]:
    return {s.frames[0].function: s.klass for s in analysis.ranked()}


def leaky_server_like(n: int) -> list[dict]:
    """Like the sample server at a 0.5 s interval: a strdup leak of 5 blocks per dump; a cache of 64
    entries filled at 12 per dump and flat once full (one dip where a dump fell between free and
    malloc); request churn that is never old."""
    series = []
    for i in range(1, n + 1):
        leak = 5 * i
        cache = min(64, 12 * i) - (1 if i == n - 2 and 12 * i > 64 else 0)
        old_cache = max(0, min(64, 12 * i) - 24)  # entries older than the leak age
        churn = (i * 7) % 5 + 1
        series.append(
            {
                "leak_session_name": (
                    leak,
                    leak * 32,
                    max(0, leak - 10),
                    max(0, leak - 10) * 32,
                ),
                "cache_insert": (cache, cache * 256, old_cache, old_cache * 256),
                "handle_request": (churn, churn * 700, 0, 0),
            }
        )
    return series


def test_leak_cache_and_churn_are_told_apart():
    analysis = Analysis()
    feed(analysis, leaky_server_like(10), step_ms=500)
    assert classes(analysis) == {
        "leak_session_name": GROWING,
        "cache_insert": STABLE,
        "handle_request": TRANSIENT,
    }
    ranked = analysis.ranked()
    assert ranked[0].frames[0].function == "leak_session_name"
    # 5 blocks of 32 bytes every half second
    assert ranked[0].growth_bytes_per_min == 5 * 32 * 2 * 60


def test_long_session_keeps_the_same_verdicts():
    analysis = Analysis()
    feed(analysis, leaky_server_like(200), step_ms=500)
    assert classes(analysis)["leak_session_name"] == GROWING
    assert classes(analysis)["cache_insert"] == STABLE


def test_a_cache_still_filling_looks_like_a_leak_until_it_flattens():
    """The honest limit: while a pool still fills up it is rising; it turns stable once flat."""
    analysis = Analysis()
    feed(analysis, [{"pool": (i, i * 100, i, i * 100)} for i in range(1, 6)])
    assert classes(analysis) == {"pool": GROWING}
    feed(analysis, [{"pool": (5, 500, 5, 500)}] * 6, start_ms=6000, first_number=6)
    assert classes(analysis) == {"pool": STABLE}


def test_too_few_dumps_keep_the_seed_rule():
    analysis = Analysis()
    feed(analysis, [{"a": (1, 10, 1, 10), "b": (2, 20, 0, 0)}] * 2)
    assert classes(analysis) == {"a": MAYBE_LEAK, "b": TRANSIENT}


def test_a_stack_that_frees_everything_becomes_transient():
    analysis = Analysis()
    feed(
        analysis,
        [{"a": (i, i * 10, i, i * 10), "b": (1, 1, 0, 0)} for i in range(1, 6)] + [{"b": (1, 1, 0, 0)}],
    )
    (a,) = [s for s in analysis.ranked() if s.frames[0].function == "a"]
    assert a.latest.live_bytes == 0 and a.klass == TRANSIENT  # all listed: a holds nothing now
    assert a.dumps_seen == 5 and len(a.series) == 6


def test_a_stack_left_out_by_top_is_unknown_not_zero():
    analysis = Analysis()
    series = [{"a": (i, i * 10, i, i * 10)} for i in range(1, 6)]
    feed(analysis, series)
    analysis.add(*dump(6, 6000, {"b": (1, 5, 0, 0)}, groups_total=2))  # a exists but was not listed
    (a,) = [s for s in analysis.ranked() if s.frames[0].function == "a"]
    assert len(a.series) == 5 and a.klass == GROWING


def test_growing_ranked_by_growth_then_others_by_old_bytes():
    analysis = Analysis()
    feed(
        analysis,
        [
            {
                "slow": (i, i * 10, i, i * 10),
                "fast": (i, i * 1000, i, i * 1000),
                "big_stable": (50, 50_000, 50, 50_000),
                "small_stable": (5, 500, 5, 500),
                "churn": (3, 90_000, 0, 0),
            }
            for i in range(1, 8)
        ],
    )
    order = [s.frames[0].function for s in analysis.ranked()]
    assert order == ["fast", "slow", "big_stable", "small_stable", "churn"]


def test_restart_continues_the_same_suspect_and_growth_uses_the_current_run():
    analysis = Analysis()
    feed(analysis, [{"leak": (i, i * 1000, i, i * 1000)} for i in range(1, 8)], pid=100)
    # the program restarts: new pid, its own clock and dump numbers; the leak is slower now
    feed(analysis, [{"leak": (i, i * 100, i, i * 100)} for i in range(1, 8)], pid=200)
    (leak,) = analysis.ranked()
    assert leak.dumps_seen == 14 and leak.klass == GROWING
    assert leak.growth_bytes_per_min == 100 * 60
    times = [p.t for p in leak.series]
    assert times == sorted(times) and len(set(times)) == 14  # one timeline across both runs


def test_incomplete_dumps_are_counted_not_used():
    analysis = Analysis()
    feed(analysis, [{"a": (1, 10, 1, 10)}] * 4)
    analysis.add(*dump(5, 5000, {"a": (999, 999_999, 999, 999_999)}, complete=False))
    (a,) = analysis.ranked()
    assert a.latest.live_bytes == 10 and a.klass == STABLE
    assert analysis.incomplete_dumps == 1 and analysis.complete_dumps == 4
    assert analysis.messages[-1] == "dump 5: line 3 missing"


def test_summary_carries_totals_and_problems():
    analysis = Analysis()
    feed(analysis, [{"a": (2, 20, 1, 10)}] * 3)
    summary = analysis.summary({"corrupt_lines": 4, "noise_lines": 9}, ["module x: stripped"])
    assert summary.complete_dumps == 3 and [d.live_bytes for d in summary.dumps] == [
        20,
        20,
        20,
    ]
    assert summary.problems.corrupt_lines == 4 and summary.problems.symbols == ["module x: stripped"]


def test_trend_helpers():
    assert slope([0, 1, 2, 3], [5, 7, 9, 11]) == 2
    assert slope([1], [1]) == 0 and slope([2, 2], [1, 5]) == 0
    assert not is_rising([])


def test_a_full_pool_that_wobbles_is_stable_not_growing():
    """Flat with noise, even ending a little higher than the tail began, is not a leak."""
    wobble = [60, 64, 58, 63, 59, 57, 62, 60, 58, 61]
    analysis = Analysis()
    feed(analysis, [{"pool": (n, n * 100, n - 10, (n - 10) * 100)} for n in wobble])
    assert classes(analysis) == {"pool": STABLE}


def test_a_full_cache_shows_no_growth_once_it_stopped_filling():
    """Growth is measured where the trend is judged (the recent half): a cache that filled up in the
    first dumps and stayed full is stable with zero growth, not a slope left over from filling."""
    analysis = Analysis()
    feed(analysis, [{"cache_insert": (min(64, 16 * i), min(64, 16 * i) * 256, 64, 64 * 256)} for i in range(1, 13)])
    (cache,) = analysis.ranked()
    assert cache.klass == STABLE
    assert cache.growth_bytes_per_min == 0
