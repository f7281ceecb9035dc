"""Transports: each source yields the raw bytes it receives, and knows nothing of the format.

A source is an iterator of Chunk (bytes of one stream) or None (nothing arrived for a moment: the
session checks its stop conditions). Every connection, and every reconnection, is its own stream,
so a line cut by a lost connection never joins the next connection's bytes.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

TICK_S = 0.2  # how long a source may block before it lets the session look at the clock

Notify = Callable[[str], None]


@dataclass(frozen=True)
class Chunk:
    stream: int
    data: bytes  # b"" marks the end of the stream (connection lost or closed)


Source = Iterator[Chunk | None]


def wait_readable(fds: list[int], stop: threading.Event, timeout: float = TICK_S) -> list[int]:
    """The fds that can be read now, or [] after `timeout` or when asked to stop."""
    if stop.is_set():
        return []
    try:
        ready, _, _ = select.select(fds, [], [], timeout)
    except InterruptedError:
        return []
    return ready


def sleep_unless_stopped(stop: threading.Event, seconds: float) -> bool:
    """Sleep; True when the session was asked to stop meanwhile."""
    return stop.wait(seconds)
