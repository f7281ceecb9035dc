"""Transports through a Session, in-process with real sockets and subprocesses: a serial link that
drops and comes back, recorders connecting over tcp at the same time, ssh that exits and reconnects."""

from __future__ import annotations

import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from membt_host.errors import MembtError
from membt_host.protocol import encode_record
from membt_host.reporters.json import JsonReporter
from membt_host.session import Session, Settings
from membt_host.sources.file import read_file
from membt_host.sources.serial import read_serial
from membt_host.sources.ssh import follow_command, read_ssh, ssh_argv
from membt_host.sources.tcp import listen_tcp, parse_listen
from membt_host.symbolize import Symbolizer

GUARD_S = 30  # a test that hangs is stopped (and then fails on its counts), never waits forever


def dump_bytes(number: int, pid: int, size: int = 100) -> bytes:
    return b"".join(
        [
            encode_record(number, 0, "B", [f"pid={pid}", f"up_ms={number * 1000}", "interval_ms=1000"]),
            encode_record(number, 1, "C", ["live_blocks=1", f"live_bytes={size}"]),
            encode_record(number, 2, "M", ["1", "0", "400000", "500000", "-", "/usr/bin/app"]),
            encode_record(number, 3, "S", ["1", "-", f"{0x401000 + pid:x}"]),
            encode_record(number, 4, "G", ["1", str(number), str(number * size), "1", str(size), "3000", "main"]),
            encode_record(number, 5, "E", ["lines=6", "modules=1", "stacks=1", "groups=1", "groups_total=1"]),
        ]
    )


def run_session(source_factory, settings: Settings, record: Path | None = None) -> tuple[Session, list[str]]:
    said: list[str] = []
    stop = threading.Event()
    guard = threading.Timer(GUARD_S, stop.set)
    guard.start()
    settings.live_view = False
    settings.record_path = record
    session = Session(source_factory(stop, said.append), Symbolizer(), settings, stop)
    try:
        session.run()
    finally:
        guard.cancel()
    return session, said


def listening_socket() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    return server


def test_serial_link_lost_and_back(tmp_path: Path) -> None:
    """A board dumping every 0.1 s; the cable is pulled in the middle of dump 3 and plugged back in.
    (pyserial discards what arrived before it opened the port, as on a real tty: the board keeps
    dumping, so what counts is that dumps from after the replug are read.)"""
    server = listening_socket()
    url = f"socket://127.0.0.1:{server.getsockname()[1]}"
    done = threading.Event()

    def board() -> None:
        conn, _ = server.accept()
        for number in (1, 2):
            done.wait(0.1)
            conn.sendall(dump_bytes(number, 7))
        conn.sendall(dump_bytes(3, 7)[:150])  # the cable is pulled in dump 3
        conn.close()
        conn, _ = server.accept()  # plugged back in: the host reopens the port by itself
        number = 10
        while not done.wait(0.1):
            try:
                conn.sendall(dump_bytes(number, 7))
            except OSError:
                break
            number += 1
        conn.close()

    thread = threading.Thread(target=board, daemon=True)
    thread.start()
    session, said = run_session(
        lambda stop, notify: read_serial(url, 115200, stop, notify), Settings(max_dumps=4), tmp_path / "rec.raw"
    )
    done.set()
    assert any(s.startswith(f"serial {url}: lost (") and s.endswith("waiting…") for s in said), said
    assert f"serial {url}: back" in said
    assert session.analysis.complete_dumps == 4
    assert session.analysis.incomplete_dumps >= 1  # dump 3, cut by the pulled cable
    assert len([d for d in session.analysis.dumps if d.number >= 10]) >= 2


