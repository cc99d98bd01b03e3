"""net/dns.py over real UDP sockets on 127.0.0.1.

The server is driven by a select() loop in a thread, as the supervisor's loop drives it; the upstreams are
small DNS servers of this file (one answering a fixed A record, one that never answers, a closed port) and
the client sends DNS queries built here byte by byte.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

import pytest

from pinnace.net.dns import TTL, DnsServer, host_resolvers

UPSTREAM_ADDR = "192.0.2.1"
LOCAL = {"web": ["10.88.0.5", "10.88.0.6"], "db.net1": ["10.88.0.7"], "gone": []}


# -- DNS bytes ---------------------------------------------------------------------------------------------
def encode_name(name: str) -> bytes:
    return b"".join(bytes((len(x),)) + x.encode() for x in name.rstrip(".").split(".")) + b"\0"


OPT = b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)


def build_query(qid: int, name: str, qtype: int = 1, *, edns: bool = False, flags: int = 0x0100) -> bytes:
    head = struct.pack("!6H", qid, flags, 1, 0, 0, 1 if edns else 0)
    return head + encode_name(name) + struct.pack("!HH", qtype, 1) + (OPT if edns else b"")


def read_name(buf: bytes, off: int) -> tuple[str, int]:
    labels, end = [], None
    while buf[off]:
        if buf[off] >= 0xC0:
            end = end or off + 2
            off = (buf[off] & 0x3F) << 8 | buf[off + 1]
            continue
        labels.append(buf[off + 1:off + 1 + buf[off]].decode())
        off += buf[off] + 1
    return ".".join(labels), end or off + 1


def parse(reply: bytes) -> dict:
    qid, flags, qd, an, ns, ar = struct.unpack_from("!6H", reply)
    qname, off = read_name(reply, 12)
    qtype = struct.unpack_from("!H", reply, off)[0]
    off += 4
    answers = []
    for i in range(an + ns + ar):
        name, off = read_name(reply, off)
        rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", reply, off)
        rdata = reply[off + 10:off + 10 + rdlen]
        off += 10 + rdlen
        if i < an:
            if rtype == 1:
                rdata = socket.inet_ntoa(rdata)
            elif rtype == 12:
                rdata = read_name(reply, off - rdlen)[0]
            answers.append((name, rtype, ttl, rdata))
    return {"id": qid, "rcode": flags & 0xF, "aa": bool(flags & 0x0400), "qr": bool(flags & 0x8000),
            "rd": bool(flags & 0x0100), "qname": qname, "qtype": qtype, "answers": answers,
            "additional": ar, "size": len(reply)}


def upstream_reply(query: bytes) -> bytes:
    """A fixed A record for any name; names starting with "big" get ~3000 bytes of TXT records too."""
    qname, off = read_name(query, 12)
    question = query[12:off + 4]
    rrs = [b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton(UPSTREAM_ADDR)]
    if qname.startswith("big"):
        rrs += [b"\xc0\x0c" + struct.pack("!HHIHB", 16, 1, 300, 201, 200) + b"x" * 200] * 15
    return struct.pack("!6H", query[0] << 8 | query[1], 0x8180, 1, len(rrs), 0, 0) + question + b"".join(rrs)


# -- the pieces around the server --------------------------------------------------------------------------
def udp(bind: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bind:
        s.bind(("127.0.0.1", 0))
    return s


class Upstream:
    """A DNS server on 127.0.0.1 answering every query with `upstream_reply` (or never, when silent)."""

    def __init__(self, silent: bool = False) -> None:
        self.sock = udp()
        self.addr = self.sock.getsockname()
        self.queries: list[bytes] = []
        self.silent = silent
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            self.queries.append(data)
            if not self.silent:
                try:
                    self.sock.sendto(upstream_reply(data), peer)
                except (IndexError, UnicodeDecodeError):
                    pass  # not a query this upstream understands

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's recvfrom (and says ENOTCONN for UDP)
        except OSError:
            pass
        self.sock.close()


def dead_addr() -> tuple[str, int]:
    s = udp()
    addr = s.getsockname()
    s.close()
    return addr


class Running:
    """A DnsServer on a fresh 127.0.0.1 port, driven by a select() loop in a thread."""

    def __init__(self, upstreams, lookup=LOCAL.get, **kwargs) -> None:
        sock = udp()
        self.addr = sock.getsockname()
        self.server = DnsServer([sock.detach()], upstreams, lookup, **kwargs)
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            timeout = self.server.tick()
            r, _, _ = select.select(self.server.fds(), [], [], min(0.02, timeout if timeout is not None else 1))
            for fd in r:
                self.server.on_readable(fd)

    def ask(self, packet: bytes, timeout: float = 3.0) -> bytes:
        with udp(bind=False) as c:
            c.settimeout(timeout)
            c.sendto(packet, self.addr)
            return c.recvfrom(65535)[0]

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.server.close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.close()


@pytest.fixture
def running(request):
    servers = []

    def start(*args, **kwargs) -> Running:
        servers.append(Running(*args, **kwargs))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- local names -------------------------------------------------------------------------------------------
def test_local_a_answer(running, upstream):
    dns = running([upstream.addr])
    r = parse(dns.ask(build_query(0x1234, "web")))
    assert (r["id"], r["qr"], r["aa"], r["rd"], r["rcode"]) == (0x1234, True, True, True, 0)
    assert r["answers"] == [("web", 1, TTL, "10.88.0.5"), ("web", 1, TTL, "10.88.0.6")]
    assert r["additional"] == 0
    assert upstream.queries == [] and dns.server.stats["answered_local"] == 1


def test_names_match_case_insensitively_and_the_question_is_echoed_as_asked(running, upstream):
    seen = []
    dns = running([upstream.addr], lambda name: seen.append(name) or LOCAL.get(name))
    r = parse(dns.ask(build_query(7, "DB.Net1.")))
    assert seen == ["db.net1"]
    assert r["qname"] == "DB.Net1" and r["answers"] == [("DB.Net1", 1, TTL, "10.88.0.7")]


def test_empty_lookup_is_nxdomain(running, upstream):
    r = parse(running([upstream.addr]).ask(build_query(9, "gone")))
    assert (r["rcode"], r["aa"], r["answers"]) == (3, True, [])
    assert upstream.queries == []


def test_aaaa_of_a_local_name_is_nodata(running, upstream):
    dns = running([upstream.addr])
    for qtype in (28, 15, 16):  # AAAA, MX, TXT
        r = parse(dns.ask(build_query(10, "web", qtype)))
        assert (r["rcode"], r["qtype"], r["answers"]) == (0, qtype, [])
    assert upstream.queries == []


def test_ipv6_addresses_of_a_lookup_are_aaaa_records(running, upstream):
    dns = running([upstream.addr], {"v6": ["10.88.0.9", "fd00::9"]}.get)
    assert parse(dns.ask(build_query(16, "v6", 28)))["answers"] == [("v6", 28, TTL, socket.inet_pton(
        socket.AF_INET6, "fd00::9"))]
    assert parse(dns.ask(build_query(17, "v6", 1)))["answers"] == [("v6", 1, TTL, "10.88.0.9")]


def test_edns_query_gets_an_opt_record_back(running, upstream):
    r = parse(running([upstream.addr]).ask(build_query(11, "web", edns=True)))
    assert r["additional"] == 1 and len(r["answers"]) == 2


def test_ptr_of_a_known_address(running, upstream):
    dns = running([upstream.addr], reverse={"10.88.0.5": "web"}.get)
    r = parse(dns.ask(build_query(12, "5.0.88.10.in-addr.arpa", 12)))
    assert (r["rcode"], r["answers"]) == (0, [("5.0.88.10.in-addr.arpa", 12, TTL, "web")])
    r = parse(dns.ask(build_query(13, "9.0.88.10.in-addr.arpa", 12)))  # not ours: the upstream's answer
    assert r["answers"][0][3] == UPSTREAM_ADDR and len(upstream.queries) == 1


def test_a_failing_lookup_is_servfail_and_the_server_goes_on(running, upstream):
    def lookup(name):
        if name == "boom":
            raise RuntimeError("lookup broke")
        return LOCAL.get(name)
    dns = running([upstream.addr], lookup)
    assert parse(dns.ask(build_query(14, "boom")))["rcode"] == 2
    assert parse(dns.ask(build_query(15, "web")))["answers"]
    assert "lookup broke" in dns.server.stats["last_error"]


# -- forwarding --------------------------------------------------------------------------------------------
def test_forwarded_round_trip_keeps_the_id_edns_and_large_replies(running, upstream):
    dns = running([upstream.addr])
    query = build_query(0xBEEF, "big.example.org", 16, edns=True)
    reply = dns.ask(query)
    sent = upstream.queries[0]
    assert sent[2:] == query[2:]                     # EDNS record and flags unchanged; only the ID differs
    expected = upstream_reply(sent)
    assert len(reply) == len(expected) > 3000
    assert reply == query[:2] + expected[2:]         # unchanged but for the client's ID
    r = parse(reply)
    assert r["id"] == 0xBEEF and r["answers"][0][3] == UPSTREAM_ADDR
    assert dns.server.stats["forwarded"] == 1 and dns.server.fds() == list(dns.server._listen)


def test_forwarded_ids_are_random(running, upstream):
    dns = running([upstream.addr])
    for _ in range(8):
        assert parse(dns.ask(build_query(1, "example.org")))["id"] == 1
    assert len({q[:2] for q in upstream.queries}) > 1


def test_timeout_moves_to_the_next_upstream(running, upstream):
    silent = Upstream(silent=True)
    try:
        dns = running([silent.addr, upstream.addr], timeout=0.3)
        t0 = time.monotonic()
        r = parse(dns.ask(build_query(21, "example.org")))
        elapsed = time.monotonic() - t0
        assert r["id"] == 21 and r["answers"][0][3] == UPSTREAM_ADDR
        assert 0.3 <= elapsed < 1.5
        assert len(silent.queries) == 1 and len(upstream.queries) == 1
    finally:
        silent.close()


def test_all_upstreams_silent_is_servfail_after_every_attempt(running):
    silent = [Upstream(silent=True), Upstream(silent=True)]
    try:
        dns = running([u.addr for u in silent], timeout=0.2, attempts=2)
        before = fd_count()
        t0 = time.monotonic()
        r = parse(dns.ask(build_query(22, "example.org", edns=True)))
        elapsed = time.monotonic() - t0
        assert (r["id"], r["rcode"], r["aa"], r["qname"]) == (22, 2, False, "example.org")
        assert 0.8 <= elapsed < 2.0                  # 2 rounds x 2 upstreams x 0.2 s
        assert [len(u.queries) for u in silent] == [2, 2]
        assert dns.server.stats["failed"] == 1 and dns.server.tick() is None
        assert fd_count() == before                  # every upstream socket closed
    finally:
        for u in silent:
            u.close()


def test_refused_upstreams_fail_fast(running, upstream):
    dns = running([dead_addr(), dead_addr()], timeout=5)
    t0 = time.monotonic()
    assert parse(dns.ask(build_query(23, "example.org")))["rcode"] == 2
    assert time.monotonic() - t0 < 1                 # ICMP port unreachable: no waiting for the timeout
    dns2 = running([dead_addr(), upstream.addr], timeout=5)
    assert parse(dns2.ask(build_query(24, "example.org")))["answers"][0][3] == UPSTREAM_ADDR


def test_pending_cap_answers_servfail_at_once_and_retransmissions_are_not_forwarded_twice(running):
    silent = Upstream(silent=True)
    try:
        dns = running([silent.addr], timeout=2, max_pending=1)
        with udp(bind=False) as c:
            c.settimeout(1)
            c.sendto(build_query(31, "a.example.org"), dns.addr)
            c.sendto(build_query(31, "a.example.org"), dns.addr)   # the client retransmits
            c.sendto(build_query(32, "b.example.org"), dns.addr)   # beyond the cap
            r = parse(c.recvfrom(65535)[0])
        assert (r["id"], r["rcode"]) == (32, 2)      # not 31: the retransmission took no second slot
        time.sleep(0.2)
        assert len(silent.queries) == 1
    finally:
        silent.close()


# -- robustness --------------------------------------------------------------------------------------------
MALFORMED = [
    b"",
    b"\x12",
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00",                          # short header
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x03we",                    # truncated label
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x03web\x00\x00",           # truncated question
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x01a\xc0\x0c\x00\x01\x00\x01",  # pointer loop via a label
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x20\x00\x01\x00\x01",  # pointer forward
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x40web\x00\x00\x01\x00\x01",  # reserved label type
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\x3fa" * 5 + b"\x00\x00\x01\x00\x01",  # labels overrun
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # > 255
    struct.pack("!6H", 1, 0x0100, 0, 0, 0, 0),                                 # no question
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 1) + encode_name("web") + b"\x00\x01\x00\x01\x00\x00\x29",  # cut OPT
    upstream_reply(build_query(1, "web")),                                     # a response, not a query
    build_query(1, "web") + bytes(5000),                                       # too large for a query
    os.urandom(700),
]


def test_malformed_packets_are_dropped_and_the_server_keeps_serving(running, upstream):
    dns = running([upstream.addr])
    with udp(bind=False) as c:
        c.settimeout(0.3)
        for packet in MALFORMED:
            c.sendto(packet, dns.addr)
        with pytest.raises(TimeoutError):
            c.recvfrom(65535)
    assert dns.thread.is_alive()
    assert parse(dns.ask(build_query(40, "web")))["answers"]
    assert dns.server.stats["dropped"] >= len(MALFORMED) - 1   # urandom might be a valid query
    assert upstream.queries == [] or len(upstream.queries) == 1


def test_query_with_a_compressed_name_is_understood(running, upstream):
    # two questions, the second's name a pointer into the first's: well-formed, only the first is answered
    packet = struct.pack("!6H", 41, 0x0100, 2, 0, 0, 0) + encode_name("web") + b"\0\1\0\1" + b"\xc0\x0c\0\1\0\1"
    r = parse(running([upstream.addr]).ask(packet))
    assert (r["id"], r["qname"], len(r["answers"])) == (41, "web", 2)


def test_close_closes_every_fd(upstream):
    before = fd_count()
    silent = Upstream(silent=True)
    sock = udp()
    addr = sock.getsockname()
    server = DnsServer([sock.detach()], [silent.addr], LOCAL.get)
    with udp(bind=False) as c:
        c.sendto(build_query(50, "example.org"), addr)
    deadline = time.monotonic() + 2
    while len(server.fds()) < 2 and time.monotonic() < deadline:
        for fd in select.select(server.fds(), [], [], 0.1)[0]:
            server.on_readable(fd)
    assert len(server.fds()) == 2 and server.tick() > 0     # the listening socket and one forward
    server.close()
    silent.close()
    assert fd_count() == before and server.fds() == []


# -- the host's resolvers ----------------------------------------------------------------------------------
def test_host_resolvers_reads_resolv_conf_as_glibc_does(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# Generated by NetworkManager\n"
        "; another comment style\n"
        "domain old.example\n"
        "search corp.example. lab.example  # trailing comment\n"
        "options ndots:2 timeout:1\n"
        "nameserver 10.1.1.1\n"
        "nameserver   2001:db8::53\n"
        "nameserver not-an-address\n"
        "nameserver fe80::1%eth0\n"
        "nameserver 10.9.9.9\n"                   # a fourth: glibc ignores it
        "#nameserver 10.2.2.2\n"
    )
    assert host_resolvers(str(conf)) == (
        [("10.1.1.1", 53), ("2001:db8::53", 53), ("fe80::1%eth0", 53)], ["corp.example", "lab.example"])
    conf.write_text("search a.example\ndomain b.example\noptions edns0\n")   # the last one wins
    assert host_resolvers(str(conf)) == ([("127.0.0.1", 53)], ["b.example"])
    assert host_resolvers(str(tmp_path / "missing")) == ([("127.0.0.1", 53)], [])
