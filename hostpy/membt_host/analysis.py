"""Per call stack across dumps: live and old bytes over time, classified as growing (a leak),
stable (filled up, then flat: a cache or pool), transient (nothing old) and ranked by evidence.

A call stack is the same suspect in every dump and every run of the program: it is keyed by the
module identity and link-time offset of its frames (SymStack.key), never by recorder id or address.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from membt_host.protocol import Dump, Group
from membt_host.symbolize import Frame, SymStack

GROWING, STABLE, TRANSIENT, MAYBE_LEAK = "growing", "stable", "transient", "maybe_leak"
MIN_TREND_POINTS = 3  # fewer complete dumps than this tell no trend
MAX_DISCORDANT = 0.25  # a rising series may fall back between this share of its pairs of points
TREND_SAMPLE = 64  # points of a tail compared pairwise
# Memory stays bounded over a session of days, whatever the boards send:
MAX_POINTS = 1024  # per series; older halves are thinned beyond this
MAX_TOTAL_POINTS = 250_000  # over all series (a few tens of MB); the longest are thinned beyond this
MAX_SUSPECTS = 2000  # call stacks followed; those gone longest are forgotten beyond this (counted)
MAX_THREADS = 32  # thread names kept per call stack; the rest are counted
MAX_MESSAGES = 200  # the latest problems kept; earlier ones are counted
MAX_PROCESSES = 1024  # program runs whose clocks are remembered (a pid seen again after is a new run)


@dataclass(frozen=True, slots=True)  # slots: one per call stack and dump, the bulk of the memory
class Point:
    t: float  # seconds on the session's timeline (see Analysis._timeline)
    live_bytes: int
    live_blocks: int
    old_blocks: int
    old_bytes: int
    process: int  # index of the program run the point belongs to


@dataclass(slots=True)
class DumpTotals:
    number: int
    pid: int | None
    t: float
    up_ms: int
    live_blocks: int
    live_bytes: int
    old_blocks: int
    old_bytes: int
    dropped_blocks: int
    dropped_stacks: int
    truncated_stacks: int
    unknown_frees: int
    budget_used: int
    budget_total: int
    groups: int
    groups_total: int


@dataclass
class Suspect:
    key: tuple
    frames: tuple[Frame, ...]
    truncated: bool
    series: list[Point] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    more_threads: int = 0  # names seen beyond MAX_THREADS
    dumps_seen: int = 0
    oldest_age_ms: int = 0  # at its latest appearance
    first_seen: float = 0.0
    last_seen: float = 0.0
    # filled in by classify()
    klass: str = TRANSIENT
    growth_bytes_per_min: float = 0.0

    @property
    def latest(self) -> Point:
        return self.series[-1]

    def add_thread(self, name: str) -> None:
        if name in self.threads:
            return
        if len(self.threads) < MAX_THREADS:
            self.threads.add(name)
        else:
            self.more_threads += 1

    def thread_names(self) -> list[str]:
        """The thread names, sorted, and how many more were not kept."""
        names = sorted(self.threads)
        if self.more_threads:
            names.append(f"(and {self.more_threads} more)")
        return names

    def current_run(self) -> list[Point]:
        """The points of the program run in which the suspect was last seen."""
        process = self.latest.process
        run: list[Point] = []
        for point in reversed(self.series):
            if point.process != process:
                break
            run.append(point)
        return run[::-1]

    def classify(self) -> None:
        run = self.current_run()
        # over the recent half, like the trend: a cache's fill-up long ago is not growth now
        recent = recent_half(run)
        self.growth_bytes_per_min = round(slope([p.t for p in recent], [p.live_bytes for p in recent]) * 60.0, 1)
        has_old = self.latest.old_blocks > 0
        if not has_old:
            self.klass = TRANSIENT
        elif len(run) < MIN_TREND_POINTS:
            self.klass = MAYBE_LEAK  # the seed's rule alone: old blocks, too few dumps for a trend
        elif is_rising(run):
            self.klass = GROWING
        else:
            self.klass = STABLE


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 when it is not defined)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def rises(values: list[int]) -> bool:
    """Keeps rising: up from first to last, and few pairs of points in falling order (Kendall)."""
    if len(values) < 2 or values[-1] <= values[0]:
        return False
    up = down = 0
    for i, a in enumerate(values):
        for b in values[i + 1 :]:
            up += b > a
            down += b < a
    return up >= 2 and down <= MAX_DISCORDANT * (up + down)


def recent_half(run: list[Point]) -> list[Point]:
    """The later half of a run (at least MIN_TREND_POINTS points): what the trend is judged on."""
    return run[-max(MIN_TREND_POINTS, math.ceil(len(run) / 2)) :]


def is_rising(run: list[Point]) -> bool:
    """A leak still leaking: the recent half of the run rises, in live bytes and in old bytes
    (a cache that filled up has flat live bytes; its old blocks are replaced, not added)."""
    tail = recent_half(run)
    if len(tail) > TREND_SAMPLE:  # pairs grow with the square: look at evenly spaced points
        step = (len(tail) - 1) / (TREND_SAMPLE - 1)
        tail = [tail[round(i * step)] for i in range(TREND_SAMPLE)]
    return rises([p.live_bytes for p in tail]) and rises([p.old_bytes for p in tail])


def _thin(series: list[Point]) -> int:
    """Halve the density of the older half so a series stays within MAX_POINTS; returns how many
    points went."""
    half = len(series) // 2
    before = len(series)
    series[:half] = series[:half:2]
    return before - len(series)


@dataclass
class Problems:
    corrupt_lines: int
    unknown_version_lines: int
    noise_lines: int
    incomplete_dumps: int  # closed without every line (damage, a lost connection, a late start)
    unfinished_dumps: int  # still being received when reading stopped
    messages: list[str]  # the latest, about incomplete dumps
    symbols: list[str]  # missing, mismatched or stripped binaries, missing addr2line


@dataclass
class Summary:
    """What every reporter renders: the analysis at one moment."""

    suspects: list[Suspect]  # ranked
    dumps: list[DumpTotals]  # complete dumps, oldest first
    complete_dumps: int
    problems: Problems


class Analysis:
    """Fed one dump at a time (with its symbolized stacks); asked for a Report at any moment."""

    def __init__(self) -> None:
        self.suspects: dict[tuple, Suspect] = {}
        self.dumps: list[DumpTotals] = []
        self.complete_dumps = 0
        self.incomplete_dumps = 0
        self.unfinished_dumps = 0
        self.messages: deque[str] = deque(maxlen=MAX_MESSAGES)
        self.messages_dropped = 0  # older messages that did not fit in `messages`
        self.forgotten_suspects = 0  # call stacks dropped beyond MAX_SUSPECTS
        self._points = 0  # in all series
        self._processes: dict[int | None, tuple[int, float, float]] = {}  # pid -> (index, offset, last up)
        self._process_count = 0
        self._now = 0.0  # the latest time on the timeline

    def add(self, dump: Dump, stacks: dict[int, SymStack]) -> None:
        if not dump.complete:
            self.incomplete_dumps += 1
            for problem in dump.problems:
                self._message(problem)
            return
        self.complete_dumps += 1
        process, t = self._timeline(dump)
        c = dump.counters
        self.dumps.append(
            DumpTotals(
                dump.number,
                dump.pid,
                t,
                int(dump.begin.get("up_ms", 0)),
                *(int(c.get(k, 0)) for k in ("live_blocks", "live_bytes", "old_blocks", "old_bytes")),
                *(int(c.get(k, 0)) for k in ("dropped_blocks", "dropped_stacks", "truncated_stacks", "unknown_frees")),
                int(c.get("budget_used", 0)),
                int(c.get("budget_total", 0)),
                len(dump.groups),
                int(dump.end.get("groups_total", len(dump.groups))),
            )
        )
        if len(self.dumps) > MAX_POINTS:
            half = len(self.dumps) // 2
            self.dumps[:half] = self.dumps[:half:2]

        merged: dict[tuple, tuple[SymStack, list[Group]]] = {}
        for group in dump.groups:
            stack = stacks.get(group.stack_id)
            if stack is not None:  # a complete dump holds every stack its groups name
                merged.setdefault(stack.key, (stack, []))[1].append(group)
        for key, (stack, groups) in merged.items():
            suspect = self.suspects.get(key)
            if suspect is None:
                suspect = self.suspects[key] = Suspect(key, stack.frames, stack.truncated, first_seen=t)
            point = Point(
                t,
                sum(g.live_bytes for g in groups),
                sum(g.live_blocks for g in groups),
                sum(g.old_blocks for g in groups),
                sum(g.old_bytes for g in groups),
                process,
            )
            self._append(suspect, point)
            suspect.dumps_seen += 1
            suspect.last_seen = t
            suspect.oldest_age_ms = max(g.oldest_age_ms for g in groups)
            for g in groups:
                suspect.add_thread(g.thread or "-")
            suspect.truncated = suspect.truncated or stack.truncated
        if len(dump.groups) >= int(dump.end.get("groups_total", 0)):
            # every stack with live blocks was listed: the others of this run hold nothing now
            for key, suspect in self.suspects.items():
                if key not in merged and suspect.series and suspect.latest.process == process:
                    self._append(suspect, Point(t, 0, 0, 0, 0, process))
        if len(self.suspects) > MAX_SUSPECTS:
            self._forget(keep=merged.keys())
        if self._points > MAX_TOTAL_POINTS:
            self._thin_all()

    def _append(self, suspect: Suspect, point: Point) -> None:
        suspect.series.append(point)
        self._points += 1
        if len(suspect.series) > MAX_POINTS:
            self._points -= _thin(suspect.series)

    def _forget(self, keep: object) -> None:
        """Too many call stacks (a board whose stacks keep changing): forget those that hold
        nothing now and were seen longest ago, then the smallest, down to 3/4 of MAX_SUSPECTS."""
        candidates = [s for k, s in self.suspects.items() if k not in keep]  # type: ignore[operator]
        candidates.sort(key=lambda s: (s.latest.live_bytes > 0, s.latest.old_bytes, s.last_seen, s.latest.live_bytes))
        for suspect in candidates[: len(self.suspects) - MAX_SUSPECTS * 3 // 4]:
            del self.suspects[suspect.key]
            self._points -= len(suspect.series)
            self.forgotten_suspects += 1

    def _thin_all(self) -> None:
        """All series together hold too many points: thin the longest until a quarter is free."""
        by_length = sorted(self.suspects.values(), key=lambda s: len(s.series), reverse=True)
        for suspect in by_length:
            if self._points <= MAX_TOTAL_POINTS * 3 // 4 or len(suspect.series) < 2 * TREND_SAMPLE:
                break
            self._points -= _thin(suspect.series)
        else:
            return
        if self._points > MAX_TOTAL_POINTS * 3 // 4:  # every series is short now: shorten them all again
            for suspect in by_length:
                self._points -= _thin(suspect.series)

    def _message(self, text: str) -> None:
        if len(self.messages) == self.messages.maxlen:
            self.messages_dropped += 1
        self.messages.append(text)

    def _timeline(self, dump: Dump) -> tuple[int, float]:
        """Each program run keeps its own clock (up_ms); a new run (new pid, or a clock that went
        back) starts on the session timeline where the latest dump so far was."""
        pid = dump.pid
        up = int(dump.begin.get("up_ms", 0)) / 1000.0
        known = self._processes.get(pid)
        if known is None or up < known[2]:
            # a later run starts one dump interval after the latest dump seen so far
            gap = int(dump.begin.get("interval_ms", 1000)) / 1000.0 if self._process_count else 0.0
            self._process_count += 1
            known = (self._process_count, self._now + gap - up, up)
        index, offset, _ = known
        self._processes.pop(pid, None)  # most recent last: the least recent goes when there are too many
        self._processes[pid] = (index, offset, up)
        if len(self._processes) > MAX_PROCESSES:
            del self._processes[next(iter(self._processes))]
        t = round(offset + up, 3)
        self._now = max(self._now, t)
        return index, t

    def add_unusable(self, dump: Dump, why: str) -> None:
        """A dump the session could not use (symbolizing or analysing it failed): counted with the
        incomplete ones and said in one line, so that one dump never ends a session."""
        self.incomplete_dumps += 1
        self._message(f"{dump.label()}: not used ({why})")

    def add_unfinished(self, dump: Dump) -> None:
        """A dump still being received when reading stopped: not damage, but said."""
        self.unfinished_dumps += 1
        self._message(f"{dump.label()}: reading stopped before its end record; not used")

    def summary(self, parser_stats: dict[str, int], symbol_problems: list[str]) -> Summary:
        return Summary(
            suspects=self.ranked(),
            dumps=list(self.dumps),
            complete_dumps=self.complete_dumps,
            problems=Problems(
                corrupt_lines=parser_stats.get("corrupt_lines", 0),
                unknown_version_lines=parser_stats.get("unknown_version_lines", 0),
                noise_lines=parser_stats.get("noise_lines", 0),
                incomplete_dumps=self.incomplete_dumps,
                unfinished_dumps=self.unfinished_dumps,
                messages=self._counted_messages(),
                symbols=list(symbol_problems),
            ),
        )

    def _counted_messages(self) -> list[str]:
        """The kept messages, then a line for each kind of thing that was only counted (last, so that
        a view of the latest messages shows them)."""
        counted = []
        if self.messages_dropped:
            counted.append(f"and {self.messages_dropped} earlier problems (only the latest {MAX_MESSAGES} are kept)")
        if self.forgotten_suspects:
            counted.append(
                f"{self.forgotten_suspects} call stacks no longer followed (more than {MAX_SUSPECTS} seen; "
                "those that held nothing for longest went first)"
            )
        return list(self.messages) + counted

    def ranked(self) -> list[Suspect]:
        """Growing first (fastest first), then the rest by old bytes, then live bytes."""
        suspects = list(self.suspects.values())
        for suspect in suspects:
            suspect.classify()

        def order(s: Suspect) -> tuple:
            if s.klass == GROWING:
                return (0, -s.growth_bytes_per_min, -s.latest.old_bytes, repr(s.key))
            return (1, -s.latest.old_bytes, -s.latest.live_bytes, repr(s.key))

        return sorted(suspects, key=order)
