"""Fixtures for the membt-host end-to-end tests: the real recorder, the real host tool, real transports.

Build fixtures (the x86_64, armhf and aarch64 build directories) come from tests/conftest.py; everything
that runs a tool checks first that the tool is installed and skips with the reason otherwise.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.runs import Target, aarch64_target, armhf_target, native_target
from support.session import SerialRun, serial_session
from support.sshd import SSHD, SshServer, running_sshd


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
def aarch64(build_aarch64: Path) -> Target:
    require_tool("qemu-aarch64", "to run the aarch64 build (Debian package qemu-user)")
    require_tool("aarch64-linux-gnu-addr2line", "to symbolize aarch64 code (binutils-aarch64-linux-gnu)")
    return aarch64_target(build_aarch64)


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


@pytest.fixture(scope="session")
def native_serial(native: Target, tmp_path_factory: pytest.TempPathFactory) -> SerialRun:
    """The x86_64 serial session; its capture and reports feed the replay, HTML and bad-input tests."""
    return serial_session(native, tmp_path_factory.mktemp("serial-x86_64"))
