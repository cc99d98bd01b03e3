"""The attach protocol between a container's supervisor and its clients (`run`, `attach`, `start -a`).

One SOCK_STREAM connection per client: the foreground `run` gets one end of a socketpair made before the
supervisor is forked, `attach` connects to the container's `attach` socket. Both directions carry frames
of a 5-byte header (type, payload length: `>BI`) and the payload. Kept tiny and import-light: the supervisor
loads it.

client → supervisor: STDIN data, STDIN_EOF (close the container's stdin), RESIZE (`>HH` rows, cols),
                     SIGNAL (`>B` signal number, for --sig-proxy). A client that detaches just closes.
supervisor → client: OUT (stdout, or the terminal's output), ERR (stderr), EXIT (ASCII exit code, sent
                     after cleanup; the supervisor closes the connection after it), ERROR (a one-line message).
"""
from __future__ import annotations

import os
import struct

STDIN, STDIN_EOF, RESIZE, SIGNAL = 0, 1, 2, 3
OUT, ERR, EXIT, ERROR = 16, 17, 18, 19
HEADER = struct.Struct(">BI")
MAX_PAYLOAD = 1 << 20


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def resize_frame(rows: int, cols: int) -> bytes:
    return frame(RESIZE, struct.pack(">HH", rows, cols))


def parse_resize(payload: bytes) -> tuple[int, int]:
    rows, cols = struct.unpack(">HH", payload[:4])
    return rows, cols


def send_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class FrameReader:
    """Accumulates bytes read from a connection and yields complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames = []
        while len(self._buf) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buf)
            if length > MAX_PAYLOAD:
                raise ValueError(f"attach frame too large ({length} bytes)")
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            frames.append((kind, bytes(self._buf[HEADER.size:end])))
            del self._buf[:end]
        return frames
