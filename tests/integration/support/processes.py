"""Process plumbing for end-to-end tests: every wait is bounded, every child is reaped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout` s or when `proc` died first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def is_listening(port: int) -> bool:
    """True when some socket on this machine listens on TCP `port` (read from /proc, no connect)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                    return True
    return False


def has_open(pid: int, path: str | Path) -> bool:
    """True when process `pid` holds a file descriptor on `path` (symlinks resolved)."""
    target = os.path.realpath(path)
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
    return False


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End `proc` and everything in its process group: SIGTERM, then SIGKILL after `grace` s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)


@contextlib.contextmanager
def spawned(argv: list[str], **popen_args) -> Iterator[subprocess.Popen]:
    """Start `argv` in its own process group and make sure it is gone when the block ends."""
    proc = subprocess.Popen(argv, start_new_session=True, **popen_args)
    try:
        yield proc
    finally:
        stop(proc)


def finish(proc: subprocess.Popen, timeout: float, what: str) -> int:
    """Wait for `proc` to exit by itself within `timeout` s; kill it and fail otherwise."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(f"{what} did not finish within {timeout:.0f} s") from None
