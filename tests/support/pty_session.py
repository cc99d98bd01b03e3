"""Drive a program through a real pseudo-terminal, as a user at a terminal would.

The program runs as a session leader with the pty's slave as its controlling terminal, so resizing the
master (TIOCSWINSZ) makes the kernel send it SIGWINCH exactly as a terminal emulator does.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time


class PtySession:
    """`PtySession(argv, env)`: start argv on a new pty; `send`, `expect`, `resize`, `wait`, `close`."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, rows: int = 24, cols: int = 80):
        self.argv = argv
        self.output = bytearray()  # everything read so far (the transcript, for failure messages)
        self._seen = 0             # `expect` searches output after this offset
        self.exit_code: int | None = None
        pid, fd = pty.fork()
        if pid == 0:  # the child: its stdio is the slave side already
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execvpe(argv[0], argv, env if env is not None else os.environ)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        # the size is set from the child too; set it here so it holds before the program reads it
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # -- input / output
    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def _read_some(self, timeout: float) -> bool:
        """Read what is available within timeout; False at end of output (the slave side closed)."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # Linux: every slave fd closed
                return False
            raise
        if not chunk:
            return False
        self.output += chunk
        return True

    def expect(self, pattern: bytes | str, timeout: float = 10.0) -> re.Match:
        """Wait for a regex to appear in the output after the previous match; AssertionError on timeout."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.output, self._seen)
            if m:
                self._seen = m.end()
                return m
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read_some(min(remaining, 0.5)):
                m = regex.search(self.output, self._seen)
                if m:
                    self._seen = m.end()
                    return m
                raise AssertionError(f"{pattern!r} not seen from {self.argv} within {timeout} s; "
                                     f"output so far: {bytes(self.output)!r}")

    def resize(self, rows: int, cols: int) -> None:
        """What a terminal emulator does when its window changes: the kernel signals SIGWINCH."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    # -- the process
    def wait(self, timeout: float = 10.0) -> int:
        """Exit status of the program (128+N when a signal killed it), reading its output meanwhile."""
        deadline = time.monotonic() + timeout
        while self.exit_code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                if self.exit_code < 0:
                    self.exit_code = 128 - self.exit_code
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.argv} still running after {timeout} s; output: {bytes(self.output)!r}")
            if not self._read_some(0.05):
                time.sleep(0.02)
        while self._read_some(0):  # drain what is left
            if not select.select([self.fd], [], [], 0)[0]:
                break
        return self.exit_code

    def close(self) -> None:
        if self.exit_code is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.exit_code = -1
        try:
            os.close(self.fd)
        except OSError:
            pass

    def __enter__(self) -> "PtySession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
