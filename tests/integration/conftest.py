"""Fixtures for the membt-host end-to-end tests: the real recorder, the real host tool, real transports.

Build fixtures (the x86_64 and armhf build directories) come from tests/conftest.py; everything
that runs a tool checks first that the tool is installed and skips with the reason otherwise.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.processes import has_open, stop, wait_for
from support.ptys import pty_pair
from support.runs import (
    HostResult,
    HostRun,
    Target,
    armhf_target,
    native_target,
    start_leaky_server,
)
from support.sshd import SSHD, SshServer, running_sshd

# Complete dumps each live run waits for: enough points for a trend (the cache has filled and stays
# flat, the leak keeps rising) at MEMBT_INTERVAL=0.5.
LIVE_DUMPS = 10
# How long leaky-server keeps running: far more than LIVE_DUMPS intervals; it is stopped as soon as
# membt-host is done, so this only bounds a run whose host never finishes.
SERVER_SECONDS = 60
HOST_TIMEOUT_S = 90          # natively; multiplied by Target.slowdown under qemu-arm


def require_tool(path_or_name: str, why: str) -> str:
    found = shutil.which(path_or_name)
    if found is None:
        pytest.skip(f"{path_or_name} is not installed: needed {why}")
    return found


@pytest.fixture(scope="session")
def native(build_x86_64: Path) -> Target:
    return native_target(build_x86_64)


@pytest.fixture(scope="session")
def armhf(build_armhf: Path) -> Target:
    require_tool("qemu-arm", "to run the armhf build (Debian package qemu-user)")
    require_tool("arm-linux-gnueabihf-addr2line", "to symbolize armhf code (binutils-arm-linux-gnueabihf)")
    return armhf_target(build_armhf)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    require_tool(SSHD, "for the ssh source (Debian package openssh-server)")
    require_tool("ssh", "for the ssh source (Debian package openssh-client)")
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def socat() -> str:
    return require_tool("socat", "to unplug and replug a serial line (Debian package socat)")


@pytest.fixture(scope="session")
def chromium() -> str:
    return require_tool("/usr/bin/chromium", "to render the HTML report (Debian package chromium)")


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


@pytest.fixture(scope="session")
def native_serial(native: Target, tmp_path_factory: pytest.TempPathFactory) -> SerialRun:
    """The x86_64 serial session; its capture and reports feed the replay, HTML and bad-input tests."""
    return serial_session(native, tmp_path_factory.mktemp("serial-x86_64"))
