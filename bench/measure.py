"""Run one process and measure it: wall time and peak RSS (os.wait4), with a clean environment."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Variables that would change what a run measures if they leaked in from the caller's shell.
_SCRUBBED_PREFIXES = ("MEMBT_", "LD_PRELOAD", "LSAN_OPTIONS", "ASAN_OPTIONS", "MALLOC_")


@dataclass
class Run:
    wall_s: float
    maxrss_kib: int  # largest RSS of the process and the descendants it waited for
    returncode: int
    stdout: str
    stderr_tail: str
    timed_out: bool


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(extra)
    return env


def run(cmd: list[str], env_extra: dict[str, str], timeout_s: float, cwd: Path | None = None) -> Run:
    """Start cmd, wait for it with os.wait4 and time it from fork to reaping."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=clean_env(env_extra), cwd=cwd
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting
        out.seek(0)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        return Run(
            wall_s=wall,
            maxrss_kib=usage.ru_maxrss,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr_tail=stderr[-2000:],
            timed_out=killed.is_set(),
        )
