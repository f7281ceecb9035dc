"""membt-host --ssh against a real OpenSSH server on 127.0.0.1, with the real recorder on the
"board" (this machine): following a dump file, and reading a remote command's output."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
from pathlib import Path

from support.expect import assert_leak_found
from support.processes import stop
from support.runs import HostRun, Target, start_leaky_server
from support.session import HOST_TIMEOUT_S, LIVE_DUMPS, SERVER_SECONDS
from support.sshd import SshServer
from support.wire import complete_dump_numbers


def test_ssh_remote_file_with_space_and_quotes_in_its_path(native: Target, sshd: SshServer, tmp_path: Path) -> None:
    """The recorder appends to a file whose path needs quoting for the remote shell; the host
    follows it from its current end, like tail -F."""
    board_dir = tmp_path / "board's logs"
    board_dir.mkdir()
    dump_file = board_dir / 'membt "leaky" server.log'
    report = tmp_path / "report.json"
    board = start_leaky_server(native, SERVER_SECONDS, str(dump_file), tmp_path / "leaky-server.log")
    try:
        host = HostRun([*sshd.host_args(), "--remote-file", str(dump_file), "--dumps", str(LIVE_DUMPS),
                        "--json", str(report), "--sysroot", "/"], tmp_path)
        try:
            result = host.wait(HOST_TIMEOUT_S)
        finally:
            host.stop()
    finally:
        stop(board)
    assert result.returncode == 0, f"{result.describe()}\n--- sshd ---\n{sshd.log.read_text()[-3000:]}"
    assert_leak_found(result.report)


def test_ssh_remote_command_runs_the_recorded_program(native: Target, sshd: SshServer, tmp_path: Path) -> None:
    """--remote-cmd: the dumps are whatever the remote command prints. Here it starts the program on
    the board with the recorder on its stderr (the default), sent down the ssh channel while the
    program's own output is thrown away, like a daemon started from a login shell."""
    report, record, pid_file = tmp_path / "report.json", tmp_path / "capture.raw", tmp_path / "board.pid"
    env = native.recorder_env("stderr")
    command = " ".join([f"echo $$ > {shlex.quote(str(pid_file))};",  # exec keeps the pid: the test ends it
                        *(f"{name}={shlex.quote(value)}" for name, value in env.items()),
                        "exec", shlex.quote(str(native.leaky_server)), str(SERVER_SECONDS), "2>&1", ">/dev/null"])
    host = HostRun([*sshd.host_args(), "--remote-cmd", command, "--dumps", str(LIVE_DUMPS), "--json", str(report),
                    "--record", str(record), "--sysroot", "/"], tmp_path)
    try:
        result = host.wait(HOST_TIMEOUT_S)
    finally:
        host.stop()
        # Once ssh is gone the remote program gets EPIPE, which the recorder survives by design.
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
    assert result.returncode == 0, f"{result.describe()}\n--- sshd ---\n{sshd.log.read_text()[-3000:]}"
    assert len(complete_dump_numbers(record.read_bytes())) >= LIVE_DUMPS
    assert_leak_found(result.report)