def test_tcp_recorders_at_the_same_time_never_mix_lines_and_replay_the_same(tmp_path: Path) -> None:
    probe = listening_socket()
    port = probe.getsockname()[1]
    probe.close()
    spec = f"tcp:127.0.0.1:{port}"

    def recorder(pid: int, delay: float) -> None:
        data = dump_bytes(1, pid, size=10 * pid) + dump_bytes(2, pid, size=10 * pid)
        for _ in range(100):
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            return
        for i in range(0, len(data), 37):  # pieces that cut lines, sent while the other one sends
            conn.sendall(data[i : i + 37])
            time.sleep(delay)
        conn.close()

    threads = [threading.Thread(target=recorder, args=(pid, d), daemon=True) for pid, d in ((11, 0.002), (22, 0.003))]
    for t in threads:
        t.start()
    record = tmp_path / "rec.raw"
    live, said = run_session(lambda stop, notify: listen_tcp(spec, stop, notify), Settings(max_dumps=4), record)
    assert live.analysis.complete_dumps == 4 and live.analysis.incomplete_dumps == 0
    assert sum(s.startswith("recorder connected from 127.0.0.1:") for s in said) == 2
    assert live.parser_stats()["corrupt_lines"] == 0

    replay, _ = run_session(lambda stop, notify: read_file(str(record), stop), Settings())
    assert JsonReporter.from_analysis(replay.summary()).document == JsonReporter.from_analysis(live.summary()).document


def test_listen_spec():
    assert parse_listen("tcp:5555") == ("", 5555)
    assert parse_listen("tcp:127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_listen("tcp:[::1]:9000") == ("::1", 9000)
    for bad in ("5555", "tcp:", "tcp:host:0", "udp:1"):
        with pytest.raises(MembtError):
            parse_listen(bad)


def test_ssh_argv_is_a_list_with_the_users_options_first():
    argv = ssh_argv("root@board", "logread -f", port=2222, identity="/k ey", options=["ProxyJump=lab"])
    assert argv == [
        "ssh", "-T", "-o", "ProxyJump=lab", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
        "-p", "2222", "-i", "/k ey", "--", "root@board", "logread -f",
    ]  # fmt: skip
    for bad in ("-oProxyCommand=touch /tmp/x", "", "a b"):
        with pytest.raises(MembtError):
            ssh_argv(bad, "true")


@pytest.mark.parametrize("has_big_f", [True, False])
def test_remote_follow_command_quotes_the_path_for_a_posix_shell(tmp_path: Path, has_big_f: bool) -> None:
    """The command is run by the board's shell: give it a fake tail and see what it receives."""
    path = '/var/log/it\'s a "test" $HOME `id`;.log'
    fake = tmp_path / "tail"
    reject = 'case "$*" in *-F*) exit 1;; esac\n' if not has_big_f else ""  # busybox built without -F
    fake.write_text(f'#!/bin/sh\n{reject}for a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    out = subprocess.run(
        ["/bin/sh", "-c", follow_command(path)], capture_output=True, text=True, env={"PATH": str(tmp_path)}, check=True
    ).stdout
    assert out.splitlines() == ["-n", "0", "-F" if has_big_f else "-f", path]


def test_ssh_exit_is_said_and_reconnected(tmp_path: Path) -> None:
    """A stand-in for ssh: prints a dump on stderr (the recorder's default output), then its own
    last words, and exits 255; the source says so and runs it again."""
    for n in (1, 2):
        (tmp_path / f"dump{n}").write_bytes(dump_bytes(n, 5))
    count = tmp_path / "count"
    count.write_text("1")
    d, c = shlex.quote(str(tmp_path)), shlex.quote(str(count))
    script = (
        f'n=$(cat {c}); echo $((n+1)) > {c}; cat {d}/dump$n >&2; echo "kex_exchange: Connection reset" >&2; exit 255'
    )
    argv = ["sh", "-c", script, "--", "root@board"]
    session, said = run_session(lambda stop, notify: read_ssh(argv, stop, notify), Settings(max_dumps=2))
    assert session.analysis.complete_dumps == 2
    assert (
        "ssh root@board: connection ended (ssh exit status 255: kex_exchange: Connection reset); reconnecting in 1 s"
        in said
    ), said
    assert "ssh root@board: reconnecting" in said
