"""membt-host --serial through real pseudo-terminals, watching the real recorder in leaky-server:
natively, under qemu-arm and qemu-aarch64, and across a serial line that is unplugged and plugged back in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.expect import (
    LEAK_FUNCTION,
    assert_leak_found,
    assert_own_binaries_symbolized,
    describe,
    find_suspect,
)
from support.processes import has_open, stop, wait_for
from support.ptys import SocatConsole
from support.runs import AARCH64_SYSROOT, ARMHF_SYSROOT, HostRun, Target, start_leaky_server
from support.session import (
    HOST_TIMEOUT_S,
    LIVE_DUMPS,
    SERVER_SECONDS,
    SerialRun,
    serial_session,
)
from support.wire import complete_dump_numbers


def test_serial_pty_ranks_the_strdup_leak_first_and_the_cache_stable(native_serial: SerialRun) -> None:
    assert_leak_found(native_serial.result.report)


def test_serial_live_view_shows_the_leak_as_it_happens(native_serial: SerialRun) -> None:
    """While watching, the terminal shows each dump with the growing call stack and its source line."""
    view = native_serial.result.stdout
    report = native_serial.result.report
    _, leak = find_suspect(report, LEAK_FUNCTION)
    line = next(f["line"] for f in leak["frames"] if f["function"] == LEAK_FUNCTION)
    assert re.search(rf"{LEAK_FUNCTION} \(\S*leaky_server\.c:{line}\)", view), view[-3000:]
    assert re.search(r"\bgrowing\b", view, re.IGNORECASE), view[-3000:]
    assert len(re.findall(r"\bdump \d+\b", view)) >= LIVE_DUMPS, view[-3000:]


def test_serial_pty_loses_nothing_on_a_clean_line(native_serial: SerialRun) -> None:
    """Every dump the board wrote while the host listened arrives whole: none corrupt, none incomplete,
    and the host stopped after exactly --dumps complete dumps, in order."""
    report = native_serial.result.report
    captured = complete_dump_numbers(native_serial.record.read_bytes())
    assert captured[:LIVE_DUMPS] == list(range(1, LIVE_DUMPS + 1)), f"the capture holds dumps {captured}"
    assert report["dumps"]["count"] == LIVE_DUMPS, report["dumps"]
    assert [d["number"] for d in report["dumps"]["totals"]] == captured[:LIVE_DUMPS]
    problems = report["problems"]
    assert problems["corrupt_lines"] == 0 and problems["incomplete_dumps"] == 0, problems
    assert problems["noise_lines"] == 0, problems
    assert_own_binaries_symbolized(report)


@pytest.mark.parametrize(("board", "sysroot"), [("armhf", ARMHF_SYSROOT), ("aarch64", AARCH64_SYSROOT)])
def test_serial_pty_under_qemu(board: str, sysroot: Path, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run = serial_session(request.getfixturevalue(board), tmp_path)
    report = run.result.report
    assert_leak_found(report)
    # The guest names its modules by the paths it sees; the program must still be found (by build-id
    # in --symbols) so that the leak's frame carries its real module, not a raw address.
    _, leak = find_suspect(report, LEAK_FUNCTION)
    frame = next(f for f in leak["frames"] if f["function"] == LEAK_FUNCTION)
    assert Path(frame["module"]).name == "leaky-server", describe(report)
    # The guest sees its libc as /lib/libc.so.6: the host must have looked for it under the sysroot.
    complaints = assert_own_binaries_symbolized(report)
    assert any(str(sysroot / "lib" / "libc.so.6") in text for text in complaints), complaints


UNPLUGGED = re.compile(r"disconnect|unplug|lost|gone|vanish|no longer|closed", re.IGNORECASE)
REPLUGGED = re.compile(r"reconnect|resum|back|reopen|plugged in", re.IGNORECASE)


def test_serial_line_unplugged_and_plugged_back(native: Target, socat: str, tmp_path: Path) -> None:
    """socat stands for the USB-serial adapter: killing it removes the pty under the fixed link,
    starting it again brings a new one back. membt-host must say so, wait and go on reading."""
    capture, link = tmp_path / "board-console.log", tmp_path / "ttyUSB0"
    console = SocatConsole(capture, link, tmp_path / "socat.log")
    record, report_path = tmp_path / "capture.raw", tmp_path / "report.json"
    dumps_wanted = 8
    board = start_leaky_server(native, SERVER_SECONDS, str(capture), tmp_path / "leaky-server.log")
    try:
        console.plug()
        host = HostRun(["--serial", str(link), "--dumps", str(dumps_wanted), "--json", str(report_path),
                        "--record", str(record), "--sysroot", "/"], tmp_path)
        try:
            wait_for(lambda: len(complete_dump_numbers(_read(record))) >= 2, 30,
                     "two complete dumps through the first pty", host.proc)
            console.unplug()
            # While the line is down the board goes on dumping into the void: wait for two more dumps,
            # so the host must both notice the loss and resume to reach --dumps.
            written = complete_dump_numbers(capture.read_bytes())
            wait_for(lambda: len(complete_dump_numbers(capture.read_bytes())) >= len(written) + 2, 30,
                     "the board to write dumps while unplugged")
            assert host.proc.poll() is None, f"membt-host gave up when the line went away\n{host.result().describe()}"
            # The new pty starts at the console's current end: a dump numbered above this one can only
            # have come through it.
            last_before_replug = max(complete_dump_numbers(capture.read_bytes()))
            console.plug()
            wait_for(lambda: has_open(host.pid, link), 30, "membt-host to reopen the new pty", host.proc)
            result = host.wait(HOST_TIMEOUT_S)
        finally:
            host.stop()
    finally:
        console.close()
        stop(board)

    assert result.returncode == 0, result.describe()
    messages = result.stderr + result.stdout
    assert UNPLUGGED.search(messages), f"nothing said the line went away\n{result.describe()}"
    assert REPLUGGED.search(messages), f"nothing said the line came back\n{result.describe()}"
    after = [n for n in complete_dump_numbers(_read(record)) if n > last_before_replug]
    assert after, f"no complete dump read after the pty came back (last before: {last_before_replug})"
    assert_leak_found(result.report)


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""

