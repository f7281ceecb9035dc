"""membt-host --listen with one rogue client among good ones: its values, which no recorder can
write (valid checksums: nothing refuses them for a checksum), are corrupt lines, and the session
goes on with the good dumps (it used to end with OverflowError and no report)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from membt_host.protocol import encode_record
from support.processes import free_port, is_listening, wait_for
from support.runs import HostRun

HOST_TIMEOUT_S = 120


def wire_dump(number: int, live_bytes: int) -> bytes:
    """One dump of a leak holding live_bytes, as the recorder writes it (one module, one stack)."""
    fields = [
        ("B", ["pid=4242", f"up_ms={number * 1000}", "leak_age_ms=2000", "interval_ms=1000", "depth=16", "top=10",
               "ptr_bits=64", "reason=timer", "exe=/usr/sbin/routerd"]),
        ("C", ["live_blocks=1", f"live_bytes={live_bytes}", "old_blocks=1", f"old_bytes={live_bytes}"]),
        ("M", ["1", "55d0c0a00000", "55d0c0a00000", "55d0c0a40000", "-", "/usr/sbin/routerd"]),
        ("S", ["7", "-", "55d0c0a01234", "55d0c0a01300"]),
        ("G", ["7", str(number), str(live_bytes), str(number), str(live_bytes), "3000", "main"]),
        ("E", ["lines=6", "modules=1", "stacks=1", "groups=1", "groups_total=1"]),
    ]
    return b"".join(encode_record(number, seq, tag, f) for seq, (tag, f) in enumerate(fields))


def send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as board:
        board.sendall(data)


def test_one_rogue_client_does_not_end_a_session_of_good_dumps(tmp_path: Path) -> None:
    port = free_port()
    report = tmp_path / "report.json"
    host = HostRun(["--listen", f"tcp:127.0.0.1:{port}", "--dumps", "31", "--json", str(report)], tmp_path)
    try:
        wait_for(lambda: is_listening(port), 30, f"membt-host to listen on port {port}", host.proc)
        send(port, b"".join(wire_dump(n, 1000 * n) for n in range(1, 31)))  # a board: 30 good dumps
        send(port, wire_dump(30, 10**309) + wire_dump(30, 10**307))  # the rogue: beyond a float, and near it
        send(port, wire_dump(31, 31_000))  # the board again: the 31st complete dump ends the session
        result = host.wait(HOST_TIMEOUT_S)
    finally:
        host.stop()
    assert result.returncode == 0, result.describe()
    text = report.read_text()
    doc = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(f"not strict JSON: {name}")))
    assert doc["dumps"]["count"] == 31, result.describe()
    assert doc["problems"]["corrupt_lines"] == 4 and doc["problems"]["incomplete_dumps"] == 2
    (leak,) = doc["suspects"]
    assert leak["class"] == "growing" and leak["live_bytes"] == 31_000
