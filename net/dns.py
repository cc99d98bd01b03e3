"""The DNS server a container's supervisor runs (DESIGN.md §6): local names answered, the rest forwarded.

Queries arrive on UDP sockets bound inside the container's network namespace (10.0.2.3:53, 127.0.0.11:53)
and handed to the supervisor as fds; the supervisor lives in the host's network namespace, so the sockets
this module creates itself reach the host's resolvers (`host_resolvers()`), loopback ones included.

- A name `lookup(name)` knows (lower case, no trailing dot) is answered here, authoritatively: A records
  for its IPv4 addresses (AAAA for IPv6 ones, should a lookup return any), NOERROR with no answer (NODATA)
  for other types, NXDOMAIN for an empty list. TTL 5 s: a container that is restarted comes back with
  another address, so a caching client (nscd, a JVM, a dnsmasq in the image) must not keep the old one
  long, while every lookup costs only a loopback round trip. Negative answers carry no SOA, so they are
  not cached at all (RFC 2308 §5): a container being started becomes resolvable at once. With `reverse`,
  PTR queries for a.b.c.d.in-addr.arpa are answered too when it knows the address.
- Everything else goes to the upstreams, in order, `attempts` rounds, `timeout` seconds per try (glibc's
  res_send scheme), each try from its own non-blocking UDP socket connected to the upstream (the kernel
  drops datagrams from any other source) with a fresh random ID and a random source port; an ICMP
  port-unreachable moves to the next upstream at once. The reply goes back unchanged but for the client's
  ID, so EDNS, DNSSEC bits and TC pass through. After the last try, and at once beyond `max_pending`
  queries in flight, the client gets SERVFAIL. Opcodes other than QUERY get NOTIMP.
- Queries over TCP are not served by this module: the caller sends TCP to port 53 to the first upstream
  (relay). So local answers never set TC: they carry what fits in 512 bytes.
- Anything that is not a well-formed query (responses, bad names, truncated records, no question) is
  dropped silently; no packet can raise out of `on_readable`. `stats`: answered_local, forwarded
  (upstream replies passed on), failed (SERVFAILs made here), dropped, last_error.

Driven by the supervisor's single-threaded loop, like net/relay.py; `tick()` gives the select timeout:

    while ...:
        timeout = dns.tick()
        r, _, _ = select.select(dns.fds() + ..., [], [], timeout)
        for fd in r: dns.on_readable(fd)

Imports `_socket`, not `socket`, and not `typing` (RSS of the supervisor, see net/relay.py).
"""
from __future__ import annotations

