"""net/ports.py: the -p/-P syntax, real host listeners on loopback, and the `port`/inspect views."""
from __future__ import annotations

import fcntl
import os
import socket

import pytest

from pinnace.errors import Conflict, InvalidArgument, PinnaceError, StorageError
from pinnace.net.ports import (PortMapping, bind_host_listeners, check_available, inspect_ports, parse_publish,
                               port_bindings, port_lines, publish_all)

PM = PortMapping


def _open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


def _fds() -> set[int]:
    """This process's open fds (not counting the one listdir used to read /proc/self/fd)."""
    return {fd for fd in map(int, os.listdir("/proc/self/fd")) if _open(fd)}


def _hold(kind: int = socket.SOCK_STREAM, port: int = 0, family: int = socket.AF_INET,
          ip: str = "127.0.0.1") -> socket.socket:
    """A socket occupying ip:port the way another program would (no SO_REUSEADDR)."""
    s = socket.socket(family, kind)
    s.bind((ip, port))
    if kind == socket.SOCK_STREAM:
        s.listen(1)
    return s


def _close_all(bound) -> None:
    for _, fd in bound:
        os.close(fd)


@pytest.mark.parametrize("spec, expected", [
    ("80", [PM("", 0, 80, "tcp")]),
    ("8080:80", [PM("", 8080, 80, "tcp")]),
    ("8080:80/udp", [PM("", 8080, 80, "udp")]),
    ("8080:80/UDP", [PM("", 8080, 80, "udp")]),
    ("53/udp", [PM("", 0, 53, "udp")]),
    ("0:80", [PM("", 0, 80, "tcp")]),
    (":80", [PM("", 0, 80, "tcp")]),
    ("127.0.0.1:8080:80", [PM("127.0.0.1", 8080, 80, "tcp")]),
    ("127.0.0.1::80", [PM("127.0.0.1", 0, 80, "tcp")]),
    ("0.0.0.0:8080:80/tcp", [PM("0.0.0.0", 8080, 80, "tcp")]),
    ("[::1]:8080:80", [PM("::1", 8080, 80, "tcp")]),
    ("[::1]::80/udp", [PM("::1", 0, 80, "udp")]),
    ("::1:8080:80", [PM("::1", 8080, 80, "tcp")]),
    ("[2001:db8::5]:443:443", [PM("2001:db8::5", 443, 443, "tcp")]),
    ("8000-8002:80-82", [PM("", 8000, 80), PM("", 8001, 81), PM("", 8002, 82)]),
    ("127.0.0.1:8000-8001:80-81/udp", [PM("127.0.0.1", 8000, 80, "udp"), PM("127.0.0.1", 8001, 81, "udp")]),
    ("80-82", [PM("", 0, 80), PM("", 0, 81), PM("", 0, 82)]),
    ("8000-8002:80", [PM("", 8000, 80, "tcp", host_port_end=8002)]),
    ("9000-9000:90", [PM("", 9000, 90)]),
    ("65535:1", [PM("", 65535, 1)]),
])
def test_parse_publish_valid(spec, expected):
    assert parse_publish(spec) == expected


@pytest.mark.parametrize("spec, why", [
    ("", "no container port"),
    ("8080:", "no container port"),
    ("8080:80/sctp", "sctp cannot be published"),
    ("80/icmp", "unknown protocol 'icmp'"),
    ("80/", "unknown protocol ''"),
    ("http", "container port 'http' is not a port"),
    ("0", "container port '0' is out of range"),
    ("70000:80", "host port '70000' is out of range"),
    ("8080:65536", "out of range"),
    ("-1:80", "not a port"),
    ("+80", "not a port"),
    ("8080: 80", "container port ' 80' is not a port"),
    ("8080:８０", "not a port"),            # fullwidth digits: isdigit() but not a port
    ("82-80", "ends before it starts"),
    ("8000-8001:80-82", "differ in length"),
    ("8080:80-82", "differ in length"),
    ("0-5:80", "out of range (1-65535)"),
    ("1.2.3.4:80", "host port '1.2.3.4' is not a port"),
    ("localhost:8080:80", "'localhost' is not an IP address"),
    ("300.1.1.1:8080:80", "is not an IP address"),
    ("[::1:8080:80", "is not an IP address"),
])
def test_parse_publish_invalid_names_the_spec(spec, why):
    with pytest.raises(InvalidArgument) as exc:
        parse_publish(spec)
    msg = str(exc.value)
    assert msg.startswith(f"invalid publish spec {spec!r}: ") and why in msg
    assert "\n" not in msg


