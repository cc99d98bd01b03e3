"""net/udp_relay.py over real loopback sockets, driven by a select() loop in the test (as the supervisor's).

No namespaces and no privileges: TPROXY is stood in for by an ordinary listener bound to 0.0.0.0:P with
IP_RECVORIGDSTADDR, which reports the local address each datagram was sent to; the client sends to
127.0.0.3:P (or .4), so recv_with_orig_dst's parsing is what tells the relay where it was going, and
`gateway_map` sends it to the echo server on 127.0.0.1:P. The "socket factory" binds the reply socket to
127.0.0.3:P with SO_REUSEADDR, no IP_TRANSPARENT needed since 127/8 is local. Being more specific than the
listener's wildcard, that socket then also receives the client's later datagrams to 127.0.0.3:P: the
relay must treat those as outbound too (the tests below go through both paths).
"""
from __future__ import annotations

import os
import select
import socket
import time

import pytest

from pinnace.net.udp_relay import IP_RECVORIGDSTADDR, UdpRelay, recv_with_orig_dst

DST_A, DST_B = "127.0.0.3", "127.0.0.4"       # "original destinations": local, so bindable unprivileged
GATEWAY_MAP = {DST_A: "127.0.0.1", DST_B: "127.0.0.1"}


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _udp(addr=("127.0.0.1", 0), *, reuse: bool = False, origdst: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if origdst:
        s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    s.bind(addr)
    s.setblocking(False)
    return s


class Echo:
    """A UDP server answering `prefix + datagram`, served by the test's loop; records who wrote to it."""

    def __init__(self, prefix: bytes = b"", addr=("127.0.0.1", 0), reuse: bool = False) -> None:
        self.sock = _udp(addr, reuse=reuse)
        self.port = self.sock.getsockname()[1]
        self.prefix = prefix
        self.peers: list[tuple[str, int]] = []

    def serve(self) -> None:
        data, peer = self.sock.recvfrom(65536)
        self.peers.append(peer)
        self.sock.sendto(self.prefix + data, peer)


class Loop:
    """fds() -> select() -> on_readable(), plus the test's servers; `recv` runs it until a client has a
    datagram."""

    def __init__(self, relay: UdpRelay, *servers: Echo) -> None:
        self.relay, self.servers = relay, {s.sock.fileno(): s for s in servers}

    def _round(self, extra: list[int], timeout: float) -> list[int]:
        r, _, _ = select.select(self.relay.fds() + list(self.servers) + extra, [], [], timeout)
        for fd in r:
            if fd in self.servers:
                self.servers[fd].serve()
            elif fd not in extra:
                self.relay.on_readable(fd)   # must never raise
        return [fd for fd in r if fd in extra]

    def recv(self, client: socket.socket, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._round([client.fileno()], left):
                return client.recvfrom(65536)
        raise AssertionError("no datagram reached the client")

    def run(self, seconds: float, until=lambda: False) -> None:
        deadline = time.monotonic() + seconds
        while not until() and (left := deadline - time.monotonic()) > 0:
            self._round([], min(left, 0.05))


class Outbound:
    """Echo servers on 127.0.0.1:P (prefix A:, B:, ...) and, per port, a listener on 0.0.0.0:P given to a
    relay; `make_socket` binds the reply socket to the original destination."""

    def __init__(self, n: int = 1, make_socket=None, **relay_kw) -> None:
        self.echos, self.made = [], []
        self.relay = UdpRelay(make_socket=make_socket or self.make_socket, gateway_map=GATEWAY_MAP, **relay_kw)
        for i in range(n):
            echo = Echo(b"%c:" % (65 + i), reuse=True)
            self.echos.append(echo)
            self.relay.add_outbound_listener(_udp(("0.0.0.0", echo.port), reuse=True, origdst=True).detach())
        self.loop = Loop(self.relay, *self.echos)

    def make_socket(self, orig):
        self.made.append(orig)
        return _udp(orig, reuse=True).detach()

    def close(self) -> None:
        self.relay.close()
        for e in self.echos:
            e.sock.close()


@pytest.fixture
def outbound():
    env = Outbound(2)
    yield env
    env.close()


def test_recv_with_orig_dst_parses_the_ancillary_destination():
    lsock = _udp(("0.0.0.0", 0), origdst=True)
    port = lsock.getsockname()[1]
    client = _udp()
    try:
        client.sendto(b"one", ("127.0.0.5", port))
        client.sendto(b"two", ("127.0.0.6", port))
        select.select([lsock], [], [], 5)
        assert recv_with_orig_dst(lsock) == (b"one", client.getsockname(), ("127.0.0.5", port))
        buf = memoryview(bytearray(65536))
        payload, peer, orig = recv_with_orig_dst(lsock, buf)
        assert (bytes(payload), peer, orig) == (b"two", client.getsockname(), ("127.0.0.6", port))
        with pytest.raises(BlockingIOError):
            recv_with_orig_dst(lsock)
        plain = _udp()   # without IP_RECVORIGDSTADDR the destination is unknown: an error, not a guess
        client.sendto(b"x", plain.getsockname())
        select.select([plain], [], [], 5)
        with pytest.raises(OSError, match="IP_ORIGDSTADDR"):
            recv_with_orig_dst(plain)
        plain.close()
    finally:
        lsock.close()
        client.close()


def test_outbound_round_trip_reply_comes_from_the_original_destination(outbound):
    echo = outbound.echos[0]
    client = _udp()
    try:
        for payload in (b"first", b"second", b"x" * 1400):
            client.sendto(payload, (DST_A, echo.port))
            assert outbound.loop.recv(client) == (b"A:" + payload, (DST_A, echo.port))
        assert outbound.relay.active == 1
        assert outbound.made == [(DST_A, echo.port)]                 # made lazily, once
        assert outbound.relay.stats["flows"] == 1
        assert outbound.relay.stats["datagrams"] == 6
        # the echo server saw the relay's host-side socket (one, for the flow), not the client
        assert len(set(echo.peers)) == 1 and echo.peers[0] != client.getsockname()
    finally:
        client.close()


def test_two_flows_from_one_client_socket_and_shared_reply_sockets(outbound):
    a, b = outbound.echos
    c1, c2 = _udp(), _udp()
    try:
        c1.sendto(b"to-a", (DST_A, a.port))
        c1.sendto(b"to-b", (DST_B, b.port))
        got = {outbound.loop.recv(c1), outbound.loop.recv(c1)}
        assert got == {(b"A:to-a", (DST_A, a.port)), (b"B:to-b", (DST_B, b.port))}
        assert outbound.relay.active == 2
        c2.sendto(b"me-too", (DST_A, a.port))
        assert outbound.loop.recv(c2) == (b"A:me-too", (DST_A, a.port))
        assert outbound.relay.active == 3
        assert sorted(outbound.made) == sorted([(DST_A, a.port), (DST_B, b.port)])   # one per destination
        n_fds = len(outbound.relay.fds())   # 2 listeners + 3 flows + 2 reply sockets
        assert n_fds == 7
        outbound.relay.tick(time.monotonic() + 3600)
        assert outbound.relay.active == 0
        assert len(outbound.relay.fds()) == 2   # the reply sockets went with their last flow
    finally:
        c1.close()
        c2.close()


def test_gateway_map_translates_only_mapped_destinations():
    echo = Echo(b"E:")
    made = []

    def orig_dst(fd):   # stands in for TPROXY: every datagram "was going to" dst
        sock = socket.socket(fileno=fd)
        try:
            data, client = sock.recvfrom(65536)
        finally:
            sock.detach()
        return data, client, dst

    def make_socket(orig):
        made.append(orig)
        return _udp().detach()   # 10.0.2.2 is not bindable without IP_TRANSPARENT: any source will do here

    relay = UdpRelay(make_socket=make_socket, gateway_map={"10.0.2.2": "127.0.0.1"}, orig_dst=orig_dst)
    lsock = _udp()
    laddr = lsock.getsockname()
    relay.add_outbound_listener(lsock.detach())
    client = _udp()
    loop = Loop(relay, echo)
    try:
        for dst in (("10.0.2.2", echo.port), ("127.0.0.1", echo.port)):   # mapped, then as is
            client.sendto(b"hi", laddr)
            assert loop.recv(client)[0] == b"E:hi"
        assert made == [("10.0.2.2", echo.port), ("127.0.0.1", echo.port)]
        assert relay.active == 2 and len(echo.peers) == 2
    finally:
        relay.close()
        client.close()
        echo.sock.close()


def _forward(service: Echo, connect_log: list):
    def connect(client):
        s = _udp()                  # the factory would bind it transparently to `client`
        connect_log.append((client, s.getsockname()))
        return s.detach()           # unconnected: the relay connects it to the target

    relay = UdpRelay()
    host = _udp()
    haddr = host.getsockname()
    relay.add_forward(host.detach(), ("127.0.0.1", service.port), connect)
    return relay, haddr


def test_published_port_round_trip_per_client():
    service = Echo()
    made: list = []
    relay, haddr = _forward(service, made)
    loop = Loop(relay, service)
    a, b = _udp(), _udp()
    try:
        for _ in range(2):
            a.sendto(b"from-a", haddr)
            b.sendto(b"from-b", haddr)
            assert loop.recv(a) == (b"from-a", haddr)
            assert loop.recv(b) == (b"from-b", haddr)
        assert [c for c, _ in made] == [a.getsockname(), b.getsockname()]   # one socket per client
        assert relay.active == 2
        # the service saw each client's own container-side socket, each time the same one
        assert service.peers == [made[0][1], made[1][1]] * 2
    finally:
        relay.close()
        a.close()
        b.close()
        service.sock.close()


def test_idle_flows_expire_and_traffic_keeps_a_flow_alive():
    env = Outbound(1, idle_timeout=60.0)
    echo = env.echos[0]
    c1, c2 = _udp(), _udp()
    try:
        assert env.relay.tick() is None
        c1.sendto(b"1", (DST_A, echo.port))
        env.loop.recv(c1)
        left = env.relay.tick(time.monotonic())
        assert 59.0 < left <= 60.0 and env.relay.active == 1
        assert env.relay.tick(time.monotonic() + 61) is None
        assert env.relay.active == 0 and env.relay.stats["expired"] == 1
        assert len(env.relay.fds()) == 1    # flow and reply socket closed: only the listener is left

        env.relay.idle_timeout = 0.6
        c1.sendto(b"1", (DST_A, echo.port))
        env.loop.recv(c1)
        c2.sendto(b"2", (DST_A, echo.port))
        env.loop.recv(c2)
        time.sleep(0.4)
        c1.sendto(b"1", (DST_A, echo.port))   # c1's flow is younger than c2's now
        env.loop.recv(c1)
        time.sleep(0.4)
        assert env.relay.tick() is not None
        assert env.relay.active == 1
        c1.sendto(b"1", (DST_A, echo.port))
        env.loop.recv(c1)
        assert env.relay.stats["flows"] == 3  # c1's flow survived: its datagram did not open a new one
    finally:
        c1.close()
        c2.close()
        env.close()


def test_flow_cap_drops_the_least_recently_active():
    env = Outbound(1, max_flows=2)
    echo = env.echos[0]
    clients = [_udp() for _ in range(3)]

    def talk(i):
        clients[i].sendto(b"%d" % i, (DST_A, echo.port))
        assert env.loop.recv(clients[i])[0] == b"A:%d" % i

    try:
        for i in (0, 1, 2, 1):
            talk(i)
        assert env.relay.active == 2 and env.relay.stats["evicted"] == 1 and env.relay.stats["flows"] == 3
        talk(0)    # back, as a new flow: 2 is now the least recently active, 1 was used after it
        talk(1)
        assert env.relay.stats["flows"] == 4 and env.relay.stats["evicted"] == 2
    finally:
        for c in clients:
            c.close()
        env.close()


def test_port_unreachable_drops_the_flow_quietly():
    closed = _udp()
    dead_port = closed.getsockname()[1]
    closed.close()

    def orig_dst(fd):
        sock = socket.socket(fileno=fd)
        try:
            data, client = sock.recvfrom(65536)
        finally:
            sock.detach()
        return data, client, ("127.0.0.1", dead_port)

    relay = UdpRelay(orig_dst=orig_dst)
    lsock = _udp()
    laddr = lsock.getsockname()
    relay.add_outbound_listener(lsock.detach())
    service = Echo()
    fwd, haddr = _forward(service, [])
    service.sock.close()   # the published service is not running: its port is closed too
    client = _udp()
    try:
        client.sendto(b"anyone?", laddr)
        client.sendto(b"anyone?", haddr)
        loop, floop = Loop(relay), Loop(fwd)
        loop.run(5, until=lambda: relay.stats["refused"])
        floop.run(5, until=lambda: fwd.stats["refused"])
        for r in (relay, fwd):
            assert r.active == 0 and r.stats["refused"] == 1 and r.stats["failed"] == 0
    finally:
        relay.close()
        fwd.close()
        client.close()


def test_failing_callbacks_cost_the_datagram_not_the_loop():
    before = _fd_count()
    rp, wp = os.pipe()
    bad_factories = [RuntimeError("factory down"), -1, 10_000, rp, "not an fd"]

    def make_socket(orig):
        bad = bad_factories.pop(0)
        if isinstance(bad, Exception):
            raise bad
        return bad

    env = Outbound(1, make_socket=make_socket)
    echo = env.echos[0]
    client = _udp()
    connects = []

    def connect(c):
        connects.append(c)
        raise OSError("factory gone")

    host = _udp()
    env.relay.add_forward(host.fileno(), ("127.0.0.1", echo.port), connect)
    haddr = host.getsockname()
    host.detach()
    try:
        for _ in range(5):
            client.sendto(b"x", (DST_A, echo.port))
            env.loop.run(0.2)
        client.sendto(b"y", haddr)
        env.loop.run(0.2)
        assert select.select([client], [], [], 0)[0] == []   # no reply could be sent
        assert len(echo.peers) == 5 and bad_factories == [] and len(connects) == 1
        assert env.relay.stats["failed"] == 6 and "factory gone" in env.relay.stats["last_error"]
    finally:
        client.close()
        env.close()
        os.close(wp)
    assert _fd_count() == before    # the pipe's read end, handed over as a "socket", was closed too


def test_close_closes_every_fd():
    before = _fd_count()
    env = Outbound(2)
    service = Echo()
    made: list = []
    fwd, haddr = _forward(service, made)   # a second relay, for published ports: its close() is checked too
    clients = [_udp() for _ in range(3)]
    try:
        for i, c in enumerate(clients):
            echo = env.echos[i % 2]
            c.sendto(b"q", ((DST_A, DST_B)[i % 2], echo.port))
            env.loop.recv(c)
            c.sendto(b"q", haddr)
            Loop(fwd, service).recv(c)
        assert env.relay.active == 3 and fwd.active == 3 and len(env.made) == 2
        assert _fd_count() > before + 10
    finally:
        env.close()
        fwd.close()
        service.sock.close()
        for c in clients:
            c.close()
    assert env.relay.fds() == [] and env.relay.active == 0 and fwd.fds() == []
    assert _fd_count() == before
