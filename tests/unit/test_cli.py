"""membt-host as a user runs it: bad options, missing files, reports, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

from membt_host.protocol import encode_record

HOSTPY = Path(__file__).resolve().parents[2] / "hostpy"


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "membt_host", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(HOSTPY), "PATH": "/usr/bin:/bin"},
    )


def growing_capture(dumps: int = 6) -> bytes:
    lines = []
    for n in range(1, dumps + 1):
        lines += [
            encode_record(
                n,
                0,
                "B",
                ["pid=5", f"up_ms={n * 1000}", "leak_age_ms=500", "interval_ms=1000"],
            ),
            encode_record(n, 1, "C", [f"live_blocks={n}", f"live_bytes={n * 100}"]),
            encode_record(n, 2, "M", ["1", "0", "400000", "500000", "-", "/usr/bin/app"]),
            encode_record(n, 3, "S", ["1", "-", "401234", "402345"]),
            encode_record(
                n,
                4,
                "G",
                ["1", str(n), str(n * 100), str(n), str(n * 100), "3000", "main"],
            ),
            encode_record(
                n,
                5,
                "E",
                ["lines=6", "modules=1", "stacks=1", "groups=1", "groups_total=1"],
            ),
        ]
    return b"".join(lines)


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    return lines[0]


def test_wrong_option_is_a_usage_error():
    done = run("--file", "x", "--colour")
    assert done.returncode == 2
    assert b"usage: membt-host" in done.stderr and b"unrecognized arguments: --colour" in done.stderr


def test_option_combinations_are_checked():
    for args, said in [
        (["--file", "x", "--remote-file", "/tmp/a"], "--remote-file needs --ssh"),
        (["--ssh", "root@board"], "--ssh needs --remote-file PATH or --remote-cmd CMD"),
        (
            ["--ssh", "b", "--remote-file", "a", "--remote-cmd", "c"],
            "not allowed with argument",
        ),
        (["--file", "x", "--baud", "9600"], "--baud needs --serial"),
        (["--file", "x", "--top", "0"], "--top must be at least 1"),
        (["--listen", "tcp:http"], "is not a port number"),
        (["--file", "x", "--serial", "/dev/ttyS0"], "not allowed with argument"),
        ([], "one of the arguments --serial --ssh --file --listen is required"),
    ]:
        done = run(*args)
        assert done.returncode == 2, args
        assert said in done.stderr.decode(), (args, done.stderr)


def test_missing_file_is_one_line(tmp_path):
    missing = tmp_path / "no such capture.log"
    done = run("--file", str(missing))
    assert done.returncode == 1
    assert one_line(done.stderr) == f"membt-host: cannot read {missing}: No such file or directory"


def test_debug_shows_the_traceback(tmp_path):
    done = run("--file", str(tmp_path / "missing"), "--debug")
    assert done.returncode == 1 and b"Traceback" in done.stderr and b"MembtError" in done.stderr


def test_bad_directories_fail_before_reading(tmp_path):
    capture = tmp_path / "c.log"
    capture.write_bytes(growing_capture())
    done = run("--file", str(capture), "--sysroot", str(tmp_path / "nope"))
    assert (
        done.returncode == 1 and one_line(done.stderr) == f"membt-host: --sysroot {tmp_path / 'nope'}: not a directory"
    )
    done = run("--file", str(capture), "--json", str(tmp_path / "nodir" / "r.json"))
    assert done.returncode == 1 and "no directory" in one_line(done.stderr)
    done = run("--file", str(capture), "--addr2line", "/nonexistent/addr2line")
    assert done.returncode == 1 and "--addr2line /nonexistent/addr2line: not found" in one_line(done.stderr)


def test_serial_device_that_does_not_exist_is_one_line():
    done = run("--serial", "/dev/membt-no-such-tty")
    assert done.returncode == 1
    assert one_line(done.stderr).startswith("membt-host: serial /dev/membt-no-such-tty: cannot open (")


def test_help_has_examples_for_serial_and_ssh():
    done = run("--help")
    text = done.stdout.decode()
    assert done.returncode == 0 and "examples:" in text
    assert "membt-host --serial /dev/ttyUSB0 --sysroot ~/fw/staging" in text
    assert "membt-host --ssh root@192.168.1.1 --remote-file /tmp/membt.log" in text


def test_reports_and_fail_on_growing(tmp_path):
    capture = tmp_path / "c.log"
    capture.write_bytes(growing_capture())
    report, page = tmp_path / "r.json", tmp_path / "r.html"
    done = run("--file", str(capture), "--json", str(report), "--html", str(page))
    assert done.returncode == 0, done.stderr
    assert b"GROWING" in done.stdout and b"membt-host summary: 6 complete dumps" in done.stdout
    doc = json.loads(report.read_text())
    assert doc["dumps"]["count"] == 6 and doc["suspects"][0]["class"] == "growing"
    assert doc["suspects"][0]["frames"][0]["module"] == "/usr/bin/app"
    assert "<svg" in page.read_text()

    done = run("--file", str(capture), "--fail-on-growing", "--quiet")
    assert done.returncode == 3 and done.stdout == b"" and done.stderr == b""


def test_stdin_and_record_replay_identically(tmp_path):
    ninth = encode_record(9, 0, "B", ["pid=5", "up_ms=9000"]) + encode_record(9, 1, "C", ["live_blocks=1"])
    data = b"boot noise\n" + growing_capture(4) + ninth + b"@MBT 1 9 2 M 1 0 4"  # ends inside dump 9
    record, first, second = tmp_path / "rec.raw", tmp_path / "a.json", tmp_path / "b.json"
    done = run("--file", "-", "--record", str(record), "--json", str(first), "--quiet", stdin=data)
    assert done.returncode == 0, done.stderr
    assert record.read_bytes() == data
    done = run("--file", str(record), "--json", str(second), "--quiet")
    assert done.returncode == 0, done.stderr
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a == b
    assert a["problems"]["unfinished_dumps"] == 1 and a["problems"]["incomplete_dumps"] == 0
    assert a["problems"]["corrupt_lines"] == 0 and a["dumps"]["count"] == 4
