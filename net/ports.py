"""Published ports (issue 4): Docker's `-p/--publish` and `-P/--publish-all` syntax, the host-side
listening sockets, and the `port` / inspect views of them.

Decisions, checked against Docker's documented behaviour:

- Syntax `[ip:][hostPort:]containerPort[/proto]`. The spec is split on its last two colons, so an IPv6
  host address may be written bracketed (`[::1]:8080:80`, the documented form) or bare (`::1:8080:80`);
  `127.0.0.1::80` and `80` leave the host port to the kernel (host_port 0, as does an explicit `0`).
- Ranges: `8000-8002:80-82` maps port by port (the lengths must match); `80-82` publishes each on a
  random port; a host range with a single container port (`8000-8002:80`) is Docker's "pool": the first
  free port of the range is bound (`host_port..host_port_end`, resolved by bind_host_listeners).
- Protocols tcp and udp (case-insensitive, tcp by default). sctp is valid for Docker but cannot be
  relayed by pinnace, so it is refused by name rather than silently dropped; `-P` refuses it too.
- Only the given address family is bound: an empty host ip binds 0.0.0.0 (IPv4 only, so `port` shows
  no `[::]` line); an IPv6 host ip binds with IPV6_V6ONLY so `::` does not also take 0.0.0.0.

Imported by the per-container supervisor: `_socket` not `socket`, no `typing`, no dataclasses (RSS).
"""
from __future__ import annotations

import _socket
import errno
import os

from pinnace.errors import Conflict, InvalidArgument, PinnaceError, StorageError

PROTOCOLS = ("tcp", "udp")
_BACKLOG = 128


class PortMapping:
    """One published port. host_ip "" = all IPv4 addresses; host_port 0 = the kernel picks one; a non-zero
    host_port_end makes host_port..host_port_end a pool of which the first free port is bound."""
    __slots__ = ("host_ip", "host_port", "container_port", "protocol", "host_port_end")

    def __init__(self, host_ip: str, host_port: int, container_port: int, protocol: str = "tcp",
                 host_port_end: int = 0) -> None:
        self.host_ip, self.host_port, self.container_port = host_ip, host_port, container_port
        self.protocol, self.host_port_end = protocol, host_port_end

    def _key(self) -> tuple:
        return (self.host_ip, self.host_port, self.container_port, self.protocol, self.host_port_end)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PortMapping) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        end = f", host_port_end={self.host_port_end}" if self.host_port_end else ""
        return (f"PortMapping({self.host_ip!r}, {self.host_port}, {self.container_port}, "
                f"{self.protocol!r}{end})")

    def to_json(self) -> dict:
        data = {"host_ip": self.host_ip, "host_port": self.host_port,
                "container_port": self.container_port, "protocol": self.protocol}
        if self.host_port_end:
            data["host_port_end"] = self.host_port_end
        return data

    @classmethod
    def from_json(cls, data: dict) -> PortMapping:
        try:
            m = cls(data["host_ip"], data["host_port"], data["container_port"], data["protocol"],
                    data.get("host_port_end", 0))
        except (KeyError, TypeError, AttributeError):
            m = None
        if (m is None or not isinstance(m.host_ip, str) or m.protocol not in PROTOCOLS
                or not all(type(p) is int for p in (m.host_port, m.container_port, m.host_port_end))):
            raise StorageError(f"invalid port mapping record: {data!r}")
        return m


def _bad(ctx: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid {ctx}: {why}")


def _port_range(text: str, ctx: str, what: str, lowest: int) -> tuple[int, int]:
    lo, dash, hi = text.partition("-")
    if not dash:
        hi = lo
    # isascii: str.isdigit() also accepts other scripts' digits, which int() would then take
    if not (lo.isascii() and lo.isdigit() and hi.isascii() and hi.isdigit()):
        raise _bad(ctx, f"{what} {text!r} is not a port or a range of ports")
    a, b = int(lo), int(hi)
    if dash:
        lowest = max(lowest, 1)   # 0 means "random" only on its own, never inside a range
    if not (lowest <= a <= 65535 and lowest <= b <= 65535):
        raise _bad(ctx, f"{what} {text!r} is out of range ({lowest}-65535)")
    if a > b:
        raise _bad(ctx, f"{what} range {text!r} ends before it starts")
    return a, b


def _proto_port(text: str, ctx: str) -> tuple[str, str]:
    port, slash, proto = text.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto == "sctp":
        raise _bad(ctx, "sctp cannot be published (only tcp and udp)")
    if proto not in PROTOCOLS:
        raise _bad(ctx, f"unknown protocol {proto!r} (tcp or udp)")
    return port, proto


def _host_ip(raw: str, ctx: str) -> str:
    ip = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, ip)
            return ip
        except OSError:
            pass
    raise _bad(ctx, f"{raw!r} is not an IP address")


