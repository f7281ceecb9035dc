"""--file PATH or --file -: a saved console log or a --record capture, read to its end."""

from __future__ import annotations

import os
import sys
import threading

from membt_host.errors import MembtError
from membt_host.sources import Chunk, Source, wait_readable

CHUNK = 1 << 16


def read_file(path: str, stop: threading.Event) -> Source:
    if path == "-":
        fd, name, owned = sys.stdin.fileno(), "standard input", False
    else:
        try:
            fd, name, owned = os.open(path, os.O_RDONLY), path, True
        except OSError as error:
            raise MembtError(f"cannot read {path}: {error.strerror}") from error
        if os.path.isdir(path):
            os.close(fd)
            raise MembtError(f"cannot read {path}: it is a directory")
    try:
        while not stop.is_set():
            if not wait_readable([fd], stop):
                yield None  # a pipe with nothing yet
                continue
            try:
                data = os.read(fd, CHUNK)
            except OSError as error:
                raise MembtError(f"cannot read {name}: {error.strerror}") from error
            if not data:
                return
            yield Chunk(0, data)
    finally:
        if owned:
            os.close(fd)
