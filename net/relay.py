"""The byte relay of user-mode networking (DESIGN.md §6).

The kernel of the container's network namespace terminates the container's TCP; this module only copies
bytes between two kernel sockets, so no packet-level TCP stack runs in Python:

- outbound: a listening socket created inside the container's namespace receives every outbound connection
  (an nf_tables `redirect` rule sends it there); the relay, in the host namespace, accepts, reads the
  original destination (`SO_ORIGINAL_DST`), maps the gateway address to the host's loopback and connects
  from the host namespace;
- published ports (`add_forward`): the reverse, a listening socket in the host namespace and, per
  connection, a socket created inside the container's namespace (by `connect(peer)`, which may bind it to
  the client's address with IP_TRANSPARENT so the service sees the real client) that the relay connects.

It is driven by the caller's single-threaded loop: non-blocking sockets, no threads, no timers:

    while relay.active or ...:
        r, w = relay.fds()
        r, w, _ = select.select(r, w, [], timeout)   # poll() if fds may pass 1023
        for fd in r: relay.on_readable(fd)
        for fd in w: relay.on_writable(fd)

Copying is recv_into/send through one shared 256 KiB buffer: only bytes the destination did not take are
copied out of it, so memory follows the backlog, and the buffer is dropped when no connection is open.
`os.splice` through a pipe per direction was measured too: slower on loopback (1 GiB, 2 CPUs: median ~17
against ~22 Gbit/s) and 4 more fds per connection, so it is not used. Half-close is propagated (EOF on one
side -> shutdown(SHUT_WR) on the other once the bytes before it are delivered); an error or reset on either
side resets both (SO_LINGER 0), so a refused connect reaches the client as a reset, as it would without the
relay. SIGPIPE must be ignored (Python's default). Imports `_socket`, not `socket` (~0.3-1.1 MB of RSS
for its enums and selectors), and not `typing` (~2 MB).
"""
from __future__ import annotations

