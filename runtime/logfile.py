"""Container log files in the k8s-file format Podman's conmon writes, one record per line:

    2026-11-28T20:00:00.123456789Z stdout F a complete line
    2026-11-28T20:00:00.123456789Z stderr P the first part of a line that had no newline yet

The supervisor writes (LogWriter: os and time only, it runs in the small supervisor process); `logs` reads
(read_log: --tail, --since, --until, timestamps; follow by polling). Issue-3 groundwork.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

MAX_RECORD = 16 * 1024  # a longer line is split into P records, as conmon does


def rfc3339_nano(ns: int) -> str:
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 time with up to 9 fractional digits (UTC or offset)."""
    from datetime import datetime
    stamp = text.strip()
    zone = ""
    if stamp.endswith("Z"):
        stamp, zone = stamp[:-1], "+00:00"
    elif len(stamp) > 6 and stamp[-6] in "+-" and stamp[-3] == ":":
        stamp, zone = stamp[:-6], stamp[-6:]
    frac = 0
    if "." in stamp:
        stamp, digits = stamp.split(".", 1)
        if not digits.isdigit():
            raise ValueError(f"invalid time {text!r}")
        frac = int(digits[:9].ljust(9, "0"))
    dt = datetime.fromisoformat(stamp + (zone or "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + frac


class LogWriter:
    """Appends records for one container; `write(stream, data)` takes raw bytes as they come from a pipe."""

    def __init__(self, path: str, max_size: int | None = None):
        self.path = path
        self.max_size = max_size
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes, now_ns: int | None = None) -> None:
        stamp = rfc3339_nano(now_ns if now_ns is not None else time.time_ns()).encode()
        out = []
        for line in data.splitlines(keepends=True):
            complete = line.endswith(b"\n")
            body = line[:-1] if complete else line
            while len(body) > MAX_RECORD:
                out.append(b"%s %s P %s\n" % (stamp, stream.encode(), body[:MAX_RECORD]))
                body = body[MAX_RECORD:]
            out.append(b"%s %s %s %s\n" % (stamp, stream.encode(), b"F" if complete else b"P", body))
        blob = b"".join(out)
        if self.max_size is not None and self._size + len(blob) > self.max_size:
            # --log-opt max-size: start over rather than grow without bound (Podman truncates too)
            os.ftruncate(self._fd, 0)
            self._size = 0
        os.write(self._fd, blob)
        self._size += len(blob)

    def close(self) -> None:
        os.close(self._fd)


class LogLine:
    """One line as the user sees it (P records already joined). A plain slotted class, not a dataclass:
    this module is imported by the supervisor, which must stay small."""

    __slots__ = ("time_ns", "stream", "text")

    def __init__(self, time_ns: int, stream: str, text: bytes):
        self.time_ns, self.stream, self.text = time_ns, stream, text

    def __repr__(self) -> str:
        return f"LogLine({self.time_ns}, {self.stream!r}, {self.text!r})"


def _records(data: bytes) -> Iterator[tuple[int, str, bool, bytes]]:
    for raw in data.split(b"\n"):
        parts = raw.split(b" ", 3)
        if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
            continue  # a torn last line (being written) or garbage: skipped, never fatal
        try:
            stamp = parse_rfc3339(parts[0].decode())
        except ValueError:
            continue
        yield stamp, parts[1].decode(), parts[2] == b"F", parts[3] if len(parts) == 4 else b""


def parse_log(data: bytes) -> list[LogLine]:
    """Lines in file order (the order they were written); a line split into P records takes the place
    and time of its first record."""
    slots: list[list] = []                 # [time_ns, stream, text] per line, in order of first record
    pending: dict[str, int] = {}           # stream -> slot of its unfinished line
    for stamp, stream, full, body in _records(data):
        index = pending.pop(stream, None)
        if index is None:
            index = len(slots)
            slots.append([stamp, stream, b""])
        slots[index][2] += body
        if full:
            slots[index][2] += b"\n"
        else:
            pending[stream] = index
    return [LogLine(t, s, text) for t, s, text in slots]


def read_log(path: str, *, tail: int | None = None, since_ns: int | None = None,
             until_ns: int | None = None) -> list[LogLine]:
    return read_log_from(path, tail=tail, since_ns=since_ns, until_ns=until_ns)[0]


def read_log_from(path: str, *, tail: int | None = None, since_ns: int | None = None,
                  until_ns: int | None = None) -> tuple[list[LogLine], int]:
    """The lines, and the offset just after the last complete record read: where `logs -f` goes on, so that
    a line written while we read is neither lost nor shown twice."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0
    end = data.rfind(b"\n") + 1
    lines = [line for line in parse_log(data[:end])
             if (since_ns is None or line.time_ns >= since_ns) and (until_ns is None or line.time_ns <= until_ns)]
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return lines, end
