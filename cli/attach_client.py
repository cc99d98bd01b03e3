"""The client side of attach: relays the user's terminal or stdio to a container's supervisor.

Used by the foreground `run`, `start -a` and `attach`, over one connection that speaks
runtime/attach_proto.py. `run` is a hot path, so this module stays import-light: os, select, signal,
termios, tty, fcntl, struct, dataclasses and the tiny protocol module (no typer, no rich).

Everything happens in one poll loop on the connection, stdin and a self-pipe: signal handlers only write
the signal number into the pipe, so window resizes and proxied signals are sent from the loop, never from
inside a handler in the middle of another write.
"""
from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import termios
import tty
from dataclasses import dataclass

from pinnace.errors import InvalidArgument, PinnaceError
from pinnace.runtime import attach_proto as proto

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
_SUPERVISOR_GONE = "lost the connection to the container's supervisor: it went away without an exit status"

# The controls Docker accepts after "ctrl-" besides the letters (their codes are 0x00, 0x1b-0x1f).
_CTRL_PUNCT = {"@": 0x00, "[": 0x1B, "\\": 0x1C, "]": 0x1D, "^": 0x1E, "_": 0x1F}

# Signals that would end the client: with a raw terminal we catch them to restore the terminal first,
# then deliver them again; without a tty, --sig-proxy forwards them (and the user ones) instead.
_TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_PROXIED = _TERMINATING + (signal.SIGUSR1, signal.SIGUSR2)

_READ_SIZE = 65536
# Stop reading stdin while this much is still queued for the supervisor (it is not reading): the
# user's input waits in their pipe instead of our memory.
_MAX_QUEUED = 1 << 20
_DETACH_FLUSH_SECONDS = 1.0


@dataclass(frozen=True)
class AttachOptions:
    tty: bool
    stdin: bool
    detach_keys: str = DEFAULT_DETACH_KEYS
    sig_proxy: bool = True


def parse_detach_keys(text: str) -> bytes:
    """Docker's --detach-keys: a comma list of `ctrl-<a-z @ [ \\ ] ^ _>` or single characters; "" disables."""
    if text == "":
        return b""
    codes = bytearray()
    for key in text.split(","):
        if len(key) == 1 and key.isascii():
            codes.append(ord(key))
            continue
        if len(key) == 6 and key[:5].lower() == "ctrl-":
            char = key[5].lower()
            if "a" <= char <= "z":
                codes.append(ord(char) - ord("a") + 1)
                continue
            if char in _CTRL_PUNCT:
                codes.append(_CTRL_PUNCT[char])
                continue
        raise InvalidArgument(
            f"invalid detach keys {text!r}: unknown key {key!r} "
            "(use a comma list of ctrl-<a-z, @, [, \\, ], ^, _> or single characters)")
    return bytes(codes)


