"""net/relay.py over real loopback sockets.

The relay is driven by a select() loop in a thread (as the supervisor's loop would drive it); servers and
clients are ordinary blocking sockets. SO_ORIGINAL_DST needs an nf_tables redirect rule, so the outbound
tests inject the original destination (`orig_dst=`), always the gateway address, which the relay must map
to 127.0.0.1.
"""
from __future__ import annotations

import hashlib
import os
import select
import socket
import threading
import time

import pytest

from pinnace.net.relay import Relay

GATEWAY = "10.0.2.2"


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def _free_port() -> int:
    s = _listener()
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A TCP server on 127.0.0.1 running `handler(conn)` in a thread per connection."""

    def __init__(self, handler) -> None:
        self.sock = _listener()
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.threads: list[threading.Thread] = []
        self.peers: list[tuple[str, int]] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handler(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.accepter.join(5)
        for t in self.threads:
            t.join(5)


def echo(conn: socket.socket) -> None:
    while data := conn.recv(1 << 20):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


class Driver:
    """The caller's loop: fds() -> select() -> on_readable/on_writable, in a thread; stop() wakes it."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.wake_r, self.wake_w = os.pipe()
        self.stopping = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopping:
                r, w = self.relay.fds()
                r, w, _ = select.select(r + [self.wake_r], w, [], 1.0)
                for fd in r:
                    if fd != self.wake_r:
                        self.relay.on_readable(fd)
                for fd in w:
                    self.relay.on_writable(fd)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def wait_idle(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.relay.active and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.relay.active == 0, "the relay kept connections whose both ends had closed"

    def stop(self) -> None:
        self.stopping = True
        os.write(self.wake_w, b"x")
        self.thread.join(5)
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.error:
            raise self.error


@pytest.fixture
def outbound():
    """(relay address, echo server, driver): the relay forwards every connection to the echo server."""
    server = Server(echo)
    relay = Relay(gateway_map={GATEWAY: "127.0.0.1"}, orig_dst=lambda fd: (GATEWAY, server.port))
    lsock = _listener()
    addr = lsock.getsockname()
    relay.add_outbound_listener(lsock.detach())
    driver = Driver(relay)
    yield addr, server, driver
    driver.stop()
    relay.close()
    server.close()


def _client(addr) -> socket.socket:
    c = socket.create_connection(addr, timeout=10)
    return c


def test_echo_small(outbound):
    addr, _, driver = outbound
    with _client(addr) as c:
        c.sendall(b"hello relay")
        assert c.recv(100) == b"hello relay"
    driver.wait_idle()


def test_echo_64mib_byte_exact(outbound):
    addr, _, driver = outbound
    payload = os.urandom(64 << 20)
    with _client(addr) as c:
        sender = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
        sender.start()
        got = hashlib.sha256()
        total = 0
        while chunk := c.recv(1 << 20):
            got.update(chunk)
            total += len(chunk)
        sender.join()
    assert total == len(payload)
    assert got.digest() == hashlib.sha256(payload).digest()
    driver.wait_idle()


def test_half_close_client_first():
    """Client shutdown(SHUT_WR) -> server sees EOF -> server replies -> client gets reply, then EOF."""
    def reply_after_eof(conn):
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.sendall(b"reply:" + data)

    server = Server(reply_after_eof)
    relay = Relay(gateway_map={GATEWAY: "127.0.0.1"}, orig_dst=lambda fd: (GATEWAY, server.port))
    lsock = _listener()
    relay.add_outbound_listener(lsock.fileno())
    addr = lsock.getsockname()
    lsock.detach()
    driver = Driver(relay)
    try:
        with _client(addr) as c:
            c.sendall(b"question")
            c.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := c.recv(65536):
                data += chunk
            assert data == b"reply:question"
        driver.wait_idle()
    finally:
        driver.stop()
        relay.close()
        server.close()


def test_half_close_server_first(outbound):
    """Server shutdown(SHUT_WR) first -> client gets its bytes, then EOF, and can still send."""
    addr, server, driver = outbound
    got: list[bytes] = []

    def bye_then_listen(conn):
        conn.sendall(b"bye")
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        got.append(data)

    server.handler = bye_then_listen
    with _client(addr) as c:
        assert c.recv(100) == b"bye"
        assert c.recv(100) == b""           # the server's FIN came through
        c.sendall(b"still talking")         # ... and the other direction still works
        c.shutdown(socket.SHUT_WR)
    driver.wait_idle()
    for t in server.threads:
        t.join(5)
    assert got == [b"still talking"]


def test_connect_to_closed_port_resets_client():
    closed = _free_port()
    relay = Relay(gateway_map={GATEWAY: "127.0.0.1"}, orig_dst=lambda fd: (GATEWAY, closed))
    lsock = _listener()
    addr = lsock.getsockname()
    relay.add_outbound_listener(lsock.detach())
    driver = Driver(relay)
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionResetError):
            # the reset can come before create_connection's (non-blocking) connect has looked at SO_ERROR
            with _client(addr) as c:
                c.recv(100)
        assert time.monotonic() - start < 1.0
        assert relay.active == 0
        assert "refused" in relay.stats["last_error"]
    finally:
        driver.stop()
        relay.close()


