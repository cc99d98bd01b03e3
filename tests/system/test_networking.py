"""Networking as a user sees it (issue 4), run as the unprivileged test user (and as root by `anyuser`):
the default user-mode network (outbound TCP, UDP and DNS to servers this test runs on the host's
loopback), published ports (TCP and UDP, the client's real address, 127.0.0.1-only binds, a port in use),
user networks (names, aliases, isolation, --internal, parallel starts, connect/disconnect while running),
`--network container:NAME`, and clean-up after a killed supervisor."""
from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

pytestmark = pytest.mark.anyuser
BUSYBOX = "127.0.0.1:5000/fixtures/busybox"
DEBIAN = "127.0.0.1:5000/fixtures/debian"
TEST_NAME, TEST_ADDRESS = "service.pinnace.test", "192.0.2.55"


# ---------------------------------------------------------------- servers on the host
class _UdpEcho(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return
            self.sock.sendto(b"echo:" + data, peer)


class _Dns(_UdpEcho):
    """Answers A queries for TEST_NAME with TEST_ADDRESS, NXDOMAIN for everything else."""

    def run(self) -> None:
        while True:
            try:
                q, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            qid, _flags, qd = struct.unpack(">HHH", q[:6])
            pos, labels = 12, []
            while q[pos]:
                labels.append(q[pos + 1:pos + 1 + q[pos]].decode())
                pos += 1 + q[pos]
            question = q[12:pos + 5]
            qtype = struct.unpack(">H", q[pos + 1:pos + 3])[0]
            name = ".".join(labels).lower()
            if name == TEST_NAME and qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton(TEST_ADDRESS)
                reply = struct.pack(">HHHHHH", qid, 0x8580, 1, 1, 0, 0) + question + answer
            else:
                rcode = 0 if name == TEST_NAME else 3
                reply = struct.pack(">HHHHHH", qid, 0x8580 | rcode, 1, 0, 0, 0) + question
            self.sock.sendto(reply, peer)


@pytest.fixture(scope="module")
def host_servers():
    udp, dns = _UdpEcho(), _Dns()
    udp.start()
    dns.start()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, peer = tcp.accept()
            except OSError:
                return
            with conn:
                conn.recv(4096)
                body = f"hello from the host to {peer[0]}\n".encode()
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    threading.Thread(target=serve, daemon=True).start()
    yield {"tcp": tcp.getsockname()[1], "udp": udp.port, "dns": dns.port}
    for s in (tcp, udp.sock, dns.sock):
        s.close()


@pytest.fixture(scope="module")
def p(module_pinnace, host_servers):
    module_pinnace("pull", "-q", BUSYBOX)
    module_pinnace("pull", "-q", DEBIAN)
    # the containers' upstream resolver is this test's DNS server (else the host's /etc/resolv.conf)
    module_pinnace.env["PINNACE_DNS_SERVERS"] = f"127.0.0.1:{host_servers['dns']}"
    yield module_pinnace
    module_pinnace("rm", "-f", "-a", check=False)


def _host_address() -> str:
    """A non-loopback IPv4 address of this host (a published port's client that is not on loopback)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields[1] != "lo":
            return fields[3].split("/")[0]
    pytest.fail("this host has no non-loopback IPv4 address to test published ports from")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(host: str, port: int, timeout: float = 10) -> None:
    """Until the server in the container answers (the host side listens before the container starts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _http_get(host, port, "/"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"nothing answers on {host}:{port}")


def _http_get(host: str, port: int, path: str, source: str | None = None) -> str:
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0) if source else None) as c:
        c.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    text = data.decode().replace("\r\n", "\n")
    return text.split("\n\n", 1)[1] if "\n\n" in text else ""   # the body


# (busybox wget's -T crashes in the fixture's build: `timeout 5 wget` instead)
# A busybox httpd whose CGI prints the client's address as the server saw it
REMOTE_ADDR_SERVER = ("mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip "
                      "&& chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www")


# ---------------------------------------------------------------- the default network
def test_default_network_reaches_the_host_over_tcp_udp_and_dns(p, host_servers):
    script = (f"exec 4<>/dev/tcp/host.containers.internal/{host_servers['tcp']}; "
              "printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&4; tail -n 1 <&4; "
              f"exec 3<>/dev/udp/host.containers.internal/{host_servers['udp']}; printf ping >&3; "
              "timeout 5 dd bs=512 count=1 <&3 2>/dev/null; echo; "
              f"getent hosts {TEST_NAME}; getent hosts host.containers.internal; cat /etc/resolv.conf")
    res = p("run", "--rm", DEBIAN, "bash", "-c", script)
    lines = res.out.splitlines()
    assert lines[0] == "hello from the host to 127.0.0.1"          # TCP via the gateway to the host's lo
    assert lines[1] == "echo:ping"                                 # UDP both ways
    assert lines[2].split() == [TEST_ADDRESS, TEST_NAME]           # DNS through the forwarder
    assert lines[3].split()[0] == "10.0.2.2"
    assert "nameserver 10.0.2.3" in lines[4:]


