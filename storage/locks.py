"""Per-object advisory file locks (flock).

Many pinnace processes touch one store at once (that is the normal case without a daemon), so every
state change happens under the lock of the object it changes. flock locks die with their process, so a
command killed halfway never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FileLock:
    """`with FileLock(path):` exclusive; `FileLock(path, shared=True)` for readers of a shared resource."""

    def __init__(self, path: Path, *, shared: bool = False):
        self.path = path
        self.shared = shared
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        op = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        if not blocking:
            op |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
