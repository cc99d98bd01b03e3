"""The UDP half of user-mode networking (DESIGN.md §6): datagrams relayed between the container's network
namespace and the host's, by the per-container supervisor's select loop, like net/relay.py does for TCP.

- outbound: in the container's namespace, nf_tables TPROXY hands every outbound datagram to a transparent
  listener with IP_RECVORIGDSTADDR: `recvmsg` gives the client and the original destination. Per flow
  (client, destination) the relay sends from a host-side socket connected to the destination (after
  `gateway_map`: the gateway means the host's loopback). Replies must reach the client *from* the original
  destination, which only a socket in the container's namespace transparently bound to it can do:
  `make_socket(orig)` (the socket factory) makes one on the first reply, shared by that destination's flows.
- published ports (`add_forward`): per client of a host-side socket, `connect(client)` makes a socket in the
  container's namespace (bound to the client's address: the service sees the real client), which the
  relay connects to the target; what comes back on it goes to the client through the host-side socket.

A flow ends after `idle_timeout` s without a datagram either way (`tick()`), on an error of its socket
(ECONNREFUSED: ICMP port unreachable), or when MAX_FLOWS are open and a new one needs room (the least
recently active goes). A datagram that cannot be sent at once is dropped, as a full queue would drop it:
nothing waits, blocks, or raises into the loop; `stats` counts the losses. IPv4 only on the outbound
path: IPv6 TPROXY would need IPV6_ORIGDSTADDR parsing (recv_with_orig_dst raises OSError instead).
The caller's loop: `select(fds(), [], [], tick())` (poll() past fd 1023), then `on_readable(fd)` each.
`_socket`, not `socket`, and no `typing`: the supervisor's RSS budget (see net/relay.py).
"""
from __future__ import annotations

import _socket
import errno
import os
import time

TYPE_CHECKING = False
IP_RECVORIGDSTADDR = IP_ORIGDSTADDR = 20   # linux/in.h, level SOL_IP (the option and the cmsg type)
MAX_FLOWS = 4096
BUFSIZE = 65536              # the largest IPv4 UDP payload (65507) fits: no truncation
_BATCH = 32                  # datagrams read per readiness: fewer select() rounds under load
_CMSG_SPACE = _socket.CMSG_SPACE(16)   # one sockaddr_in

Address = tuple[str, int]
if TYPE_CHECKING:  # `typing` costs a supervisor ~2 MB of RSS
    from collections.abc import Callable
    OrigDst = Callable[[int], tuple[bytes, Address, Address]]   # listener fd -> (payload, client, orig)
    Factory = Callable[[Address], int]                          # address -> new socket fd (container side)


def recv_with_orig_dst(sock: _socket.socket, buf: memoryview | None = None) -> tuple[bytes, Address, Address]:
    """One datagram from an IPv4 socket with IP_RECVORIGDSTADDR: (payload, client, original destination).
    With `buf`, the payload is a view of it (no allocation per datagram). OSError without the ancillary
    data (option not set, or not IPv4); BlockingIOError when nothing is queued."""
    if buf is None:
        payload, anc, _, client = sock.recvmsg(BUFSIZE, _CMSG_SPACE)
    else:
        n, anc, _, client = sock.recvmsg_into([buf], _CMSG_SPACE)
        payload = buf[:n]
    for level, kind, data in anc:   # data: a sockaddr_in, family (host order), port (big-endian), address
        if level == _socket.SOL_IP and kind == IP_ORIGDSTADDR and len(data) >= 8:
            return payload, client[:2], (_socket.inet_ntop(_socket.AF_INET, data[4:8]),
                                         int.from_bytes(data[2:4], "big"))
    raise OSError(errno.ENOMSG, "datagram without IP_ORIGDSTADDR (IPv4 socket with IP_RECVORIGDSTADDR needed)")


def _host_socket(dest: Address) -> int:
    return _socket.socket(_socket.AF_INET6 if ":" in dest[0] else _socket.AF_INET,
                          _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC).detach()


class _Flow:
    __slots__ = ("key", "sock", "fd", "peer", "out", "orig", "last")

    def __init__(self, key: tuple, sock: _socket.socket, peer: Address, out: _socket.socket | None,
                 orig: Address | None, now: float) -> None:
        self.key, self.sock, self.fd = key, sock, sock.fileno()
        self.peer = peer            # where replies go: the container's client, or the published port's client
        self.out = out              # the socket they leave by (outbound: the shared reply socket, once made)
        self.orig = orig            # outbound: the original destination (the reply socket's key); forward: None
        self.last = now             # time of the last datagram, either way