def parse_publish(spec: str) -> list[PortMapping]:
    """One `-p` value -> its mappings (a range gives one per port). InvalidArgument naming the spec."""
    ctx = f"publish spec {spec!r}"
    parts = spec.split(":")
    container = parts[-1]
    host = parts[-2] if len(parts) > 1 else ""
    raw_ip = ":".join(parts[:-2])      # everything before the last two colons: IPv6 keeps its own
    if not container:
        raise _bad(ctx, "no container port")
    ip = _host_ip(raw_ip, ctx) if raw_ip else ""
    cport, proto = _proto_port(container, ctx)
    c0, c1 = _port_range(cport, ctx, "container port", 1)
    h0, h1 = _port_range(host, ctx, "host port", 0) if host else (0, 0)
    if h0 == 0:
        return [PortMapping(ip, 0, p, proto) for p in range(c0, c1 + 1)]
    if h1 - h0 != c1 - c0:
        if c0 == c1:   # Docker's pool: any one free port of the host range
            return [PortMapping(ip, h0, c0, proto, h1)]
        raise _bad(ctx, f"host range {host} and container range {cport} differ in length")
    return [PortMapping(ip, h0 + i, c0 + i, proto) for i in range(c1 - c0 + 1)]


def publish_all(exposed: dict | list | None) -> list[PortMapping]:
    """`-P`: every port of the image's ExposedPorts ({"80/tcp": {}} or ["80/tcp", "53/udp", "8080"]) on a
    random host port, sorted by port then protocol."""
    found = set()
    for key in exposed or ():
        ctx = f"exposed port {key!r}"
        port, proto = _proto_port(str(key), ctx)
        lo, hi = _port_range(port, ctx, "port", 1)
        found.update((p, proto) for p in range(lo, hi + 1))
    return [PortMapping("", 0, p, proto) for p, proto in sorted(found)]


def _endpoint(ip: str, port: object) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _where(m: PortMapping) -> str:
    port = f"{m.host_port}-{m.host_port_end}" if m.host_port_end else m.host_port
    return f"{_endpoint(m.host_ip or '0.0.0.0', port)}/{m.protocol}"


def _unprivileged_start() -> int:
    try:  # per network namespace; /proc/sys/net shows the reader's
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def _bind_error(m: PortMapping, err: OSError) -> PinnaceError:
    where = _where(m)
    if err.errno == errno.EADDRINUSE:
        if m.host_port_end:
            return Conflict(f"no free port in {where}: all are already in use")
        return Conflict(f"port {where} is already in use")
    if err.errno == errno.EACCES:
        return InvalidArgument(
            f"cannot publish {where}: ports below {_unprivileged_start()} need root: "
            f"sysctl net.ipv4.ip_unprivileged_port_start={m.host_port} (or pick a higher port)")
    if err.errno == errno.EADDRNOTAVAIL:
        return InvalidArgument(f"cannot publish {where}: {m.host_ip} is not an address of this host")
    return PinnaceError(f"cannot publish {where}: {err.strerror or err}")


def _listen(m: PortMapping, port: int) -> tuple[_socket.socket, int]:
    family = _socket.AF_INET6 if ":" in m.host_ip else _socket.AF_INET
    tcp = m.protocol == "tcp"
    sock = _socket.socket(family, _socket.SOCK_STREAM if tcp else _socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)   # Python's sockets are already close-on-exec
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        if tcp:
            # lets a restarted container rebind over TIME_WAIT connections; still EADDRINUSE against a
            # listener. Not for UDP: there it would let two sockets share the port without an error.
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((m.host_ip or "0.0.0.0", port))
        if tcp:
            sock.listen(_BACKLOG)
        return sock, sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise


def _bind_one(m: PortMapping) -> tuple[PortMapping, _socket.socket]:
    ports = range(m.host_port, m.host_port_end + 1) if m.host_port_end else (m.host_port,)
    err = None
    for port in ports:
        try:
            sock, real = _listen(m, port)
        except OSError as e:
            err = e
            if m.host_port_end and e.errno in (errno.EADDRINUSE, errno.EACCES):
                continue      # a pool: try the next port
            break
        return PortMapping(m.host_ip, real, m.container_port, m.protocol), sock
    raise _bind_error(m, err)


def bind_host_listeners(mappings: list[PortMapping]) -> list[tuple[PortMapping, int]]:
    """Bind every mapping in the current network namespace: TCP listening, UDP bound, non-blocking,
    close-on-exec. Returns (mapping with its real host port, fd) in order; the caller owns the fds.
    On any error nothing stays bound (no half-published container)."""
    bound = []
    try:
        for m in mappings:
            bound.append(_bind_one(m))
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return [(m, sock.detach()) for m, sock in bound]


def check_available(mappings: list[PortMapping]) -> None:
    """Bind and release every mapping so `run` fails before creating anything. Same errors as
    bind_host_listeners; a probe only, the port can still be taken before the real bind."""
    for _, fd in bind_host_listeners(mappings):
        os.close(fd)


def _order(m: PortMapping) -> tuple:
    return (m.container_port, m.protocol, m.host_ip, m.host_port)


def port_lines(mappings: list[PortMapping], private: str | None = None) -> list[str]:
    """The `port` command's lines for bound mappings: "80/tcp -> 0.0.0.0:8080", or with `private`
    ("80" = "80/tcp", "53/udp") only "0.0.0.0:8080". [] when nothing matches: the caller raises
    Docker's "No public port '80/tcp' published for NAME"."""
    want = None
    if private is not None:
        ctx = f"port {private!r}"
        port, proto = _proto_port(private, ctx)
        lo, hi = _port_range(port, ctx, "port", 1)
        if lo != hi:
            raise _bad(ctx, "give one port, not a range")
        want = (lo, proto)
    lines = []
    for m in sorted(mappings, key=_order):
        addr = _endpoint(m.host_ip or "0.0.0.0", m.host_port)
        if want is None:
            lines.append(f"{m.container_port}/{m.protocol} -> {addr}")
        elif (m.container_port, m.protocol) == want:
            lines.append(addr)
    return lines


def _exposed_key(key: object) -> str:
    text = str(key)
    port, slash, proto = text.partition("/")
    return f"{port}/{proto.lower() if slash else 'tcp'}"


def inspect_ports(mappings: list[PortMapping], exposed: dict | list | None) -> dict:
    """Docker's NetworkSettings.Ports for bound mappings: {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort":
    "8080"}], "443/tcp": None} (exposed, unpublished). Keys sorted as Go's JSON encoder sorts them."""
    ports: dict = {_exposed_key(k): None for k in exposed or ()}
    for m in sorted(mappings, key=_order):
        key = f"{m.container_port}/{m.protocol}"
        ports[key] = (ports.get(key) or []) + [{"HostIp": m.host_ip or "0.0.0.0", "HostPort": str(m.host_port)}]
    return dict(sorted(ports.items()))


def port_bindings(mappings: list[PortMapping]) -> dict:
    """Docker's HostConfig.PortBindings for parsed (not yet bound) mappings: HostIp as given ("" for all),
    HostPort "" when random and "8000-8002" for a pool."""
    out: dict = {}
    for m in mappings:
        if m.host_port_end:
            host_port = f"{m.host_port}-{m.host_port_end}"
        else:
            host_port = str(m.host_port) if m.host_port else ""
        out.setdefault(f"{m.container_port}/{m.protocol}", []).append({"HostIp": m.host_ip,
                                                                        "HostPort": host_port})
    return out