def test_mapping_json_round_trip_and_bad_records():
    for m in (PM("::1", 8080, 80, "udp"), PM("", 8000, 80, "tcp", 8002), PM("", 0, 80)):
        assert PM.from_json(m.to_json()) == m
        assert hash(PM.from_json(m.to_json())) == hash(m)
    assert "host_port_end" not in PM("", 1, 2).to_json()
    assert repr(PM("", 8000, 80, "tcp", 8002)) == "PortMapping('', 8000, 80, 'tcp', host_port_end=8002)"
    assert PM("", 1, 2) != PM("", 1, 2, "udp")
    for bad in ({}, {"host_ip": "", "host_port": "80", "container_port": 80, "protocol": "tcp"},
                {"host_ip": "", "host_port": 80, "container_port": 80, "protocol": "sctp"}, None, []):
        with pytest.raises(StorageError, match="invalid port mapping record"):
            PM.from_json(bad)


def test_publish_all():
    assert publish_all({"80/tcp": {}, "53/udp": {}, "53/tcp": {}, "8080": {}}) == [
        PM("", 0, 53, "tcp"), PM("", 0, 53, "udp"), PM("", 0, 80, "tcp"), PM("", 0, 8080, "tcp")]
    assert publish_all(["443/tcp", "443", "7000-7001/udp"]) == [
        PM("", 0, 443, "tcp"), PM("", 0, 7000, "udp"), PM("", 0, 7001, "udp")]
    assert publish_all({}) == [] and publish_all(None) == []
    with pytest.raises(InvalidArgument, match=r"exposed port '9/sctp': sctp cannot be published"):
        publish_all({"80/tcp": {}, "9/sctp": {}})


def test_bind_resolves_random_ports_tcp_and_udp():
    before = _fds()
    bound = bind_host_listeners(parse_publish("127.0.0.1::80") + parse_publish("127.0.0.1::53/udp"))
    try:
        (tcp_m, tcp_fd), (udp_m, udp_fd) = bound
        assert tcp_m.host_port > 0 and udp_m.host_port > 0
        assert (tcp_m.host_ip, tcp_m.container_port, tcp_m.protocol) == ("127.0.0.1", 80, "tcp")
        assert (udp_m.host_ip, udp_m.container_port, udp_m.protocol) == ("127.0.0.1", 53, "udp")
        for fd in (tcp_fd, udp_fd):
            assert not os.get_blocking(fd)
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        # the TCP one is listening on the port it reports
        client = socket.create_connection(("127.0.0.1", tcp_m.host_port), timeout=5)
        lst = socket.socket(fileno=os.dup(tcp_fd))
        lst.settimeout(5)
        conn, peer = lst.accept()
        assert peer == client.getsockname()
        conn.close(), client.close(), lst.close()
        # the UDP one receives datagrams sent to the port it reports
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        sender.sendto(b"ping", ("127.0.0.1", udp_m.host_port))
        rcv = socket.socket(fileno=os.dup(udp_fd))
        rcv.settimeout(5)
        assert rcv.recvfrom(16) == (b"ping", sender.getsockname())
        sender.close(), rcv.close()
    finally:
        _close_all(bound)
    assert _fds() == before


def test_bind_fixed_port_all_addresses_and_ipv6():
    probe = _hold()
    port = probe.getsockname()[1]
    probe.close()
    bound = bind_host_listeners([PM("", port, 80), PM("::", 0, 80)])
    try:
        (m4, fd4), (m6, fd6) = bound
        assert m4 == PM("", port, 80) and m6.host_ip == "::" and m6.host_port > 0
        s4 = socket.socket(fileno=os.dup(fd4))
        assert s4.getsockname() == ("0.0.0.0", port)
        s4.close()
        socket.create_connection(("::1", m6.host_port), timeout=5).close()
        # the IPv6 socket is v6-only: it does not occupy the IPv4 side of its port
        _hold(port=m6.host_port, ip="0.0.0.0").close()
    finally:
        _close_all(bound)


def _held_run(n: int) -> list[socket.socket]:
    """Sockets holding n consecutive TCP ports on 127.0.0.1 (so nothing else takes them meanwhile)."""
    while True:
        held = [_hold()]
        try:
            for i in range(1, n):
                held.append(_hold(port=held[0].getsockname()[1] + i))
            return held
        except OSError:
            for s in held:
                s.close()


def test_range_binds_each_port():
    held = _held_run(3)
    base = held[0].getsockname()[1]
    for s in held:
        s.close()
    bound = bind_host_listeners(parse_publish(f"127.0.0.1:{base}-{base + 2}:80-82"))
    try:
        assert [m for m, _ in bound] == [PM("127.0.0.1", base + i, 80 + i) for i in range(3)]
        for i in range(3):
            socket.create_connection(("127.0.0.1", base + i), timeout=5).close()
    finally:
        _close_all(bound)


def test_pool_takes_first_free_port_and_conflicts_when_full():
    a, b = _held_run(2)
    lo = a.getsockname()[1]
    spec = f"127.0.0.1:{lo}-{lo + 1}:80"
    before = _fds()
    with pytest.raises(Conflict, match=rf"^no free port in 127\.0\.0\.1:{lo}-{lo + 1}/tcp: all are already in use$"):
        bind_host_listeners(parse_publish(spec))
    assert _fds() == before
    b.close()
    bound = bind_host_listeners(parse_publish(spec))
    try:
        assert [m for m, _ in bound] == [PM("127.0.0.1", lo + 1, 80)]
    finally:
        _close_all(bound)
        a.close()


