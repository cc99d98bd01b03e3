"""`--network usermode` (preview of the networking milestone): the container has its own network namespace
with an address and a default route; outbound TCP is carried by the supervisor's relay, and the gateway
name `host.containers.internal` reaches the host's own loopback."""
from __future__ import annotations

import http.server
import threading

import pytest

pytestmark = pytest.mark.anyuser
IMG = "127.0.0.1:5000/fixtures/busybox"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"hello {self.path} from {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def host_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def p(busybox_image):
    return busybox_image[0]


def test_attached_container_reaches_the_hosts_loopback(p, host_server):
    res = p("run", "--rm", "--network", "usermode", IMG, "sh", "-c",
            f"grep host.containers.internal /etc/hosts; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; "
            f"wget -qO- http://host.containers.internal:{host_server}/attached")
    lines = res.out.splitlines()
    assert lines[0].split()[:2] == ["10.0.2.2", "host.containers.internal"]
    assert lines[1] == "inet 10.0.2.100/24"
    assert lines[2] == "hello /attached from 127.0.0.1"   # the relay connects from the host's loopback


def test_detached_container_relays_through_its_fresh_supervisor(p, host_server):
    cid = p("run", "-d", "--network", "usermode", IMG, "sleep", "1000").out.strip()
    try:
        for i in range(3):  # several connections through one relay
            out = p("exec", cid, "wget", "-qO-", f"http://host.containers.internal:{host_server}/n{i}").out
            assert out == f"hello /n{i} from 127.0.0.1\n"
        refused = p("exec", cid, "wget", "-qO-", "-T", "5", "http://host.containers.internal:1/", check=False)
        assert refused.rc != 0                               # nothing listens there: an error, not a hang
    finally:
        p("rm", "-f", cid)


def test_network_none_stays_isolated(p, host_server):
    res = p("run", "--rm", "--network", "none", IMG, "wget", "-qO-", "-T", "2",
            f"http://10.0.2.2:{host_server}/", check=False)
    assert res.rc != 0