import _socket
import os
import struct
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` costs a supervisor ~2 MB of RSS
    from collections.abc import Callable

Address = tuple[str, int]
TTL = 5                     # seconds, for local answers: see above
MAXNS = 3                   # glibc uses the first three nameservers of resolv.conf
_RECV = 65535               # whole datagrams: EDNS replies may be far above 512 bytes
_MAX_QUERY = 4096           # larger "queries" are dropped: 256 in flight stay within 1 MiB
_BATCH = 32                 # datagrams read per readiness of a listening socket
_A, _PTR, _AAAA, _OPT, _ANY, _IN = 1, 12, 28, 41, 255, 1       # record types; class IN
_NOERROR, _SERVFAIL, _NXDOMAIN, _NOTIMP = 0, 2, 3, 4
_QR, _AA, _RD, _RA = 0x8000, 0x0400, 0x0100, 0x0080
_OPT_RR = b"\0" + struct.pack("!HHIH", _OPT, 4096, 0, 0)  # our EDNS0 record: 4096-byte UDP payload
_HEADER = struct.Struct("!6H")


def host_resolvers(path: str = "/etc/resolv.conf") -> tuple[list[Address], list[str]]:
    """(nameservers as (ip, 53), search domains) of the host, read as glibc does: the first MAXNS valid
    `nameserver` lines, the last `search`/`domain` line; 127.0.0.1 when no nameserver is given."""
    servers: list[Address] = []
    search: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        words = line.split("#")[0].split(";")[0].split()
        if len(words) < 2:
            continue
        if words[0] == "nameserver" and len(servers) < MAXNS:
            ip = words[1]
            try:  # a link-local IPv6 server may carry its interface: fe80::1%eth0
                _socket.inet_pton(_socket.AF_INET6 if ":" in ip else _socket.AF_INET, ip.split("%")[0])
            except OSError:
                continue
            servers.append((ip, 53))
        elif words[0] in ("search", "domain"):
            search = [d.rstrip(".") for d in (words[1:] if words[0] == "search" else words[1:2]) if d != "."]
    return servers or [("127.0.0.1", 53)], search


def _name(buf: bytes, off: int) -> tuple[list[bytes], int]:
    """The labels of the domain name at `off` and the offset after it. Compression pointers must point
    backwards and the name must stay within 255 bytes, so no loop or overlong name is followed; ValueError
    (or IndexError) for anything malformed."""
    labels: list[bytes] = []
    end, size = -1, 1
    while True:
        n = buf[off]
        if n >= 0xC0:
            ptr = (n & 0x3F) << 8 | buf[off + 1]
            if ptr >= off:
                raise ValueError("forward pointer")
            end, off = (off + 2 if end < 0 else end), ptr
        elif n >= 0x40:
            raise ValueError("label type")
        elif n == 0:
            return labels, (off + 1 if end < 0 else end)
        else:
            label = buf[off + 1:off + 1 + n]
            size += n + 1
            if len(label) < n or size > 255:
                raise ValueError("label")
            labels.append(label)
            off += n + 1


def _encode(name: str) -> bytes:
    labels = [x.encode("ascii") for x in name.rstrip(".").split(".")]
    if not all(0 < len(x) < 64 for x in labels) or sum(len(x) + 1 for x in labels) > 254:
        raise ValueError(f"not a domain name: {name!r}")
    return b"".join(bytes((len(x),)) + x for x in labels) + b"\0"


def _rr(rtype: int, rdata: bytes) -> bytes:
    """A record of the question's name (a pointer to offset 12), class IN."""
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, _IN, TTL, len(rdata)) + rdata


class _Query:
    """A parsed query: header, first question (rebuilt uncompressed, case as asked), EDNS presence."""
    __slots__ = ("id", "flags", "labels", "qtype", "qclass", "question", "edns")

    def __init__(self, data: bytes) -> None:
        self.id, self.flags, qd, an, ns, ar = _HEADER.unpack_from(data)
        if self.flags & _QR or qd == 0:
            raise ValueError("not a query")
        self.labels, off = _name(data, 12)
        self.qtype, self.qclass = struct.unpack_from("!HH", data, off)
        off += 4
        self.question = b"".join(bytes((len(x),)) + x for x in self.labels) + b"\0" + data[off - 4:off]
        for _ in range(qd - 1):
            off = _name(data, off)[1] + 4
        self.edns = False
        for i in range(an + ns + ar):
            off = _name(data, off)[1]
            rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, off)
            off += 10 + rdlen
            if off > len(data):
                raise ValueError("truncated record")
            self.edns = self.edns or (rtype == _OPT and i >= an + ns)

    def reply(self, rcode: int, answers: list[bytes] = (), *, aa: bool = True) -> bytes:
        flags = _QR | (self.flags & (0x7800 | _RD)) | _RA | rcode | (_AA if aa else 0)
        tail = _OPT_RR if self.edns else b""
        body, n = b"", 0
        for rr in answers:  # what fits in 512 bytes (see above)
            if 12 + len(self.question) + len(body) + len(rr) + len(tail) > 512:
                break
            body, n = body + rr, n + 1
        head = _HEADER.pack(self.id, flags, 1, n, 0, 1 if self.edns else 0)
        return head + self.question + body + tail


class _Forward:
    """One query in flight to the upstreams."""
    __slots__ = ("sock", "listen", "client", "key", "query", "data", "tries", "upid", "deadline")

    def __init__(self, listen: _socket.socket, client: Address, key: tuple, query: _Query, data: bytes) -> None:
        self.sock: _socket.socket | None = None
        self.listen, self.client, self.key, self.query, self.data = listen, client, key, query, data
        self.tries, self.upid, self.deadline = 0, 0, 0.0   # try number (upstream tries % n), its ID, its end


class DnsServer:
    """DNS for one container. Owns every fd given to it and every socket it makes; `close()` closes them."""

    def __init__(self, listen_fds: list[int], upstreams: list[Address],
                 lookup: Callable[[str], list[str] | None] | None = None, *, timeout: float = 2.0,
                 attempts: int = 2, max_pending: int = 256,
                 reverse: Callable[[str], str | None] | None = None) -> None:
        """`lookup(name)`: addresses of a local name, [] for a local name without any (NXDOMAIN), None to
        forward. `reverse(ip)`: the name of a local IPv4 address for PTR queries, None to forward."""
        self._listen: dict[int, _socket.socket] = {fd: _socket.socket(fileno=fd) for fd in listen_fds}
        for sock in self._listen.values():
            sock.setblocking(False)
        self._upstreams = list(upstreams)
        self._lookup, self._reverse = lookup, reverse
        self._timeout, self._tries, self._max_pending = timeout, max(1, attempts) * len(upstreams), max_pending
        self._pending: dict[int, _Forward] = {}     # fd of its upstream socket -> query
        self._keys: dict[tuple, _Forward] = {}      # (listen fd, client, client's ID) -> query
        self.stats = {"answered_local": 0, "forwarded": 0, "failed": 0, "dropped": 0, "last_error": ""}

    # -- the loop's view --------------------------------------------------------------------------------
    def fds(self) -> list[int]:
        """The fds to watch for readability this round."""
        return [*self._listen, *self._pending]

    def on_readable(self, fd: int) -> None:
        try:
            if fd in self._listen:
                self._serve(self._listen[fd])
            elif fd in self._pending:
                self._upstream_reply(self._pending[fd])
        except Exception as e:  # noqa: BLE001 - the supervisor must never die from a packet
            self._note("dropped", f"dns: {e!r}")

    def tick(self, now: float | None = None) -> float | None:
        """Retry or give up the forwards past their deadline; seconds until the next deadline, None when
        nothing is in flight."""
        now = time.monotonic() if now is None else now
        for fwd in [f for f in self._pending.values() if f.deadline <= now]:
            self._close_try(fwd)
            fwd.tries += 1
            self._send(fwd)
        return max(0.0, min(f.deadline for f in self._pending.values()) - now) if self._pending else None

    def close(self) -> None:
        for fwd in list(self._pending.values()):
            self._close_try(fwd)
        self._keys.clear()
        for sock in self._listen.values():
            sock.close()
        self._listen.clear()

    # -- queries ----------------------------------------------------------------------------------------
    def _serve(self, listen: _socket.socket) -> None:
        for _ in range(_BATCH):
            try:
                data, client = listen.recvfrom(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ECONNREFUSED left by an earlier reply to a vanished client
                self._note("dropped", f"dns recv: {e}")
                continue
            try:
                if len(data) > _MAX_QUERY:
                    raise ValueError("too large")
                query = _Query(data)
            except (ValueError, IndexError, struct.error):
                self.stats["dropped"] += 1
                continue
            try:
                reply = self._local(query)
            except Exception as e:  # noqa: BLE001 - lookup/reverse are caller code
                self._note("failed", f"dns lookup: {e!r}")
                self._answer(listen, client, query.reply(_SERVFAIL, aa=False))
                continue
            if reply is not None:
                self.stats["answered_local"] += 1
                self._answer(listen, client, reply)
                continue
            key = (listen.fileno(), client, query.id)
            if key in self._keys:
                continue  # the client's retransmission: the forward in flight answers it
            if len(self._pending) >= self._max_pending or not self._upstreams:
                self._note("failed", "dns: too many queries in flight" if self._upstreams else "dns: no upstream")
                self._answer(listen, client, query.reply(_SERVFAIL, aa=False))
                continue
            fwd = _Forward(listen, client, key, query, data)
            self._keys[key] = fwd
            self._send(fwd)

    def _local(self, q: _Query) -> bytes | None:
        """The reply to `q` if it is a local name's, else None."""
        if q.flags & 0x7800:  # NOTIFY, UPDATE...: nothing a container has to send the host's resolvers
            return q.reply(_NOTIMP, aa=False)
        if q.qclass not in (_IN, _ANY) or not q.labels:
            return None
        if any(not x.isascii() or b"." in x for x in q.labels):
            return None  # a dot inside a label, or a byte beyond ASCII, is no name of ours
        name = b".".join(q.labels).decode("ascii").lower()
        if self._reverse is not None and q.qtype == _PTR and name.endswith(".in-addr.arpa"):
            octets = name.split(".")[:-2]
            if len(octets) == 4 and all(o.isdigit() and int(o) < 256 for o in octets):
                target = self._reverse(".".join(reversed(octets)))
                if target is not None:
                    rdata = _encode(target)
                    return q.reply(_NOERROR, [_rr(_PTR, rdata)])
        addrs = self._lookup(name) if self._lookup is not None else None
        if not addrs:
            return None if addrs is None else q.reply(_NXDOMAIN)
        answers = []
        for ip in addrs:
            family, rtype = (_socket.AF_INET6, _AAAA) if ":" in ip else (_socket.AF_INET, _A)
            if q.qtype in (rtype, _ANY):
                answers.append(_rr(rtype, _socket.inet_pton(family, ip)))
        return q.reply(_NOERROR, answers)

    # -- forwarding -------------------------------------------------------------------------------------
    def _send(self, fwd: _Forward) -> None:
        """Send the current try of `fwd`, moving on to the next upstream while that fails at once; SERVFAIL
        when no try is left."""
        while fwd.tries < self._tries:
            host, port = self._upstreams[fwd.tries % len(self._upstreams)]
            sock = None
            try:
                sock = _socket.socket(_socket.AF_INET6 if ":" in host else _socket.AF_INET,
                                      _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
                sock.connect((host, port))
                fwd.upid = int.from_bytes(os.urandom(2), "big")
                sock.send(fwd.upid.to_bytes(2, "big") + fwd.data[2:])
            except OSError as e:
                if sock is not None:
                    sock.close()
                self._note(None, f"dns upstream {host}:{port}: {e}")
                fwd.tries += 1
                continue
            fwd.sock, fwd.deadline = sock, time.monotonic() + self._timeout
            self._pending[sock.fileno()] = fwd
            return
        self._keys.pop(fwd.key, None)
        self._note("failed", f"dns: no upstream answered for {b'.'.join(fwd.query.labels)[:80]!r}")
        self._answer(fwd.listen, fwd.client, fwd.query.reply(_SERVFAIL, aa=False))

    def _upstream_reply(self, fwd: _Forward) -> None:
        for _ in range(_BATCH):
            try:
                data = fwd.sock.recv(_RECV)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # ECONNREFUSED: nothing listens there, try the next upstream now
                host, port = self._upstreams[fwd.tries % len(self._upstreams)]
                self._note(None, f"dns upstream {host}:{port}: {e}")
                self._close_try(fwd)
                fwd.tries += 1
                self._send(fwd)
                return
            if len(data) < 12 or int.from_bytes(data[:2], "big") != fwd.upid or not data[2] & 0x80:
                continue  # not the reply to this try: keep waiting for it
            self._close_try(fwd)
            self._keys.pop(fwd.key, None)
            self.stats["forwarded"] += 1
            self._answer(fwd.listen, fwd.client, fwd.data[:2] + data[2:])
            return

    def _close_try(self, fwd: _Forward) -> None:
        if fwd.sock is not None:
            self._pending.pop(fwd.sock.fileno(), None)
            fwd.sock.close()
            fwd.sock = None

    def _answer(self, listen: _socket.socket, client: Address, reply: bytes) -> None:
        try:
            listen.sendto(reply, client)
        except OSError as e:  # a full socket buffer or a vanished client: UDP may lose it, the client retries
            self._note(None, f"dns reply to {client[0]}: {e}")

    def _note(self, counter: str | None, message: str) -> None:
        if counter is not None:
            self.stats[counter] += 1
        self.stats["last_error"] = message