@pytest.mark.parametrize("kind, proto", [(socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")])
def test_port_in_use_is_a_conflict_and_nothing_stays_bound(kind, proto):
    before = _fds()
    busy = _hold(kind)
    port = busy.getsockname()[1]
    wanted = [PM("127.0.0.1", 0, 1, "tcp"), PM("127.0.0.1", 0, 2, "udp"), PM("", 0, 3, "tcp"),
              PM("127.0.0.1", port, 80, proto)]
    try:
        with pytest.raises(Conflict) as exc:
            bind_host_listeners(wanted)
        assert str(exc.value) == f"port 127.0.0.1:{port}/{proto} is already in use"
        assert _fds() == before | {busy.fileno()}   # the three sockets bound first were closed
        with pytest.raises(Conflict, match=f"port 0.0.0.0:{port}/{proto} is already in use"):
            check_available([PM("", port, 80, proto)])
    finally:
        busy.close()
    check_available(wanted)              # free again: the probe passes and keeps nothing
    assert _fds() == before
    bound = bind_host_listeners(wanted)  # ... and the port can really be bound
    _close_all(bound)


def _free_port() -> int:
    s = _hold()
    port = s.getsockname()[1]
    s.close()
    return port


def test_publishing_the_same_port_twice_conflicts():
    port = _free_port()
    before = _fds()
    with pytest.raises(Conflict, match=f"^port 127.0.0.1:{port}/tcp is already in use$"):
        check_available(parse_publish(f"127.0.0.1:{port}:80") + parse_publish(f"127.0.0.1:{port}:81"))
    assert _fds() == before
    check_available(parse_publish(f"127.0.0.1:{port}:80") + parse_publish(f"127.0.0.1:{port}:80/udp"))


def test_address_not_on_this_host():
    with pytest.raises(InvalidArgument, match=r"cannot publish 192\.0\.2\.1:8080/tcp: 192\.0\.2\.1 is not an "
                                              r"address of this host"):
        check_available(parse_publish("192.0.2.1:8080:80"))


def test_privileged_port_without_root_says_how_to_allow_it():
    """Run unprivileged: as the test user directly, as nobody in a forked child when run as root."""
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        start = int(f.read())
    assert start > 1, "this test needs ip_unprivileged_port_start > 1 (Debian's default is 1024)"
    port = start - 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # child: never returns into pytest
        try:
            os.close(r)
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                bind_host_listeners([PM("127.0.0.1", port, 80)])
                msg = "bound"
            except PinnaceError as e:
                msg = f"{type(e).__name__}: {e}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    os.waitpid(pid, 0)
    assert msg == (f"InvalidArgument: cannot publish 127.0.0.1:{port}/tcp: ports below {start} need root: "
                   f"sysctl net.ipv4.ip_unprivileged_port_start={port} (or pick a higher port)")


BOUND = [PM("", 8080, 80), PM("::", 8080, 80), PM("127.0.0.1", 5353, 53, "udp"), PM("", 4443, 443)]


def test_port_lines():
    assert port_lines(BOUND) == ["53/udp -> 127.0.0.1:5353", "80/tcp -> 0.0.0.0:8080", "80/tcp -> [::]:8080",
                                 "443/tcp -> 0.0.0.0:4443"]
    assert port_lines(BOUND, "80") == ["0.0.0.0:8080", "[::]:8080"]
    assert port_lines(BOUND, "80/tcp") == ["0.0.0.0:8080", "[::]:8080"]
    assert port_lines(BOUND, "53/UDP") == ["127.0.0.1:5353"]
    assert port_lines(BOUND, "53") == []          # the caller says "No public port '53/tcp' published"
    assert port_lines(BOUND, "80/udp") == []
    assert port_lines([]) == []
    for bad in ("http", "80-81", "80/sctp"):
        with pytest.raises(InvalidArgument, match=f"invalid port '{bad}'"):
            port_lines(BOUND, bad)


def test_inspect_ports_and_port_bindings():
    assert inspect_ports(BOUND, {"80/tcp": {}, "443/tcp": {}, "9000/tcp": {}, "7": {}}) == {
        "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "4443"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
        "7/tcp": None,
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}, {"HostIp": "::", "HostPort": "8080"}],
        "9000/tcp": None,
    }
    assert list(inspect_ports([], ["443/tcp", "80/tcp"])) == ["443/tcp", "80/tcp"]   # Go's sorted map keys
    assert inspect_ports([], None) == {}
    given = parse_publish("8080:80") + parse_publish("127.0.0.1::80") + parse_publish("[::1]:8000-8002:53/udp")
    assert port_bindings(given) == {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": ""}],
        "53/udp": [{"HostIp": "::1", "HostPort": "8000-8002"}],
    }