class _DetachScanner:
    """Finds the detach sequence in a stream of reads; the sequence may span reads.

    Bytes that could still start the sequence are held back; when they turn out not to be part of it
    they are released in order. A mismatch re-checks the held bytes as a new start (so "ctrl-a" typed
    twice before "ctrl-a,ctrl-b" still detaches).
    """

    def __init__(self, keys: bytes) -> None:
        self._keys = keys
        self._held = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Return (bytes to forward, whether the sequence completed). Bytes after the sequence are dropped."""
        keys = self._keys
        if not keys:
            return data, False
        out = bytearray()
        i, n = 0, len(data)
        while i < n:
            if not self._held:
                # Fast path: nothing held, jump straight to the next possible start of the sequence.
                j = data.find(keys[0], i)
                if j < 0:
                    out += data[i:]
                    break
                out += data[i:j]
                i = j
            self._held.append(data[i])
            i += 1
            while self._held and not keys.startswith(self._held):
                out.append(self._held.pop(0))
            if self._held == keys:
                self._held.clear()
                return bytes(out), True
        return bytes(out), False

    def flush(self) -> bytes:
        """The held bytes, released (stdin ended in the middle of a possible sequence)."""
        held = bytes(self._held)
        self._held.clear()
        return held


def _window_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    if rows == 0 and cols == 0:
        return None  # an unsized terminal: better leave the container's default than set 0x0
    return rows, cols


class _Relay:
    """One attach session: terminal and signal setup, the poll loop, and an undo of every change."""

    def __init__(self, sock_fd: int, opts: AttachOptions, keys: bytes,
                 stdin_fd: int, stdout_fd: int, stderr_fd: int) -> None:
        self.sock, self.opts = sock_fd, opts
        self.stdin, self.stdout, self.stderr = stdin_fd, stdout_fd, stderr_fd
        self.scanner = _DetachScanner(keys)
        self.reader = proto.FrameReader()
        self.queued = bytearray()          # frames for the supervisor not yet written
        self.sock_writable = True          # False once the supervisor stopped reading (EPIPE)
        self.stdin_open = opts.stdin
        self.dead_outputs: set[int] = set()  # our stdout/stderr was closed: drop what goes there
        self.term_fd: int | None = None    # where to read the window size from
        self.saved_mode: list | None = None
        self.old_handlers: dict[int, object] = {}
        self.old_sock_flags: int | None = None
        self.wake_r = self.wake_w = -1
        self.proxying = False
        self.fatal_signal = 0              # a terminating signal to deliver again after the undo

    # -- setup and undo --------------------------------------------------------------------------
    def setup(self) -> None:
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Our writes to the connection must never block: the supervisor may be blocked writing output
        # to us at the same moment. The flag is on the shared file description, so it is undone.
        flags = fcntl.fcntl(self.sock, fcntl.F_GETFL)
        self.old_sock_flags = flags
        fcntl.fcntl(self.sock, fcntl.F_SETFL, flags | os.O_NONBLOCK)

        raw = self.opts.tty and self.opts.stdin and os.isatty(self.stdin)
        catch: tuple[int, ...] = ()
        if self.opts.tty:
            self.term_fd = next((fd for fd in (self.stdout, self.stdin) if os.isatty(fd)), None)
            if raw:
                catch += _TERMINATING
            if self.term_fd is not None:
                catch += (signal.SIGWINCH,)
        elif self.opts.sig_proxy:
            catch = _PROXIED
            self.proxying = True
        # A closed connection must be an EPIPE error, not a silent death (a CLI may reset SIGPIPE).
        try:
            if signal.getsignal(signal.SIGPIPE) is not signal.SIG_IGN:
                self.old_handlers[signal.SIGPIPE] = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            for signum in catch:
                self.old_handlers[signum] = signal.signal(signum, self._on_signal)
        except ValueError:
            self.proxying = False  # not the main thread: no handlers possible, relay without them
        # Handlers first: a SIGTERM right after the switch to raw mode still finds the undo path.
        if raw:
            self.saved_mode = termios.tcgetattr(self.stdin)
            # TCSANOW, not setraw's default TCSAFLUSH: keys typed ahead must reach the container.
            tty.setraw(self.stdin, termios.TCSANOW)
        if self.term_fd is not None:
            self._queue_resize()

    def teardown(self) -> None:
        # The terminal first: a signal arriving during the undo still finds our handler.
        if self.saved_mode is not None:
            try:
                termios.tcsetattr(self.stdin, termios.TCSANOW, self.saved_mode)
            except termios.error:
                pass  # the terminal went away
        for signum, old in self.old_handlers.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        if self.saved_mode is not None and not self.fatal_signal:
            # A terminating signal caught between the loop's end and the undo: deliver it too.
            for signum in self._drain_wake():
                if signum in _TERMINATING:
                    self.fatal_signal = signum
                    break
        if self.old_sock_flags is not None:
            try:
                fcntl.fcntl(self.sock, fcntl.F_SETFL, self.old_sock_flags)
            except OSError:
                pass
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1

    def _on_signal(self, signum: int, _frame: object) -> None:
        try:
            os.write(self.wake_w, bytes((signum,)))
        except OSError:
            pass  # pipe full: that many pending signals already wake the loop

    def _drain_wake(self) -> bytes:
        got = bytearray()
        while self.wake_r >= 0:
            try:
                chunk = os.read(self.wake_r, 256)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
        return bytes(got)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> int | None:
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        stdin_registered = False
        while True:
            self._pump()
            want_stdin = self.stdin_open and len(self.queued) < _MAX_QUEUED
            if want_stdin != stdin_registered:
                if want_stdin:
                    poller.register(self.stdin, select.POLLIN)
                else:
                    poller.unregister(self.stdin)
                stdin_registered = want_stdin
            sock_events = select.POLLIN | (select.POLLOUT if self.queued and self.sock_writable else 0)
            poller.register(self.sock, sock_events)  # re-registering modifies the mask
            ready = dict(poller.poll())
            if self.wake_r in ready:
                for signum in self._drain_wake():
                    if signum == signal.SIGWINCH:
                        self._queue_resize()
                    elif self.proxying:
                        self._queue(proto.frame(proto.SIGNAL, bytes((signum,))))
                    elif signum in _TERMINATING:
                        self.fatal_signal = signum
                        self._flush_before_leaving()
                        return None
            if self.sock in ready:
                code = self._read_connection()
                if code is not None:
                    return code
            if self.stdin in ready and self.stdin_open:
                if self._read_stdin():
                    self._flush_before_leaving()
                    return None

    def _read_connection(self) -> int | None:
        """Relay the frames that arrived; the exit code once EXIT came, else None."""
        try:
            data = os.read(self.sock, _READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            data = b""  # ECONNRESET: the same as a close without EXIT
        if not data:
            raise PinnaceError(_SUPERVISOR_GONE)
        try:
            frames = self.reader.feed(data)
        except ValueError as exc:
            raise PinnaceError(f"attach protocol error from the container's supervisor: {exc}") from None
        for kind, payload in frames:
            if kind == proto.OUT:
                self._write_output(self.stdout, payload)
            elif kind == proto.ERR:
                self._write_output(self.stderr, payload)
            elif kind == proto.EXIT:
                try:
                    return int(payload.decode("ascii"))
                except (UnicodeDecodeError, ValueError):
                    raise PinnaceError(
                        f"attach protocol error: bad exit status {payload[:32]!r} from the supervisor") from None
            elif kind == proto.ERROR:
                message = payload.decode("utf-8", "replace").strip()
                raise PinnaceError(message or "the container's supervisor reported an error")
            # Unknown kinds are skipped: a newer supervisor may send more.
        return None

    def _read_stdin(self) -> bool:
        """Forward what the user typed; True when they typed the detach sequence."""
        try:
            data = os.read(self.stdin, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""  # EIO: the terminal hung up; EBADF: no stdin at all
        if not data:
            held = self.scanner.flush()
            if held:
                self._queue(proto.frame(proto.STDIN, held))
            self._queue(proto.frame(proto.STDIN_EOF))
            self.stdin_open = False
            return False
        forward, detached = self.scanner.feed(data)
        for start in range(0, len(forward), proto.MAX_PAYLOAD):
            self._queue(proto.frame(proto.STDIN, forward[start:start + proto.MAX_PAYLOAD]))
        return detached

    # -- writing ---------------------------------------------------------------------------------
    def _queue(self, data: bytes) -> None:
        if self.sock_writable:
            self.queued += data
            self._pump()

    def _queue_resize(self) -> None:
        size = _window_size(self.term_fd) if self.term_fd is not None else None
        if size is not None:
            self._queue(proto.resize_frame(*size))

    def _pump(self) -> None:
        """Write as much of the queue as the connection takes now."""
        while self.queued and self.sock_writable:
            try:
                written = os.write(self.sock, self.queued)
            except BlockingIOError:
                return
            except OSError:
                # The supervisor no longer reads (EPIPE): nothing more can reach the container, but
                # its output and exit status may still come, so keep reading.
                self.sock_writable = False
                self.stdin_open = False
                self.queued.clear()
                return
            del self.queued[:written]

    def _flush_before_leaving(self) -> None:
        """Give the queued input (typed before the detach keys) a bounded chance to reach the supervisor."""
        self._pump()
        if not self.queued or not self.sock_writable:
            return
        poller = select.poll()
        poller.register(self.sock, select.POLLOUT)
        deadline = _DETACH_FLUSH_SECONDS * 1000
        while self.queued and self.sock_writable and deadline > 0:
            if not poller.poll(50):
                deadline -= 50
            self._pump()

    def _write_output(self, fd: int, data: bytes) -> None:
        if fd in self.dead_outputs:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                select.select([], [fd], [])  # someone made our stdout non-blocking: wait for room
            except OSError:
                # EPIPE (a reader like `head` left) or EIO (terminal gone): drop the output, keep
                # waiting for the exit status.
                self.dead_outputs.add(fd)
                return


def attach(sock_fd: int, opts: AttachOptions, *, stdin_fd: int = 0, stdout_fd: int = 1,
           stderr_fd: int = 2) -> int | None:
    """Relay stdio between this process and a container's supervisor on `sock_fd`.

    Returns the container's exit code, or None when the user typed the detach keys (or a terminating
    signal ended a raw-terminal session; it is delivered again afterwards). Prints nothing of its own.
    The caller owns and closes `sock_fd`. Raises PinnaceError on an ERROR frame or when the connection
    ends without an exit status, InvalidArgument on bad detach keys.
    """
    keys = parse_detach_keys(opts.detach_keys) if opts.stdin else b""
    relay = _Relay(sock_fd, opts, keys, stdin_fd, stdout_fd, stderr_fd)
    try:
        relay.setup()
        result = relay.run()
    finally:
        relay.teardown()
    if relay.fatal_signal:
        # The terminal is back to normal: now let the signal do what it would have done.
        os.kill(os.getpid(), relay.fatal_signal)
    return result
