"""--listen tcp:[HOST:]PORT: the recorder connects to the PC (MEMBT_OUTPUT=tcp:HOST:PORT).
Any number of recorders, one after another or at once; each connection is its own stream."""

from __future__ import annotations

import socket
import threading

from membt_host.errors import MembtError
from membt_host.sources import Chunk, Notify, Source, wait_readable

CHUNK = 1 << 16


def parse_listen(spec: str) -> tuple[str, int]:
    """'tcp:PORT', 'tcp:HOST:PORT' or 'tcp:[V6]:PORT' to (host, port); all interfaces by default."""
    if not spec.startswith("tcp:"):
        raise MembtError(f"--listen {spec}: expected tcp:[HOST:]PORT")
    rest = spec[4:]
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = "", rest
    host = host.removeprefix("[").removesuffix("]")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise MembtError(f"--listen {spec}: {port!r} is not a port number")
    return host, int(port)


def listen_tcp(spec: str, stop: threading.Event, notify: Notify) -> Source:
    host, port = parse_listen(spec)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        server = socket.socket(family, kind, proto)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(address)
        server.listen(8)
    except OSError as error:
        raise MembtError(f"cannot listen on {spec}: {error.strerror or error}") from error
    notify(f"listening on {spec} for recorders (MEMBT_OUTPUT=tcp:<this host>:{port})")
    peers: dict[int, tuple[socket.socket, int, str]] = {}
    next_stream = 0
    try:
        while not stop.is_set():
            ready = wait_readable([server.fileno(), *peers], stop)
            if not ready:
                yield None
                continue
            for fd in ready:
                if fd == server.fileno():
                    conn, addr = server.accept()
                    name = f"{addr[0]}:{addr[1]}"
                    peers[conn.fileno()] = (conn, next_stream, name)
                    next_stream += 1
                    notify(f"recorder connected from {name}")
                    continue
                conn, stream, name = peers[fd]
                try:
                    data = conn.recv(CHUNK)
                except OSError as error:
                    notify(f"recorder {name}: {error.strerror or error}")
                    data = b""
                if not data:
                    del peers[fd]
                    conn.close()
                    notify(f"recorder {name} disconnected")
                yield Chunk(stream, data)
    finally:
        for conn, _, _ in peers.values():
            conn.close()
        server.close()
