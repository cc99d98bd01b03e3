"""cli/attach_client.py against a fake supervisor on the other end of a real socketpair (and a real pty)."""
from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import termios
import threading
import time
import traceback

import pytest

from pinnace.cli.attach_client import AttachOptions, attach, parse_detach_keys
from pinnace.errors import InvalidArgument, PinnaceError
from pinnace.runtime import attach_proto as proto

TIMEOUT = 3.0


class Peer:
    """The fake supervisor's end of the connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = proto.FrameReader()
        self.frames: list[tuple[int, bytes]] = []

    def send(self, kind: int, payload: bytes = b"") -> None:
        self.sock.sendall(proto.frame(kind, payload))

    def recv(self, timeout: float = TIMEOUT) -> tuple[int, bytes] | None:
        """The next frame from the client; None when it closed the connection."""
        deadline = time.monotonic() + timeout
        while not self.frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the attach client")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                return None
            self.frames += self.reader.feed(data)
        return self.frames.pop(0)

    def stdin_bytes(self, count: int) -> bytes:
        """Collect STDIN payloads until `count` bytes came; any other frame is a failure."""
        got = b""
        while len(got) < count:
            kind, payload = self.recv()
            assert kind == proto.STDIN, (kind, payload, got)
            got += payload
        return got

    def quiet_for(self, seconds: float) -> bool:
        ready, _, _ = select.select([self.sock], [], [], seconds)
        return not ready and not self.frames

    def until_closed(self) -> list[tuple[int, bytes]]:
        frames = []
        while (f := self.recv()) is not None:
            frames.append(f)
        return frames


class Background(threading.Thread):
    """Runs fn in a thread; join() returns its value or re-raises its exception."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn, self.value, self.error = fn, None, None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def join(self, timeout: float = TIMEOUT):  # type: ignore[override]
        super().join(timeout)
        assert not self.is_alive(), "fake supervisor thread hung"
        if self.error:
            raise self.error
        return self.value


def exit_after_stdin_eof(peer: Peer, code: int = 0):
    """A container that ends when its stdin does: collect frames up to STDIN_EOF, answer EXIT, then
    keep collecting until the client closes (so a second STDIN_EOF would be seen)."""
    frames = []
    while (f := peer.recv()) is not None:
        frames.append(f)
        if f[0] == proto.STDIN_EOF and frames.count(f) == 1:
            peer.send(proto.OUT, b"bye\n")
            peer.send(proto.EXIT, str(code).encode())
    return frames


def stdin_payload(frames) -> bytes:
    return b"".join(p for k, p in frames if k == proto.STDIN)