import _socket
import errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` costs a supervisor ~2 MB of RSS
    from collections.abc import Callable

SO_ORIGINAL_DST = 80          # linux/netfilter_ipv4.h, level SOL_IP
IP6T_SO_ORIGINAL_DST = 80     # linux/netfilter_ipv6/ip6_tables.h, level SOL_IPV6
_SOL_IPV6 = 41
CHUNK = 256 * 1024
_ACCEPT_BATCH = 64            # connections accepted per readiness of a listener
_READ_ROUNDS = 4              # reads per readiness of a socket: fewer select() calls under load
_EMPTY = memoryview(b"")
# struct linger {l_onoff=1, l_linger=0}: close() sends RST
_LINGER_RESET = (1).to_bytes(4, sys.byteorder) + (0).to_bytes(4, sys.byteorder)

Address = tuple[str, int]
if TYPE_CHECKING:
    OrigDst = Callable[[int], Address]     # accepted socket's fd -> (ip, port) it was sent to
    Connector = Callable[[Address], int]   # client's (ip, port) -> new non-blocking unconnected socket fd


def original_dst(fd: int) -> Address:
    """Where a connection redirected by nf_tables was going: (ip, port). OSError (ENOENT) if it was not
    redirected."""
    sock = _socket.socket(fileno=fd)
    try:
        if sock.family == _socket.AF_INET6:
            try:
                raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)    # sockaddr_in6
                return _socket.inet_ntop(_socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
            except OSError:
                pass  # an IPv4 connection accepted on a dual-stack socket: try the IPv4 table
        raw = sock.getsockopt(_socket.SOL_IP, SO_ORIGINAL_DST, 16)            # sockaddr_in
        return _socket.inet_ntop(_socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
    finally:
        sock.detach()


class _Flow:
    """One direction of a connection: bytes read from `src`, not yet written to `dst`."""
    __slots__ = ("src", "dst", "src_fd", "dst_fd", "buf", "eof", "done")

    def __init__(self, src: _socket.socket, dst: _socket.socket) -> None:
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.buf = _EMPTY                         # read from src, not yet written to dst
        self.eof = False                          # src sent FIN
        self.done = False                         # ... and dst got shutdown(SHUT_WR)


class _Conn:
    __slots__ = ("a", "b", "up", "down", "connecting", "dest")

    def __init__(self, a: _socket.socket, b: _socket.socket, dest: Address) -> None:
        self.a, self.b = a, b                     # a: accepted side, b: side the relay connected
        self.dest = dest
        self.up, self.down = _Flow(a, b), _Flow(b, a)
        self.connecting = True


class Relay:
    """TCP relay for one container. Owns every fd given to it; `close()` closes them all."""

    def __init__(self, *, gateway_map: dict[str, str] | None = None, orig_dst: OrigDst | None = None,
                 dest_map: dict[Address, Address] | None = None) -> None:
        """`gateway_map`: original destination ip -> ip to connect to instead (the gateway address ->
        127.0.0.1). `dest_map`: the same for one (ip, port), checked first (the namespace's DNS address
        over TCP -> the host's resolver). `orig_dst`: replaces the SO_ORIGINAL_DST lookup (tests)."""
        self._gateway = dict(gateway_map or {})
        self._dest = dict(dest_map or {})
        self._orig_dst = orig_dst or original_dst
        self._listeners: dict[int, tuple[_socket.socket, Address | None, Connector | None]] = {}
        self._conns: dict[int, _Conn] = {}        # fd of either socket -> connection
        self._scratch: memoryview | None = None  # while a connection is open
        self.stats = {"accepted": 0, "failed": 0, "last_error": ""}

    # -- setup ------------------------------------------------------------------------------------------
    def add_outbound_listener(self, fd: int) -> None:
        """A listening TCP socket created in the container's namespace, target of the redirect rule."""
        self._listeners[fd] = (self._adopt(fd), None, None)

    def add_forward(self, listen_fd: int, target: Address, connect: Connector) -> None:
        """A published port: connections accepted on `listen_fd` (host namespace) go to `target`
        (literal ip, port, as seen in the container's namespace) through a socket `connect(peer)` returns."""
        _socket.inet_pton(_socket.AF_INET6 if ":" in target[0] else _socket.AF_INET, target[0])
        self._listeners[listen_fd] = (self._adopt(listen_fd), target, connect)

    @staticmethod
    def _adopt(fd: int) -> _socket.socket:
        sock = _socket.socket(fileno=fd)
        sock.setblocking(False)
        return sock

    # -- the loop's view --------------------------------------------------------------------------------
    @property
    def active(self) -> int:
        """Number of open relayed connections."""
        return len(self._conns) // 2

    def fds(self) -> tuple[list[int], list[int]]:
        """(fds to watch for readability, fds to watch for writability), for this round of the loop."""
        r, w = list(self._listeners), []
        for fd, c in self._conns.items():
            if fd != c.a.fileno():
                continue  # each connection once
            if c.connecting:
                w.append(c.b.fileno())
                continue
            for f in (c.up, c.down):
                if f.buf:
                    w.append(f.dst_fd)   # backpressure: src is not read until dst took the backlog
                elif not f.eof:
                    r.append(f.src_fd)
        return r, w

    def on_readable(self, fd: int) -> None:
        if fd in self._listeners:
            self._accept(fd)
            return
        c = self._conns.get(fd)
        if c is not None and not c.connecting:
            self._read(c, c.up if fd == c.up.src_fd else c.down)

    def on_writable(self, fd: int) -> None:
        c = self._conns.get(fd)
        if c is None:
            return
        if c.connecting:
            if fd == c.b.fileno():
                self._connected(c)
            return
        self._flush(c, c.up if fd == c.up.dst_fd else c.down)

    def close(self) -> None:
        """Close every listener and connection (connections are reset)."""
        for c in list(self._conns.values()):
            self._drop(c, reset=True)
        for sock, _, _ in self._listeners.values():
            sock.close()
        self._listeners.clear()

    # -- connections ------------------------------------------------------------------------------------
    def _accept(self, lfd: int) -> None:
        lsock, target, connect = self._listeners[lfd]
        for _ in range(_ACCEPT_BATCH):
            try:
                fd, peer = lsock._accept()
            except BlockingIOError:
                return
            except OSError as e:
                # ECONNABORTED: that client is gone, try the next; EMFILE and the like: try next round
                self._note(f"accept: {e}")
                if e.errno == errno.ECONNABORTED:
                    continue
                return
            a = _socket.socket(lsock.family, _socket.SOCK_STREAM, 0, fd)
            self.stats["accepted"] += 1
            bfd = -1
            try:
                a.setblocking(False)
                if target is None:
                    host, port = self._orig_dst(fd)
                    host, port = self._dest.get((host, port)) or (self._gateway.get(host, host), port)
                    b = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET,
                                       _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
                else:
                    (host, port), bfd = target, connect(peer[:2])
                    b = _socket.socket(fileno=bfd)
                    bfd = -1
                    b.setblocking(False)
            except Exception as e:  # noqa: BLE001 - a connector is caller code; the client must not hang
                self._note(f"connection from {peer[0]}:{peer[1]}: {e}")
                if bfd >= 0:
                    os.close(bfd)  # not adopted: _socket.socket() or setblocking() failed
                self._reset(a)
                continue
            c = _Conn(a, b, (host, port))
            if self._scratch is None:
                self._scratch = memoryview(bytearray(CHUNK))
            self._conns[a.fileno()] = self._conns[b.fileno()] = c
            err = b.connect_ex((host, port))
            if err == 0:
                self._connected(c)
            elif err != errno.EINPROGRESS:
                self._note(f"connect {host}:{port}: {os.strerror(err)}")
                self._drop(c, reset=True)

    def _connected(self, c: _Conn) -> None:
        err = c.b.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if err:
            self._note(f"connect {c.dest[0]}:{c.dest[1]}: {os.strerror(err)}")
            self._drop(c, reset=True)
            return
        try:
            c.b.getpeername()
        except OSError:
            return  # a stale readiness (fd number reused within one round): still connecting
        c.connecting = False
        for s in (c.a, c.b):  # the relay must not add Nagle delays the endpoints did not ask for
            try:
                s.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            except OSError:
                pass
        # bytes (or a FIN) the client sent while the connect was in flight are read by the next round

    def _read(self, c: _Conn, f: _Flow) -> None:
        scratch = self._scratch
        for _ in range(_READ_ROUNDS):
            try:
                n = f.src.recv_into(scratch)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(c, e)
                return
            if n == 0:
                f.eof = True
                self._flush(c, f)
                return
            f.buf = scratch[:n]
            if not self._flush(c, f) or f.buf:
                return

    def _flush(self, c: _Conn, f: _Flow) -> bool:
        """Write what `f` holds to its dst; on EOF, pass the half-close on. False if `c` was dropped."""
        while f.buf:
            try:
                n = f.dst.send(f.buf)
            except BlockingIOError:
                if f.buf.obj is self._scratch.obj:
                    f.buf = memoryview(bytes(f.buf))  # the shared buffer is about to be reused
                return True
            except OSError as e:
                self._fail(c, e)
                return False
            f.buf = f.buf[n:]
        if f.eof and not f.done:
            f.done = True
            try:
                f.dst.shutdown(_socket.SHUT_WR)
            except OSError:
                pass  # the peer is already gone: its own read reports that
            if c.up.done and c.down.done:
                self._drop(c, reset=False)
                return False
        return True

    def _fail(self, c: _Conn, e: OSError) -> None:
        if e.errno not in (errno.ECONNRESET, errno.EPIPE):
            self._note(f"relay: {e}")
        self._drop(c, reset=True)

    def _drop(self, c: _Conn, *, reset: bool) -> None:
        c.up.buf = c.down.buf = _EMPTY   # views of the shared buffer must go before it can be dropped
        for s in (c.a, c.b):
            self._conns.pop(s.fileno(), None)
            if reset:
                self._reset(s)
            else:
                s.close()
        if not self._conns:
            self._scratch = None  # back to the idle footprint

    @staticmethod
    def _reset(sock: _socket.socket) -> None:
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        sock.close()

    def _note(self, message: str) -> None:
        self.stats["failed"] += 1
        self.stats["last_error"] = message
