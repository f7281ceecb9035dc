"""A --record capture replayed with --file, and bad input end to end: a missing file, corrupt bytes
spliced into a real capture."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.expect import assert_leak_found, describe
from support.runs import membt_host_argv, run_host
from support.session import HOST_TIMEOUT_S, SerialRun
from support.wire import complete_dump_numbers, records


def _frames(report: dict) -> list[tuple[str, list[tuple]]]:
    return [(s["class"], [(f["function"], f["file"], f["line"], f["module"], f["offset"]) for f in s["frames"]])
            for s in report["suspects"]]


def test_record_replayed_with_file_gives_the_same_report(native_serial: SerialRun, tmp_path: Path) -> None:
    live = native_serial.result.report
    replay = run_host(["--file", str(native_serial.record), "--json", str(tmp_path / "replay.json"), "--sysroot", "/"],
                      tmp_path, HOST_TIMEOUT_S)
    assert replay.returncode == 0, replay.describe()
    assert replay.report["suspects"] == live["suspects"], \
        f"live:\n{describe(live)}\n\nreplayed:\n{describe(replay.report)}"


def test_replay_from_standard_input(native_serial: SerialRun, tmp_path: Path) -> None:
    report = tmp_path / "stdin.json"
    with open(native_serial.record, "rb") as capture:
        done = subprocess.run([*membt_host_argv(), "--file", "-", "--json", str(report), "--sysroot", "/"],
                              stdin=capture, capture_output=True, text=True, timeout=HOST_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr
    assert _frames(json.loads(report.read_text())) == _frames(native_serial.result.report)


def test_missing_file_is_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "no such capture.log"
    result = run_host(["--file", str(missing), "--json", str(tmp_path / "r.json")], tmp_path, 60)
    assert result.returncode != 0, result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.describe()
    assert str(missing) in lines[0] and "Traceback" not in result.stderr, result.describe()


def _damage(capture: bytes) -> tuple[bytes, int, list[int]]:
    """Corrupt one record line in each of three dumps in the middle of a real capture, in three
    different ways, and splice console garbage between dumps. Returns the bytes, how many record
    lines were broken, and the dumps that stay complete."""
    complete = complete_dump_numbers(capture)
    assert len(complete) >= 8, f"capture too short: dumps {complete}"
    victims = {complete[3]: b"G", complete[4]: b"S", complete[5]: b"M"}
    lines = capture.split(b"\n")
    broken: set[int] = set()
    spliced_noise = False
    for i, line in enumerate(lines):
        found = records(line)
        if not found:
            continue
        dump, _, tag, _ = found[0]
        if victims.get(dump) == tag.encode() and dump not in broken:
            broken.add(dump)
            if tag == "G":        # a flipped digit: the checksum no longer matches
                at = line.index(b" G ") + 3
                digit = line[at:at + 1]
                lines[i] = line[:at] + (b"8" if digit != b"8" else b"9") + line[at + 1:]
            elif tag == "S":      # line noise in the middle of a record
                middle = len(line) // 2
                lines[i] = line[:middle] + b"\x00\xff\xfe\x1b[31m" + line[middle:]
            else:                 # a record cut short, checksum and all
                lines[i] = line[: len(line) // 2]
        elif tag == "B" and dump == complete[2] and not spliced_noise:
            spliced_noise = True  # binary garbage on its own line: console noise, not a record
            lines[i] = b"\x00\x01\x02\xff garbage \xc3\x28 on the console\n" + line
    assert broken == set(victims), f"could not find lines to damage in dumps {victims}"
    return b"\n".join(lines), len(victims), [n for n in complete if n not in victims]


def test_corrupt_bytes_in_a_real_capture_are_counted_and_the_rest_analysed(native_serial: SerialRun,
                                                                            tmp_path: Path) -> None:
    damaged, broken_lines, still_complete = _damage(native_serial.record.read_bytes())
    assert complete_dump_numbers(damaged) == still_complete
    capture = tmp_path / "damaged.raw"
    capture.write_bytes(damaged)
    result = run_host(["--file", str(capture), "--json", str(tmp_path / "report.json"), "--sysroot", "/"],
                      tmp_path, HOST_TIMEOUT_S)
    assert result.returncode == 0, result.describe()
    report = result.report
    assert_leak_found(report)
    assert report["dumps"]["count"] == len(still_complete), report["dumps"]
    problems = report["problems"]
    assert problems["corrupt_lines"] == broken_lines, problems
    assert problems["incomplete_dumps"] == broken_lines, problems
    assert problems["noise_lines"] == 1, problems  # the spliced garbage line is console noise, not damage