def test_dns_errors_and_local_names(p):
    res = p("run", "--rm", "--name", "dnsself", BUSYBOX, "sh", "-c",
            "nslookup no-such.pinnace.test; echo rc=$?; nslookup dnsself | grep -A1 Name")
    assert "NXDOMAIN" in res.out and "rc=1" in res.out
    assert "Address: 10.0.2.100" in res.out                        # the container's own name, locally


# ---------------------------------------------------------------- published ports
def test_published_tcp_port_shows_the_real_client(p):
    port = _free_port()
    cid = p("run", "-d", "-p", f"{port}:80", BUSYBOX, "sh", "-c", REMOTE_ADDR_SERVER).out.strip()
    try:
        _wait_http("127.0.0.1", port)
        host = _host_address()
        assert _http_get(host, port, "/cgi-bin/ip", source=host).strip() in (host, f"[::ffff:{host}]")
        # a client on the host's loopback is the host to the container: its gateway address
        assert _http_get("127.0.0.1", port, "/cgi-bin/ip").strip() in ("10.0.2.2", "[::ffff:10.0.2.2]")
        assert p("port", cid).out == f"80/tcp -> 0.0.0.0:{port}\n"
        assert p("port", cid, "80").out == f"0.0.0.0:{port}\n"
        info = p("inspect", cid).json()[0]
        assert info["NetworkSettings"]["Ports"]["80/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(port)}]
    finally:
        p("rm", "-f", cid)
    with pytest.raises(OSError):  # the listener went with the container
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_published_udp_port_and_loopback_only_binding(p):
    port = _free_port()
    server = ("perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 53, Proto => \"udp\") or die; "
              "while ($s->recv($m, 512)) { $s->send(\"from \" . $s->peerhost . \": $m\") }'")
    cid = p("run", "-d", "-p", f"127.0.0.1:{port}:53/udp", "-p", "127.0.0.1::80", DEBIAN, "bash", "-c",
            server).out.strip()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(1)
            c.connect(("127.0.0.1", port))
            for _ in range(20):  # until the server in the container has started
                c.send(b"hi")
                try:
                    reply = c.recv(512)
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("no UDP reply through the published port")
        assert reply == b"from 10.0.2.2: hi"
        lines = p("port", cid).out.splitlines()
        assert f"53/udp -> 127.0.0.1:{port}" in lines
        random_port = int(next(l for l in lines if l.startswith("80/tcp")).rsplit(":", 1)[1])
        host = _host_address()
        with pytest.raises(OSError):  # bound to 127.0.0.1 only
            socket.create_connection((host, random_port), timeout=2).close()
        socket.create_connection(("127.0.0.1", random_port), timeout=2).close()
    finally:
        p("rm", "-f", cid)


def test_port_in_use_fails_cleanly(p):
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        before = p("ps", "-a", "-q").out
        res = p("run", "-d", "--name", "clash", "-p", f"{port}:80", BUSYBOX, "sleep", "100", check=False)
        assert res.rc == 125
        assert res.err.strip() == f"Error: port 0.0.0.0:{port}/tcp is already in use"
        assert p("ps", "-a", "-q").out == before                   # no half-started container
        assert p("container", "exists", "clash", check=False).rc == 1


# ---------------------------------------------------------------- user networks
def test_user_networks_names_aliases_and_isolation(p, host_servers):
    p("network", "create", "front")
    p("network", "create", "back")
    p("network", "create", "--internal", "sealed")
    try:
        p("run", "-d", "--name", "web", "--network", "front", "--network-alias", "www", BUSYBOX,
          "httpd", "-f", "-p", "80", "-h", "/etc")
        same = p("run", "--rm", "--network", "front", BUSYBOX, "sh", "-c",
                 "wget -qO- http://web/hostname; wget -qO- http://www/hostname; "
                 f"wget -qO- http://host.containers.internal:{host_servers['tcp']}/")
        hostname = p("inspect", "web", "--format", "{{.Config.Hostname}}").out.strip()
        assert same.out.splitlines()[:2] == [hostname, hostname]
        assert same.out.splitlines()[2].startswith("hello from the host")   # outbound from a user network
        web_ip = p("inspect", "web").json()[0]["NetworkSettings"]["Networks"]["front"]["IPAddress"]
        other = p("run", "--rm", "--network", "back", BUSYBOX, "sh", "-c",
                  f"nslookup web; echo dns=$?; timeout 5 wget -qO- http://{web_ip}/hostname; echo http=$?", check=False)
        assert "dns=1" in other.out and "http=0" not in other.out and hostname not in other.out
        sealed = p("run", "--rm", "--network", "sealed", BUSYBOX, "sh", "-c",
                   f"timeout 5 wget -qO- http://host.containers.internal:{host_servers['tcp']}/; echo rc=$?",
                   check=False)
        assert "hello" not in sealed.out and "rc=0" not in sealed.out
    finally:
        p("rm", "-f", "web", check=False)
        for n in ("front", "back", "sealed"):
            p("network", "rm", n, check=False)


def test_parallel_starts_get_distinct_addresses(p):
    p("network", "create", "crowd")
    names = [f"crowd{i}" for i in range(10)]
    try:
        def start(name: str):
            return p("run", "-d", "--name", name, "--network", "crowd", BUSYBOX, "sleep", "300", check=False)
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(start, names))
        assert [r.rc for r in results] == [0] * 10, [r.err for r in results if r.rc]
        ips = [p("inspect", n).json()[0]["NetworkSettings"]["Networks"]["crowd"]["IPAddress"] for n in names]
        assert len(set(ips)) == 10, ips
        members = p("network", "inspect", "crowd").json()[0]["Containers"]
        assert sorted(m["IPv4Address"].split("/")[0] for m in members.values()) == sorted(ips)
        ping = p("exec", "crowd0", "timeout", "5", "wget", "-qO-", "http://crowd9:1/", check=False)
        assert "bad address" not in ping.err                          # names resolve across the network
    finally:
        p("rm", "-f", *names, check=False)
        p("network", "rm", "crowd", check=False)
    assert p("network", "inspect", "crowd", check=False).rc != 0