def fork_child(body) -> int:
    """Fork; the child runs body() and exits with its return value (98 and a traceback on an exception)."""
    pid = os.fork()
    if pid == 0:
        code = 98
        try:
            code = body()
        except BaseException:  # noqa: BLE001 - report anything, never return into pytest
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, timeout: float = TIMEOUT) -> int:
    """The child's wait status (raw), failing if it does not end in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("attaching child did not end")


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def read_pipe(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, Peer(theirs)
    ours.close()
    theirs.close()


# -- detach keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("ctrl-p,ctrl-q", b"\x10\x11"),
    ("ctrl-a", b"\x01"),
    ("ctrl-z,a", b"\x1a" + b"a"),
    ("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_", b"\x00\x1b\x1c\x1d\x1e\x1f"),
    ("x,y,z", b"xyz"),
    ("", b""),
])
def test_parse_detach_keys(text, expected):
    assert parse_detach_keys(text) == expected


@pytest.mark.parametrize("text", ["ctrl-", "ctrl-1", "ctrl-pq", "ab", "ctrl-p,", ",ctrl-p", "ctrl-p,,ctrl-q",
                                  "shift-a", "é", ","])
def test_parse_detach_keys_rejects(text):
    with pytest.raises(InvalidArgument, match="detach keys"):
        parse_detach_keys(text)


def test_bad_detach_keys_fail_before_relaying(pair):
    ours, peer = pair
    with pytest.raises(InvalidArgument):
        attach(ours.fileno(), AttachOptions(tty=False, stdin=True, detach_keys="ctrl-1"))
    assert peer.quiet_for(0.05)


# -- output and exit ---------------------------------------------------------------------------------
def test_output_frames_reach_stdout_and_stderr_and_exit_code_returns(pair):
    ours, peer = pair
    for kind, payload in [(proto.OUT, b"out 1\n"), (proto.ERR, b"err 1\n"), (proto.OUT, b"out 2\n"),
                          (proto.ERR, b""), (proto.EXIT, b"3")]:
        peer.send(kind, payload)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
    rc = attach(ours.fileno(), AttachOptions(tty=False, stdin=False), stdout_fd=out_w, stderr_fd=err_w)
    os.close(out_w)
    os.close(err_w)
    assert rc == 3
    assert read_pipe(out_r) == b"out 1\nout 2\n"
    assert read_pipe(err_r) == b"err 1\n"
    # Everything it changed is undone: signal handlers, the socket's blocking mode; it sent nothing.
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert ours.getblocking() and os.get_blocking(ours.fileno())
    ours.close()
    assert peer.until_closed() == []


def test_large_output_arrives_complete_through_a_slow_reader(pair):
    ours, peer = pair
    blob = os.urandom(700_000)

    def supervisor():
        for start in range(0, len(blob), 50_000):
            peer.send(proto.OUT, blob[start:start + 50_000])
        peer.send(proto.EXIT, b"0")

    out_r, out_w = os.pipe()
    sup = Background(supervisor)
    reader = Background(lambda: read_pipe(out_r))
    assert attach(ours.fileno(), AttachOptions(tty=False, stdin=False), stdout_fd=out_w) == 0
    os.close(out_w)
    sup.join()
    assert reader.join() == blob


def test_closed_stdout_drops_output_but_still_returns_the_exit_code(pair):
    ours, peer = pair
    out_r, out_w = os.pipe()
    os.close(out_r)  # like `pinnace run … | head -0`
    for payload in (b"lost\n", b"lost too\n"):
        peer.send(proto.OUT, payload)
    peer.send(proto.EXIT, b"7")
    try:
        assert attach(ours.fileno(), AttachOptions(tty=False, stdin=False), stdout_fd=out_w) == 7
    finally:
        os.close(out_w)


def test_connection_closed_without_exit_is_an_error(pair):
    ours, peer = pair
    out_r, out_w = os.pipe()
    peer.send(proto.OUT, b"partial")
    peer.sock.close()
    with pytest.raises(PinnaceError, match="supervisor"):
        attach(ours.fileno(), AttachOptions(tty=False, stdin=False), stdout_fd=out_w)
    os.close(out_w)
    assert read_pipe(out_r) == b"partial"  # what came before the loss was still shown


def test_error_frame_raises_its_message(pair):
    ours, peer = pair
    peer.send(proto.ERROR, b"container 1234abcd is not running\n")
    with pytest.raises(PinnaceError, match=r"^container 1234abcd is not running$"):
        attach(ours.fileno(), AttachOptions(tty=False, stdin=False))


# -- stdin -------------------------------------------------------------------------------------------
def test_piped_stdin_arrives_as_stdin_frames_then_one_eof(pair):
    ours, peer = pair
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    sup = Background(lambda: exit_after_stdin_eof(peer, 5))

    def feed():
        os.write(in_w, b"hello ")
        time.sleep(0.05)  # a second read: data from several reads arrives in order
        os.write(in_w, b"world\n")
        os.close(in_w)

    writer = Background(feed)
    rc = attach(ours.fileno(), AttachOptions(tty=False, stdin=True), stdin_fd=in_r, stdout_fd=out_w)
    writer.join()
    ours.close()
    frames = sup.join()
    os.close(in_r)
    os.close(out_w)
    assert rc == 5
    assert read_pipe(out_r) == b"bye\n"
    assert stdin_payload(frames) == b"hello world\n"
    assert [k for k, _ in frames if k != proto.STDIN] == [proto.STDIN_EOF]  # once, and last
    assert frames[-1] == (proto.STDIN_EOF, b"")


@pytest.mark.parametrize("keys, typed, forwarded, detached", [
    ("ctrl-p,ctrl-q", b"abc\x10\x11not sent", b"abc", True),      # -i without a tty detaches too
    ("ctrl-p,ctrl-q", b"a\x10b\x10\x10\x11", b"a\x10b\x10", True),  # a broken prefix is forwarded, in order
    ("ctrl-a,ctrl-a,ctrl-b", b"x\x01\x01\x01\x02y", b"x\x01", True),  # overlapping restart of the sequence
    ("ctrl-p,ctrl-q", b"ab\x10", b"ab\x10", False),                # EOF releases a held prefix
    ("", b"a\x10\x11b", b"a\x10\x11b", False),                     # "" disables detaching
    ("q", b"abq", b"ab", True),
])
def test_detach_keys_on_piped_stdin(pair, keys, typed, forwarded, detached):
    ours, peer = pair
    in_r, in_w = os.pipe()
    os.write(in_w, typed)
    os.close(in_w)
    out_r, out_w = os.pipe()
    sup = Background(lambda: exit_after_stdin_eof(peer, 0))
    rc = attach(ours.fileno(), AttachOptions(tty=False, stdin=True, detach_keys=keys),
                stdin_fd=in_r, stdout_fd=out_w)
    ours.close()
    frames = sup.join()
    os.close(in_r)
    os.close(out_w)
    os.close(out_r)
    assert stdin_payload(frames) == forwarded
    if detached:
        assert rc is None
        assert (proto.STDIN_EOF, b"") not in frames
    else:
        assert rc == 0
        assert frames[-1] == (proto.STDIN_EOF, b"")


# -- signals without a tty ---------------------------------------------------------------------------
def _attach_in_child(opts: AttachOptions, child_sock: socket.socket, stdin_fd: int, out_fd: int) -> int:
    def body():
        rc = attach(child_sock.fileno(), opts, stdin_fd=stdin_fd, stdout_fd=out_fd, stderr_fd=out_fd)
        return 99 if rc is None else rc
    return fork_child(body)


def test_sig_proxy_forwards_signals_as_signal_frames():
    ours, theirs = socket.socketpair()
    peer = Peer(theirs)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = _attach_in_child(AttachOptions(tty=False, stdin=True), ours, in_r, out_w)
    ours.close()
    os.close(out_w)
    try:
        os.write(in_w, b"ready")
        # Its stdin is relayed from the loop, so the handlers are in place by now.
        assert peer.stdin_bytes(5) == b"ready"
        os.kill(pid, signal.SIGTERM)
        assert peer.recv() == (proto.SIGNAL, bytes([signal.SIGTERM]))
        os.kill(pid, signal.SIGUSR1)
        assert peer.recv() == (proto.SIGNAL, bytes([signal.SIGUSR1]))
        peer.send(proto.OUT, b"terminated\n")
        peer.send(proto.EXIT, b"143")
        status = wait_child(pid)
        assert os.waitstatus_to_exitcode(status) == 143
        assert read_pipe(out_r) == b"terminated\n"
    finally:
        os.close(in_w)
        os.close(in_r)
        theirs.close()


def test_without_sig_proxy_a_signal_ends_the_client_not_the_container():
    ours, theirs = socket.socketpair()
    peer = Peer(theirs)
    in_r, in_w = os.pipe()
    pid = _attach_in_child(AttachOptions(tty=False, stdin=True, sig_proxy=False), ours, in_r, 1)
    ours.close()
    try:
        os.write(in_w, b"go")
        assert peer.stdin_bytes(2) == b"go"
        os.kill(pid, signal.SIGTERM)
        status = wait_child(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert peer.until_closed() == []  # nothing was forwarded
    finally:
        os.close(in_w)
        os.close(in_r)
        theirs.close()


# -- a real terminal ---------------------------------------------------------------------------------
class PtySession:
    """attach(tty=True, stdin=True) in a child whose controlling terminal is a fresh pty's slave."""

    def __init__(self, rows: int, cols: int) -> None:
        self.master, self.slave = os.openpty()
        set_winsize(self.slave, rows, cols)
        self.before = termios.tcgetattr(self.slave)
        ours, theirs = socket.socketpair()
        self.peer = Peer(theirs)
        res_r, res_w = os.pipe()

        def body():
            os.close(self.master)
            theirs.close()
            os.close(res_r)
            os.setsid()
            fcntl.ioctl(self.slave, termios.TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(self.slave, fd)
            before = termios.tcgetattr(0)
            rc = attach(ours.fileno(), AttachOptions(tty=True, stdin=True))
            same = termios.tcgetattr(0) == before
            os.write(res_w, f"{rc} {same}".encode())
            return 0

        self.pid = fork_child(body)
        ours.close()
        os.close(res_w)
        self.result_fd = res_r

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_screen(self, expected: bytes) -> bytes:
        got = b""
        deadline = time.monotonic() + TIMEOUT
        while expected not in got and time.monotonic() < deadline:
            if select.select([self.master], [], [], 0.05)[0]:
                got += os.read(self.master, 4096)
        return got

    def close(self) -> None:
        for fd in (self.master, self.slave, self.result_fd):
            try:
                os.close(fd)
            except OSError:
                pass  # already closed by a test that read the result to its end
        self.peer.sock.close()


@pytest.fixture
def pty_session():
    sessions = []

    def make(rows: int, cols: int) -> PtySession:
        sessions.append(PtySession(rows, cols))
        return sessions[-1]

    yield make
    for s in sessions:
        try:
            os.kill(s.pid, signal.SIGKILL)
            os.waitpid(s.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        s.close()


def test_tty_raw_relay_resize_and_detach_restores_the_terminal(pty_session):
    s = pty_session(30, 100)
    peer = s.peer
    assert peer.recv() == (proto.RESIZE, struct.pack(">HH", 30, 100))  # the initial size
    mode = termios.tcgetattr(s.slave)
    assert not mode[3] & (termios.ICANON | termios.ECHO | termios.ISIG)  # raw while attached

    peer.send(proto.OUT, b"hello from the container\r\n")
    assert b"hello from the container\r\n" in s.read_screen(b"container\r\n")

    s.type(b"ab")
    assert peer.stdin_bytes(2) == b"ab"
    s.type(b"\x03")  # ctrl-c is just a byte for the container with a tty
    assert peer.stdin_bytes(1) == b"\x03"
    s.type(b"\x10")  # could be the start of ctrl-p,ctrl-q: held back …
    assert peer.quiet_for(0.15)
    s.type(b"x")     # … and released with the next byte when it is not
    assert peer.stdin_bytes(2) == b"\x10x"

    set_winsize(s.master, 40, 120)  # what a terminal emulator does; the kernel sends SIGWINCH
    assert peer.recv() == (proto.RESIZE, struct.pack(">HH", 40, 120))

    s.type(b"z\x10")
    assert peer.stdin_bytes(1) == b"z"
    s.type(b"\x11")
    assert peer.until_closed() == []  # detached: the sequence itself never reaches the container
    status = wait_child(s.pid)
    assert os.waitstatus_to_exitcode(status) == 0
    assert read_pipe(s.result_fd) == b"None True"
    assert termios.tcgetattr(s.slave) == s.before
    assert not select.select([s.master], [], [], 0.05)[0]  # nothing printed on detach


def test_tty_exit_code_returns_and_restores_the_terminal(pty_session):
    s = pty_session(24, 80)
    assert s.peer.recv() == (proto.RESIZE, struct.pack(">HH", 24, 80))
    s.peer.send(proto.EXIT, b"42")
    assert os.waitstatus_to_exitcode(wait_child(s.pid)) == 0
    assert os.read(s.result_fd, 100) == b"42 True"
    assert termios.tcgetattr(s.slave) == s.before


def test_tty_client_killed_by_sigterm_restores_the_terminal_first(pty_session):
    s = pty_session(24, 80)
    assert s.peer.recv() == (proto.RESIZE, struct.pack(">HH", 24, 80))
    assert not termios.tcgetattr(s.slave)[3] & termios.ICANON
    os.kill(s.pid, signal.SIGTERM)
    status = wait_child(s.pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM  # the signal still ends it
    assert termios.tcgetattr(s.slave) == s.before
    assert s.peer.until_closed() == []  # with a tty, signals are not proxied
