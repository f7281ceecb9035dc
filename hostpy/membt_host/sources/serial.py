"""--serial DEV: a serial console through pyserial (/dev/tty*, rfc2217://, socket://, loop://).
A cable pulled out is said once; the port is tried again every second and reading resumes."""

from __future__ import annotations

import threading

import serial

from membt_host.errors import MembtError
from membt_host.sources import TICK_S, Chunk, Notify, Source, sleep_unless_stopped

RETRY_S = 1.0


def _open(device: str, baud: int) -> serial.SerialBase:
    return serial.serial_for_url(device, baudrate=baud, timeout=TICK_S)


def _why(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return text.replace("\n", " ")


def read_serial(device: str, baud: int, stop: threading.Event, notify: Notify) -> Source:
    try:
        port = _open(device, baud)
    except (serial.SerialException, OSError, ValueError) as error:
        raise MembtError(f"serial {device}: cannot open ({_why(error)})") from error
    stream = 0
    try:
        while not stop.is_set():
            try:
                # only what is there: pyserial drops a partial read when the line fails mid-way
                data = port.read(max(1, port.in_waiting))
            except (serial.SerialException, OSError) as error:
                notify(f"serial {device}: lost ({_why(error)}), waiting…")
                port.close()
                yield Chunk(stream, b"")
                port = None
                while port is None:
                    if sleep_unless_stopped(stop, RETRY_S):
                        return
                    try:
                        port = _open(device, baud)
                    except (serial.SerialException, OSError, ValueError):
                        yield None
                stream += 1
                notify(f"serial {device}: back")
                continue
            yield Chunk(stream, data) if data else None
    finally:
        if port is not None:
            port.close()
