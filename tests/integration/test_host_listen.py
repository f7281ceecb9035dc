"""membt-host --listen: the recorder connects to the PC itself (MEMBT_OUTPUT=tcp:HOST:PORT)."""

from __future__ import annotations

from pathlib import Path

from support.expect import assert_leak_found
from support.processes import free_port, is_listening, stop, wait_for
from support.runs import HostRun, Target, start_leaky_server
from support.session import HOST_TIMEOUT_S, LIVE_DUMPS, SERVER_SECONDS


def test_listen_accepts_the_recorder_over_tcp(native: Target, tmp_path: Path) -> None:
    port = free_port()
    report = tmp_path / "report.json"
    host = HostRun(["--listen", f"tcp:127.0.0.1:{port}", "--dumps", str(LIVE_DUMPS), "--json", str(report),
                    "--sysroot", "/"], tmp_path)
    try:
        # The recorder connects once at start: the host must be listening before it runs.
        wait_for(lambda: is_listening(port), 30, f"membt-host to listen on port {port}", host.proc)
        board = start_leaky_server(native, SERVER_SECONDS, f"tcp:127.0.0.1:{port}", tmp_path / "leaky-server.log")
        try:
            result = host.wait(HOST_TIMEOUT_S)
        finally:
            stop(board)
    finally:
        host.stop()
    assert result.returncode == 0, result.describe()
    assert_leak_found(result.report)