def test_50_concurrent_connections(outbound):
    addr, server, driver = outbound
    clients = [_client(addr) for _ in range(50)]
    try:
        for i, c in enumerate(clients):            # all open at once before any answer is read
            c.sendall(f"client {i} ".encode() * 1000)
        deadline = time.monotonic() + 5
        while driver.relay.active < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert driver.relay.active == 50
        for i, c in enumerate(clients):
            want = f"client {i} ".encode() * 1000
            data = b""
            while len(data) < len(want):
                data += c.recv(len(want) - len(data))
            assert data == want
    finally:
        for c in clients:
            c.close()
    driver.wait_idle()


def test_forward_uses_connector_and_target():
    server = Server(echo)
    asked: list[tuple[str, int]] = []

    def connect(peer):
        asked.append(peer)
        s = socket.socket()
        s.setblocking(False)
        return s.detach()

    def broken(peer):
        raise OSError("helper gone")

    relay = Relay()
    lsock, bad = _listener(), _listener()
    addr, bad_addr = lsock.getsockname(), bad.getsockname()
    relay.add_forward(lsock.detach(), ("127.0.0.1", server.port), connect)
    relay.add_forward(bad.detach(), ("127.0.0.1", server.port), broken)
    driver = Driver(relay)
    try:
        with _client(addr) as c:
            c.sendall(b"published")
            assert c.recv(100) == b"published"
            assert asked == [c.getsockname()]       # the connector learns the real client address
        with pytest.raises(ConnectionResetError):  # at connect or at the first read: a race, both fine
            with _client(bad_addr) as c:
                c.recv(100)
        assert "helper gone" in relay.stats["last_error"]
        driver.wait_idle()
    finally:
        driver.stop()
        relay.close()
        server.close()


def test_close_leaves_no_fds_and_resets_clients():
    before = _fd_count()
    stuck = _listener()           # a server that accepts and never reads: bytes pile up in the relay
    relay = Relay(gateway_map={GATEWAY: "127.0.0.1"}, orig_dst=lambda fd: (GATEWAY, stuck.getsockname()[1]))
    lsock = _listener()
    addr = lsock.getsockname()
    relay.add_outbound_listener(lsock.detach())
    driver = Driver(relay)
    clients = [_client(addr) for _ in range(3)]
    accepted = [stuck.accept()[0] for _ in clients]
    clients[0].settimeout(0.5)
    with pytest.raises(TimeoutError):       # fill every buffer on the way, the relay's included
        while True:
            clients[0].send(b"x" * 65536)
    deadline = time.monotonic() + 5
    while relay.active < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert relay.active == 3
    driver.stop()
    relay.close()
    assert relay.fds() == ([], [])
    for c in clients[1:]:
        with pytest.raises(ConnectionResetError):
            c.recv(10)
    for s in clients + accepted + [stuck]:
        s.close()
    assert _fd_count() == before
