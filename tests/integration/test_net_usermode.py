"""The user-mode outbound path end to end (issue-4 groundwork): a network namespace set up with
net/rtnl.py, its TCP redirected by net/nftables.py to a listener made inside it, carried by net/relay.py
from the host's network namespace to a server on the host's 127.0.0.1 through the gateway address."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from testenv import PINNACE_BIN

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "usernet_driver.py"
BULK = 64 << 20


def serve(server: socket.socket, stop: threading.Event) -> None:
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            if data == b"size":
                block = b"x" * (1 << 20)
                for _ in range(BULK >> 20):
                    conn.sendall(block)
            else:
                conn.sendall(b"pong:" + data)


def test_outbound_tcp_reaches_the_hosts_loopback_through_the_gateway(pinnace):
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(server, stop), daemon=True)
    thread.start()
    try:
        res = subprocess.run([PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot), "unshare",
                              sys.executable, str(DRIVER), str(server.getsockname()[1])],
                             capture_output=True, text=True, env=pinnace.env, timeout=120)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    print(r)
    assert "error" not in r, r
    assert r["gateway_reply"] == "pong:ping"
    assert r["closed_port"] in ("ConnectionResetError", "ConnectionRefusedError", "eof"), r
    assert r["bulk_bytes"] == BULK
    assert r["relay"]["accepted"] >= 3