def test_connect_and_disconnect_a_running_container(p):
    p("network", "create", "left")
    p("network", "create", "right")
    try:
        p("run", "-d", "--name", "lserver", "--network", "left", BUSYBOX, "httpd", "-f", "-p", "80", "-h", "/etc")
        p("run", "-d", "--name", "rclient", "--network", "right", BUSYBOX, "sleep", "300")
        fetch = ("exec", "rclient", "timeout", "5", "wget", "-qO-", "http://lserver/hostname")
        assert p(*fetch, check=False).rc != 0
        p("network", "connect", "--alias", "rc", "left", "rclient")
        assert p(*fetch).out.strip() == p("inspect", "lserver", "--format", "{{.Config.Hostname}}").out.strip()
        assert "left" in p("inspect", "rclient").json()[0]["NetworkSettings"]["Networks"]
        p("network", "disconnect", "left", "rclient")
        assert p(*fetch, check=False).rc != 0
        assert p("exec", "rclient", "sh", "-c", "ip -o -4 addr | grep -c 'inet '").out.strip() == "2"  # lo, eth0
        # a container on the default network joins a user network too, and keeps its way out
        p("run", "-d", "--name", "dclient", BUSYBOX, "sleep", "300")
        p("network", "connect", "left", "dclient")
        assert p("exec", "dclient", "timeout", "5", "wget", "-qO-", "http://lserver/hostname").out.strip()
        assert p("exec", "dclient", "sh", "-c", "ip -o -4 addr show eth0").out.split()[3] == "10.0.2.100/24"
    finally:
        p("rm", "-f", "lserver", "rclient", "dclient", check=False)
        p("network", "rm", "left", "right", check=False)


def test_container_network_mode_shares_the_namespace(p):
    p("run", "-d", "--name", "netowner", BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/etc")
    try:
        res = p("run", "--rm", "--network", "container:netowner", BUSYBOX, "sh", "-c",
                "wget -qO- http://127.0.0.1:8080/hostname; ip -o -4 addr show eth0")
        assert "10.0.2.100/24" in res.out
        assert res.out.splitlines()[0] == p("inspect", "netowner", "--format", "{{.Config.Hostname}}").out.strip()
    finally:
        p("rm", "-f", "netowner")


# ---------------------------------------------------------------- clean-up
def _pin(p) -> int | None:
    try:
        return int((p.runroot / "netns.pid").read_text().split()[0])
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_supervisor_leaves_nothing_once_removed(p):
    p("network", "create", "fragile")
    try:
        cid = p("run", "-d", "--network", "fragile", "-p", "127.0.0.1::80", BUSYBOX,
                "httpd", "-f", "-p", "80").out.strip()
        state = p("inspect", cid).json()[0]
        port = int(state["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])
        _wait_http("127.0.0.1", port)          # a port published from a user network serves
        pin = _pin(p)
        assert pin and _alive(pin)
        sup = next(int(d) for d in os.listdir("/proc")
                   if d.isdigit() and "__supervise" in _cmdline(int(d)) and cid in _cmdline(int(d)))
        os.kill(sup, signal.SIGKILL)
        p("rm", "-f", cid)
        assert p("network", "inspect", "fragile").json()[0]["Containers"] == {}
        deadline = time.monotonic() + 5
        while _alive(pin) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pin)                 # the shared namespace went with its last container
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        p("network", "rm", "fragile", check=False)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_zz_no_network_leftovers(p):
    assert p("ps", "-a", "-q").out == ""
    pin = _pin(p)
    assert pin is None or not _alive(pin)
    mine = [int(d) for d in os.listdir("/proc") if d.isdigit() and str(p.root) in _cmdline(int(d))]
    assert [_cmdline(pid) for pid in mine if _alive(pid)] == []     # no supervisor, relay or factory