class UdpRelay:
    """UDP relay for one container. Owns every fd given to it or made by a callback; close() closes all."""

    def __init__(self, *, make_socket: Factory | None = None, gateway_map: dict[str, str] | None = None,
                 idle_timeout: float = 60.0, orig_dst: OrigDst | None = None,
                 max_flows: int = MAX_FLOWS) -> None:
        """`make_socket(orig)`: a UDP socket in the container's namespace, transparently bound to `orig`;
        `gateway_map`: ip -> ip to send to instead; `orig_dst(fd)`: replaces recv_with_orig_dst (tests)."""
        self._make_socket = make_socket
        self._gateway = dict(gateway_map or {})
        self.idle_timeout = float(idle_timeout)
        self.max_flows = max(1, int(max_flows))
        self._orig_dst = orig_dst
        self._outbound: dict[int, _socket.socket] = {}
        self._forwards: dict[int, tuple[_socket.socket, Address, Factory]] = {}
        self._flows: dict[tuple, _Flow] = {}      # least recently active first (see _touch)
        self._by_fd: dict[int, _Flow] = {}
        self._replies: dict[Address, list] = {}   # original destination -> [reply socket, flows using it]
        self._reply_fds: dict[int, Address] = {}
        self._buf: memoryview | None = None      # shared receive buffer, while a flow is open
        self.stats = {"flows": 0, "datagrams": 0, "dropped": 0, "refused": 0, "expired": 0, "evicted": 0,
                      "failed": 0, "last_error": ""}

    def add_outbound_listener(self, fd: int) -> None:
        """The transparent listener made in the container's namespace, target of the TPROXY rule."""
        self._outbound[fd] = self._adopt(fd)

    def add_forward(self, listen_fd: int, target: Address, connect: Factory) -> None:
        """A published port: datagrams to `listen_fd` (host side) go to `target` (literal ip, port, as seen
        in the container's namespace) from a socket `connect(client)` returns, one per client."""
        _socket.inet_pton(_socket.AF_INET6 if ":" in target[0] else _socket.AF_INET, target[0])
        self._forwards[listen_fd] = (self._adopt(listen_fd), (target[0], int(target[1])), connect)

    @staticmethod
    def _adopt(fd: int) -> _socket.socket:
        sock = _socket.socket(fileno=fd)
        sock.setblocking(False)
        return sock

    @property
    def active(self) -> int:   # open flows
        return len(self._flows)

    def fds(self) -> list[int]:
        """The fds to watch for readability this round (UDP never waits for writability)."""
        return [*self._outbound, *self._forwards, *self._by_fd, *self._reply_fds]

    def on_readable(self, fd: int) -> None:
        try:
            if fd in self._by_fd:
                self._from_flow(self._by_fd[fd])
            else:
                self._ingress(fd)
        except Exception as e:  # noqa: BLE001 - a bug here must cost datagrams, not the supervisor's loop
            self._note(f"udp relay: {e!r}")

    def tick(self, now: float | None = None) -> float | None:
        """Expire idle flows; seconds until the next may expire, None when no flow is open."""
        now = time.monotonic() if now is None else now
        while self._flows:
            f = next(iter(self._flows.values()))   # the least recently active
            left = f.last + self.idle_timeout - now
            if left > 0:
                return left
            self._drop(f)
            self.stats["expired"] += 1
        return None

    def close(self) -> None:
        """Close every flow, reply socket and listener."""
        for f in list(self._flows.values()):
            self._drop(f)   # and with the last flows, the reply sockets
        for sock in [*self._outbound.values(), *(s for s, _, _ in self._forwards.values())]:
            sock.close()
        self._outbound, self._forwards = {}, {}

    def _ingress(self, fd: int) -> None:
        """Datagrams that open or feed flows: from the container (the TPROXY listener, or a reply socket,
        which the kernel may hand the container's datagrams to its address) or to a published port."""
        buf, now = self._buffer(), time.monotonic()
        fwd = self._forwards.get(fd)
        for _ in range(_BATCH):
            dst = self._reply_fds.get(fd)
            try:
                if fd in self._outbound:
                    payload, client, dst = (self._orig_dst(fd) if self._orig_dst
                                            else recv_with_orig_dst(self._outbound[fd], buf))
                elif fwd is not None or dst is not None:
                    n, client = (fwd[0] if fwd else self._replies[dst][0]).recvfrom_into(buf)
                    payload, client = buf[:n], client[:2]
                else:
                    return   # a reply socket closed by an eviction during this batch
            except BlockingIOError:
                return
            except Exception as e:  # noqa: BLE001 - OSError, or the test hook's failure: drop the datagram
                self._note(f"receive: {e}")
                return   # what is still queued keeps the fd readable: the next round reads it
            key = (fd, client) if fwd else (client, dst)
            f = self._flows.get(key) or (
                self._open(key, client, fwd[1], now, out=fwd[0], factory=fwd[2]) if fwd
                else self._open(key, client, (self._gateway.get(dst[0], dst[0]), dst[1]), now, orig=dst))
            if f is None:
                continue
            self._touch(f, now)
            try:
                f.sock.send(payload)
                self.stats["datagrams"] += 1
            except BlockingIOError:
                self.stats["dropped"] += 1
            except OSError as e:
                self._fail(f, e)

    def _from_flow(self, f: _Flow) -> None:
        """Replies: from the destination (outbound) or from the container's service (forward)."""
        buf, now = self._buffer(), time.monotonic()
        for _ in range(_BATCH):
            try:
                n = f.sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(f, e)
                return
            self._touch(f, now)
            out = f.out or self._reply_socket(f)
            if out is None:
                continue  # no way back to the client: counted by _reply_socket
            try:
                out.sendto(buf[:n], f.peer)
                self.stats["datagrams"] += 1
            except BlockingIOError:
                self.stats["dropped"] += 1
            except OSError as e:   # the way back failed, not this flow's socket: keep the flow
                self._note(f"reply to {f.peer[0]}:{f.peer[1]}: {e}")

    def _open(self, key: tuple, peer: Address, dest: Address, now: float, *, out: _socket.socket | None = None,
              orig: Address | None = None, factory: Factory | None = None) -> _Flow | None:
        """A flow whose socket, connected to `dest`, is made here (outbound, host side) or by `factory`
        (forward, container side). None if that failed: the datagram is lost, the next one retries."""
        while len(self._flows) >= self.max_flows:
            self._drop(next(iter(self._flows.values())))
            self.stats["evicted"] += 1
        addr = dest if factory is None else peer
        sock = self._from_factory(factory or _host_socket, addr, f"socket for {addr[0]}:{addr[1]}")
        if sock is None:
            return None
        try:   # UDP connect is a route lookup, it never blocks; a factory may have connected it already
            sock.connect(dest)
        except OSError as e:
            sock.close()
            self._note(f"connect {dest[0]}:{dest[1]}: {e}")
            return None
        f = self._flows[key] = self._by_fd[sock.fileno()] = _Flow(key, sock, peer, out, orig, now)
        self.stats["flows"] += 1
        return f

    def _reply_socket(self, f: _Flow) -> _socket.socket | None:
        """The socket replies to an outbound flow leave by, bound to its original destination."""
        entry = self._replies.get(f.orig)
        if entry is None:
            if self._make_socket is None:
                self._note("reply dropped: no socket factory (make_socket)")
                return None
            sock = self._from_factory(self._make_socket, f.orig, f"reply socket for {f.orig[0]}:{f.orig[1]}")
            if sock is None:
                return None
            entry = self._replies[f.orig] = [sock, 0]
            self._reply_fds[sock.fileno()] = f.orig
        entry[1] += 1
        f.out = entry[0]
        return f.out

    def _from_factory(self, factory: Factory, addr: Address, what: str) -> _socket.socket | None:
        """Call a socket factory (caller code: anything may go wrong, EMFILE too) and adopt its fd."""
        fd = -1
        try:
            fd = factory(addr)
            return self._adopt(fd)
        except Exception as e:  # noqa: BLE001 - the datagram is dropped, the loop goes on
            self._note(f"{what}: {e!r}")
            if isinstance(fd, int) and fd >= 0:   # returned, but not a socket: ours to close all the same
                try:
                    os.close(fd)
                except OSError:
                    pass
            return None

    def _touch(self, f: _Flow, now: float) -> None:
        """A datagram went through `f`: to the back of the expiry order (once per batch: same `now`)."""
        if f.last != now:
            f.last = now
            del self._flows[f.key]
            self._flows[f.key] = f

    def _fail(self, f: _Flow, e: OSError) -> None:
        if e.errno == errno.ECONNREFUSED:   # ICMP port unreachable: nobody there, a normal ending
            self.stats["refused"] += 1
        else:
            self._note(f"flow {f.peer[0]}:{f.peer[1]}: {e}")
        self._drop(f)

    def _drop(self, f: _Flow) -> None:
        if self._flows.pop(f.key, None) is None:
            return   # already dropped
        self._by_fd.pop(f.fd, None)
        f.sock.close()
        if f.orig is not None and f.out is not None:   # an outbound flow that held the reply socket
            entry = self._replies[f.orig]
            entry[1] -= 1
            if entry[1] == 0:
                del self._replies[f.orig]
                self._reply_fds.pop(entry[0].fileno(), None)
                entry[0].close()
        if not self._flows:
            self._buf = None   # back to the idle footprint

    def _buffer(self) -> memoryview:
        self._buf = self._buf or memoryview(bytearray(BUFSIZE))
        return self._buf

    def _note(self, message: str) -> None:
        self.stats["failed"] += 1
        self.stats["last_error"] = message
