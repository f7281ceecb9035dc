"""--ssh [USER@]HOST: the system OpenSSH client (so ~/.ssh/config, agents and jump hosts work),
started with an argv list, never through a local shell. Either follows a file on the board from
its current end (busybox-compatible tail) or runs a command; reconnects with backoff when ssh ends.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import threading
import time
from collections import deque

from membt_host.errors import MembtError
from membt_host.sources import Chunk, Notify, Source, sleep_unless_stopped, wait_readable

BACKOFF_S = (1, 2, 4, 8, 15, 30)
STABLE_S = 10.0  # a connection that lasted this long resets the backoff
CHUNK = 1 << 16
# notice a dead link even when the board is silent
KEEPALIVE = ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]


def follow_command(path: str) -> str:
    """Follow `path` from its current end, across rotation where `tail -F` exists (busybox may lack it)."""
    quoted = shlex.quote(path)
    return f"tail -n 0 -F {quoted} 2>/dev/null || exec tail -n 0 -f {quoted}"


def ssh_argv(
    target: str,
    command: str,
    port: int | None = None,
    identity: str | None = None,
    options: list[str] | None = None,
    ssh: str = "ssh",
) -> list[str]:
    if not target or target.startswith("-") or any(c.isspace() for c in target):
        raise MembtError(f"--ssh {target!r}: not a [USER@]HOST")
    argv = [ssh, "-T"]
    for option in options or []:  # the user's options first: for ssh the first value given wins
        argv += ["-o", option]
    argv += KEEPALIVE
    if port is not None:
        argv += ["-p", str(port)]
    if identity is not None:
        argv += ["-i", identity]
    return [*argv, "--", target, command]


def read_ssh(argv: list[str], stop: threading.Event, notify: Notify) -> Source:
    """ssh's stdout and stderr are both read as streams: a recorder on the remote stderr counts too."""
    target = argv[argv.index("--") + 1]
    failures, stream = 0, 0  # failures: connections in a row that ended quickly
    while not stop.is_set():
        started = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as error:
            raise MembtError(f"ssh {target}: cannot run {argv[0]} ({error.strerror})") from error
        streams = {proc.stdout.fileno(): stream, proc.stderr.fileno(): stream + 1}
        stream += 2
        said = deque(maxlen=3)  # ssh's own last words, to explain an exit
        open_fds = list(streams)
        try:
            while open_fds and not stop.is_set():
                ready = wait_readable(open_fds, stop)
                if not ready:
                    yield None
                    continue
                for fd in ready:
                    data = os.read(fd, CHUNK)
                    if not data:
                        open_fds.remove(fd)
                    elif fd == proc.stderr.fileno():
                        said.extend(line for line in data.decode("utf-8", "replace").splitlines() if line.strip())
                    yield Chunk(streams[fd], data)
        finally:
            if not open_fds:  # both pipes closed: ssh is exiting on its own, let it say how
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            proc.stdout.close()
            proc.stderr.close()
        for fd_stream in streams.values():
            yield Chunk(fd_stream, b"")
        if stop.is_set():
            return
        failures = 1 if time.monotonic() - started > STABLE_S else failures + 1
        delay = BACKOFF_S[min(failures - 1, len(BACKOFF_S) - 1)]
        last = f": {said[-1]}" if said else ""
        notify(f"ssh {target}: connection ended (ssh exit status {proc.returncode}{last}); reconnecting in {delay} s")
        if sleep_unless_stopped(stop, delay):
            return
        notify(f"ssh {target}: reconnecting")
