"""Pseudo-terminals standing in for a board's serial console."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .processes import stop, wait_for


@dataclass(frozen=True)
class PtyPair:
    board_fd: int      # the master: what the board writes is what the PC reads on `pc_path`
    pc_path: str       # the slave device, e.g. /dev/pts/7, as membt-host --serial opens it


@contextlib.contextmanager
def pty_pair() -> Iterator[PtyPair]:
    """An os.openpty pair in raw mode (no echo, no CR/LF translation), closed afterwards."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        # Holding the slave open keeps the line from hanging up between two openers.
        yield PtyPair(master, os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


class SocatConsole:
    """A serial line that can be unplugged: socat copies what the board writes into `capture`
    (from its current end, like a live console) to a pty reachable at the fixed path `link`.
    Killing socat makes the pty vanish; starting it again brings a new pty back under `link`."""

    def __init__(self, capture: Path, link: Path, log: Path) -> None:
        self.capture, self.link, self.log = capture, link, log
        self.proc: subprocess.Popen | None = None
        self.socat = shutil.which("socat")

    def plug(self) -> None:
        assert self.proc is None, "already plugged in"
        self.capture.touch()
        # No shell: socat runs tail itself; quoting of the file name is socat's EXEC syntax.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.socat), "-d", "-u", f"EXEC:tail -n0 -F {self._socat_quoted(self.capture)}",
                 f"PTY,link={self._socat_quoted(self.link)},raw,echo=0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        wait_for(self.link.exists, 20, f"socat to create {self.link}", self.proc)

    def unplug(self) -> None:
        assert self.proc is not None, "not plugged in"
        stop(self.proc)
        self.proc = None
        wait_for(lambda: not self.link.exists(), 20, f"{self.link} to disappear")

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    @staticmethod
    def _socat_quoted(path: Path) -> str:
        text = str(path)
        assert all(c.isalnum() or c in "/._-" for c in text), f"keep socat paths plain: {text!r}"
        return text
