"""End-to-end driver of the user-mode outbound path, run inside `pinnace unshare` (the holder's user
namespace; the host's network namespace):

    pinnace unshare PYTHON usernet_driver.py HOST_PORT

A forked child takes a network namespace of its own and sets it up as a container's would be: lo, a
bridge with 10.0.2.100/24 and a default route via the gateway 10.0.2.2 (net/rtnl.py), an nf_tables redirect
of every outbound TCP connection to a listener it creates inside the namespace (net/nftables.py), whose fd
it hands to the parent (SCM_RIGHTS). The parent, still in the host's network namespace, runs net/relay.py on
it with 10.0.2.2 mapped to the host's 127.0.0.1. The child then connects to 10.0.2.2 (the host's server, a
closed port, a 64 MiB download) and the parent prints what it got as JSON.
"""
from __future__ import annotations

import array
import json
import os
import select
import socket
import sys
import time

from pinnace.net import nftables, relay, rtnl
from pinnace.runtime import syscalls

LISTEN_PORT = 15001


def child(sock: socket.socket, host_port: int) -> None:
    result: dict = {}
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        t0 = time.perf_counter()
        rtnl.setup_namespace_link("pn0", "10.0.2.100/24", "10.0.2.2")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", LISTEN_PORT))
        listener.listen(64)
        nftables.install_redirect(tcp_port=LISTEN_PORT)
        result["setup_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        sock.sendmsg([b"L"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [listener.fileno()]))])
        listener.close()
        assert sock.recv(1) == b"G"
        with socket.create_connection(("10.0.2.2", host_port), timeout=5) as c:  # the gateway = host's loopback
            c.sendall(b"ping")
            c.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        result["gateway_reply"] = data.decode()
        try:  # nothing listens on the host's 127.0.0.1:1: the relay resets the connection at once
            with socket.create_connection(("10.0.2.2", 1), timeout=5) as c:
                result["closed_port"] = "connected" if c.recv(1) else "eof"
        except OSError as exc:
            result["closed_port"] = type(exc).__name__
        big = 64 << 20
        with socket.create_connection(("10.0.2.2", host_port), timeout=10) as c:
            c.sendall(b"size")
            c.shutdown(socket.SHUT_WR)
            t0, got = time.perf_counter(), 0
            while chunk := c.recv(1 << 20):
                got += len(chunk)
            result["bulk_bytes"] = got
            result["bulk_gbit_s"] = round(got * 8 / (time.perf_counter() - t0) / 1e9, 2) if got == big else 0
    except BaseException as exc:  # noqa: BLE001
        result["error"] = f"{type(exc).__name__}: {exc}"
    sock.sendall(json.dumps(result).encode())
    sock.close()
    os._exit(0)


def main() -> int:
    host_port = int(sys.argv[1])
    parent_sock, child_sock = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent_sock.close()
        child(child_sock, host_port)
    child_sock.close()
    _, fds, _, _ = socket.recv_fds(parent_sock, 1, 1)
    r = relay.Relay(gateway_map={"10.0.2.2": "127.0.0.1"})
    r.add_outbound_listener(fds[0])
    parent_sock.sendall(b"G")
    out = b""
    while True:
        read, write = r.fds()
        ready_r, ready_w, _ = select.select(read + [parent_sock], write, [], 10)
        if not ready_r and not ready_w:
            break
        for fd in ready_w:
            r.on_writable(fd)
        for fd in ready_r:
            if fd is parent_sock:
                chunk = parent_sock.recv(65536)
                if not chunk:
                    break
                out += chunk
            else:
                r.on_readable(fd)
        else:
            continue
        break
    os.waitpid(pid, 0)
    r.close()
    result = json.loads(out or b"{}")
    result["relay"] = dict(r.stats)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
