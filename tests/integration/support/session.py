"""Live sessions shared by several end-to-end tests: membt-host watching leaky-server through a pty."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .processes import has_open, stop, wait_for
from .ptys import pty_pair
from .runs import HostResult, HostRun, Target, start_leaky_server

# Complete dumps each live run waits for: enough points for a trend (the cache has filled and stays
# flat, the leak keeps rising) at MEMBT_INTERVAL=0.5.
LIVE_DUMPS = 12
# How long leaky-server keeps running: far more than LIVE_DUMPS intervals; it is stopped as soon as
# membt-host is done, so this only bounds a run whose host never finishes.
SERVER_SECONDS = 60
HOST_TIMEOUT_S = 90          # natively; multiplied by Target.slowdown under qemu-user


@dataclass(frozen=True)
class SerialRun:
    """One membt-host --serial session over a pty, watching the LD_PRELOADed leaky-server."""

    target: Target
    result: HostResult
    record: Path          # --record: every raw byte the host read
    html: Path            # --html
    workdir: Path


def serial_session(target: Target, workdir: Path, dumps: int = LIVE_DUMPS) -> SerialRun:
    """leaky-server writes its dumps into a pty master (MEMBT_OUTPUT=fd:N); membt-host reads the slave."""
    workdir.mkdir(parents=True, exist_ok=True)
    record, html, report = workdir / "capture.raw", workdir / "report.html", workdir / "report.json"
    timeout = HOST_TIMEOUT_S * target.slowdown
    with pty_pair() as pty:
        host = HostRun(["--serial", pty.pc_path, "--dumps", str(dumps), "--json", str(report), "--html", str(html),
                        "--record", str(record), *target.symbol_args()], workdir)
        try:
            # pyserial flushes pending input when it opens the port: the reader must be there first.
            wait_for(lambda: has_open(host.pid, pty.pc_path), 30, f"membt-host to open {pty.pc_path}", host.proc)
            board = start_leaky_server(target, SERVER_SECONDS * target.slowdown, f"fd:{pty.board_fd}",
                                       workdir / "leaky-server.log", pass_fds=(pty.board_fd,))
            try:
                result = host.wait(timeout)
            finally:
                stop(board)
        finally:
            host.stop()
    assert result.returncode == 0, result.describe()
    assert result.report is not None, f"no JSON report written\n{result.describe()}"
    return SerialRun(target, result, record, html, workdir)
