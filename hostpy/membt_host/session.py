"""One membt-host run: bytes from a source through a parser per stream, the symbolizer and the
analysis, a live view after each dump, and the reports from everything seen when it stops."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

from membt_host.analysis import GROWING, Analysis, Summary
from membt_host.errors import MembtError
from membt_host.protocol import Dump, Parser
from membt_host.reporters.html import HtmlReporter
from membt_host.reporters.json import JsonReporter
from membt_host.reporters.text import TextReporter
from membt_host.sources import Chunk, Source
from membt_host.symbolize import Symbolizer

RECORD_FLUSH_BYTES = 1 << 20  # a stream that never pauses is written out anyway


@dataclass
class Settings:
    top: int = 10
    max_dumps: int | None = None
    duration_s: float | None = None
    live_view: bool = True  # a view after each dump (live sources, not --quiet)
    summary: bool = True  # the final summary on stdout
    json_path: Path | None = None
    html_path: Path | None = None
    record_path: Path | None = None
    out: TextIO = field(default_factory=lambda: sys.stdout)


class Recorder:
    """--record: every byte received. Streams (connections, ssh's stdout and stderr) are written in
    whole dumps, each at a moment its parser is between dumps, so that a replay with --file reads
    every dump the live session read."""

    def __init__(self, path: Path) -> None:
        try:
            self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - open for the session's life
        except OSError as error:
            raise MembtError(f"cannot write --record {path}: {error.strerror}") from error
        self.pending: dict[int, bytearray] = {}

    def take(self, stream: int, data: bytes, idle: bool) -> None:
        buf = self.pending.setdefault(stream, bytearray())
        buf += data
        if idle or len(buf) >= RECORD_FLUSH_BYTES:
            self.file.write(buf)
            self.file.flush()
            buf.clear()

    def close(self) -> None:
        for buf in self.pending.values():
            self.file.write(buf)
        self.file.close()


class Session:
    def __init__(self, source: Source, symbolizer: Symbolizer, settings: Settings, stop: threading.Event) -> None:
        self.source = source
        self.symbolizer = symbolizer
        self.settings = settings
        self.stop = stop
        self.analysis = Analysis()
        self.parsers: dict[int, Parser] = {}
        self.closed_stats: dict[str, int] = {}
        self.record = Recorder(settings.record_path) if settings.record_path else None
        self.on_dump: Callable[[Dump], None] | None = None

    # -- reading ---------------------------------------------------------------------------------

    def run(self) -> Summary:
        deadline = None if self.settings.duration_s is None else time.monotonic() + self.settings.duration_s
        try:
            for item in self.source:
                if item is not None:
                    self._take(item)
                if self.stop.is_set() or self._enough() or (deadline is not None and time.monotonic() >= deadline):
                    break
        finally:
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            for stream in list(self.parsers):
                self._end_stream(stream, final=True)
            if self.record is not None:
                self.record.close()
        return self.summary()

    def _enough(self) -> bool:
        wanted = self.settings.max_dumps
        return wanted is not None and self.analysis.complete_dumps >= wanted

    def _take(self, chunk: Chunk) -> None:
        if not chunk.data:
            if chunk.stream in self.parsers:
                self._end_stream(chunk.stream, final=False)
            return
        parser = self.parsers.setdefault(chunk.stream, Parser())
        if self.record is None:
            for dump in parser.feed(chunk.data):
                self._use(dump)
            return
        # line by line, so that each dump is written to the record the moment it is complete:
        # concurrent streams then appear in the record in the order their dumps were used
        data, start = chunk.data, 0
        while start < len(data):
            newline = data.find(b"\n", start)
            end = len(data) if newline < 0 else newline + 1
            dumps = parser.feed(data[start:end])
            self.record.take(chunk.stream, data[start:end], parser.idle)
            for dump in dumps:
                self._use(dump)
            start = end

    def _end_stream(self, stream: int, final: bool) -> None:
        """A stream ended: on a lost connection its open dump is incomplete; when the session
        stops, the dump still arriving is only unfinished."""
        parser = self.parsers.pop(stream)
        for dump in parser.close():
            if final and not dump.complete:
                self.analysis.add_unfinished(dump)
            else:
                self._use(dump)
        for key, value in parser.stats.items():
            self.closed_stats[key] = self.closed_stats.get(key, 0) + value

    def _use(self, dump: Dump) -> None:
        stacks = self.symbolizer.symbolize(dump) if dump.complete else {}
        self.analysis.add(dump, stacks)
        if dump.complete and self.settings.live_view:
            TextReporter.from_analysis(self.summary(), self.settings.top, live=True).render(self.settings.out)

    # -- results ---------------------------------------------------------------------------------

    def parser_stats(self) -> dict[str, int]:
        stats = dict(self.closed_stats)
        for parser in self.parsers.values():
            for key, value in parser.stats.items():
                stats[key] = stats.get(key, 0) + value
        return stats

    def summary(self) -> Summary:
        return self.analysis.summary(self.parser_stats(), self.symbolizer.problems + self.symbolizer.symbols.notes)

    def write_reports(self, summary: Summary) -> None:
        if self.settings.json_path is not None:
            write_atomically(self.settings.json_path, JsonReporter.from_analysis(summary).render)
        if self.settings.html_path is not None:
            write_atomically(self.settings.html_path, HtmlReporter.from_analysis(summary, self.settings.top).render)
        if self.settings.summary:
            TextReporter.from_analysis(summary, self.settings.top).render(self.settings.out)

    @staticmethod
    def has_growing(summary: Summary) -> bool:
        return any(s.klass == GROWING for s in summary.suspects)


def check_writable(path: Path, what: str) -> None:
    """Fail at the start, not after an hour of watching, when a report cannot be written."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise MembtError(f"cannot write {what} {path}: it is a directory")
    if not folder.is_dir():
        raise MembtError(f"cannot write {what} {path}: no directory {folder}")
    if not os.access(folder, os.W_OK):
        raise MembtError(f"cannot write {what} {path}: {folder} is not writable")


def write_atomically(path: Path, render: Callable[[TextIO], None]) -> None:
    """Readers of the report never see half a file."""
    folder = path.parent if str(path.parent) else Path(".")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            render(out)
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        raise MembtError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
