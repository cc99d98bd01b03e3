"""Test driver for net/rtnl.py, run inside the namespace holder via `pinnace unshare`:

    pinnace --root R --runroot RR unshare PYTHON netns_driver.py SCENARIO

It unshares its own network namespace (owned by the holder's user namespace when rootless, so the
host's interfaces are never touched), runs SCENARIO (bridge | veth | errors) with rtnl only — no `ip`
— and prints one JSON object of what it observed through sysfs, /proc/net and real sockets.
sysfs shows the network namespace of whoever mounted it, so each namespace gets its own sysfs mount
(in a private mount namespace of this process: nothing outlives it).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

from pinnace.errors import PinnaceError
from pinnace.net import rtnl
from pinnace.runtime import syscalls


SYS = {}  # netns name -> its sysfs mount


def new_netns(name: str) -> int:
    """Unshare a fresh network namespace, mount a sysfs for it at /mnt/NAME, and return an fd that keeps
    it alive and lets us come back."""
    if not SYS:
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        syscalls.mount("tmpfs", "/mnt", "tmpfs", 0, "size=64k")
    syscalls.unshare(syscalls.CLONE_NEWNET)
    SYS[name] = f"/mnt/{name}"
    os.mkdir(SYS[name])
    syscalls.mount("sysfs", SYS[name], "sysfs", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def sys_links(ns: str) -> list[str]:
    return sorted(os.listdir(f"{SYS[ns]}/class/net"))


def routes() -> list[list[str]]:
    """/proc/net/route as [iface, destination, gateway, mask] in dotted quads."""
    def dotted(hexle: str) -> str:
        return socket.inet_ntoa(int(hexle, 16).to_bytes(4, "little"))
    out = []
    with open("/proc/net/route") as f:
        next(f)
        for line in f:
            p = line.split()
            out.append([p[0], dotted(p[1]), dotted(p[2]), dotted(p[7])])
    return sorted(out)


def source_for(dst: str) -> str:
    """The local address the kernel picks for `dst` (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return s.getsockname()[0]


def listener(addr: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.bind((addr, 0))
    s.listen(4)
    return s


def exchange(server: socket.socket, dst: str) -> dict:
    """Connect to `server` (reached at `dst`) from the current namespace; what the server saw."""
    with socket.create_connection((dst, server.getsockname()[1]), timeout=5) as c:
        conn, peer = server.accept()
        with conn:
            c.sendall(b"ping")
            got = conn.recv(16)
            conn.sendall(got.upper())
            back = c.recv(16)
    return {"peer": peer[0], "echo": back.decode()}


def link_facts(ns: str, name: str) -> dict:
    base = f"{SYS[ns]}/class/net/{name}"
    master = os.path.join(base, "master")
    return {"up": bool(int(open(f"{base}/flags").read(), 16) & 1), "mtu": int(open(f"{base}/mtu").read()),
            "master": os.path.basename(os.readlink(master)) if os.path.exists(master) else None,
            "bridge": os.path.isdir(f"{base}/bridge")}


def bridge() -> dict:
    new_netns("a")
    out = {"before": rtnl.list_links(), "lo_index": rtnl.link_index("lo")}
    t0 = time.perf_counter()
    rtnl.setup_namespace_link("br0", "10.99.0.1/24", "10.99.0.254")
    out["sequence_ms"] = (time.perf_counter() - t0) * 1000
    with listener("127.0.0.1") as srv:
        out["lo_tcp"] = exchange(srv, "127.0.0.1")
    rtnl.add_route("198.51.100.0/24", dev="br0")
    rtnl.add_route("192.0.2.0/24", gateway="10.99.0.7")
    rtnl.add_address("br0", "fd99::1/64")
    rtnl.add_default_route("fd99::fe", "br0")
    out.update(links=rtnl.list_links(), sys=sys_links("a"), br0=link_facts("a", "br0"), routes=routes(),
               src_default=source_for("203.0.113.9"), src_net=source_for("192.0.2.1"),
               inet6=sorted(line.split()[0] for line in open("/proc/net/if_inet6") if line.startswith("fd99")),
               route6_default=[[line.split()[4], line.split()[9]] for line in open("/proc/net/ipv6_route")
                               if line.startswith("0" * 32 + " 00 ")])
    return out


def veth() -> dict:
    fd_a = new_netns("a")
    fd_b = new_netns("b")                     # created from inside A, like a container's under the rootless netns
    syscalls.setns(fd_a, syscalls.CLONE_NEWNET)
    out: dict = {}
    rtnl.set_up("lo")
    rtnl.create_bridge("br0")
    rtnl.add_address("br0", "10.99.0.1/24")
    rtnl.set_up("br0")
    rtnl.create_veth("vh0", "eth0", peer_netns_fd=fd_b)   # peer born in B: no clash with a name in A
    rtnl.set_master("vh0", "br0")
    rtnl.set_mtu("vh0", 1400)
    rtnl.set_up("vh0")
    rtnl.create_veth("vm0", "vm1")
    rtnl.set_netns("vm1", fd_b)
    rtnl.add_address("vm0", "10.99.2.1/30")
    rtnl.set_up("vm0")
    out["a_links"], out["a_sys"], out["vh0"] = rtnl.list_links(), sys_links("a"), link_facts("a", "vh0")
    server_a = listener("10.99.0.1")

    syscalls.setns(fd_b, syscalls.CLONE_NEWNET)
    out["b_links_fresh"] = rtnl.list_links()
    rtnl.set_up("lo")
    rtnl.set_mtu("eth0", 1400)
    rtnl.add_address("eth0", "10.99.0.2/24")
    rtnl.set_up("eth0")
    rtnl.add_default_route("10.99.0.1", "eth0")
    rtnl.add_address("vm1", "10.99.2.2/30")
    rtnl.set_up("vm1")
    out["b_sys"], out["eth0"], out["b_routes"] = sys_links("b"), link_facts("b", "eth0"), routes()
    out["b_src_default"] = source_for("203.0.113.9")
    server_b = listener("0.0.0.0")
    out["b_to_a"] = exchange(server_a, "10.99.0.1")           # B -> bridge in A over the veth

    syscalls.setns(fd_a, syscalls.CLONE_NEWNET)
    out["a_to_b"] = exchange(server_b, "10.99.0.2")           # A -> B through the bridge
    out["a_to_b_direct"] = exchange(server_b, "10.99.2.2")    # over the pair moved with set_netns
    server_a.close()
    server_b.close()

    rtnl.delete_link("vh0")
    rtnl.delete_link("vm0")
    out["a_after"] = rtnl.list_links()
    out["a_sys_after"] = sys_links("a")
    syscalls.setns(fd_b, syscalls.CLONE_NEWNET)
    out["b_after"] = rtnl.list_links()
    out["b_sys_after"] = sys_links("b")
    return out


def errors() -> dict:
    new_netns("a")
    rtnl.create_bridge("br0")
    attempts = {
        "missing_link": lambda: rtnl.add_address("nosuch0", "10.0.0.1/24"),
        "delete_missing": lambda: rtnl.delete_link("nosuch0"),
        "duplicate_bridge": lambda: rtnl.create_bridge("br0"),
        "bad_address": lambda: rtnl.add_address("br0", "10.0.0.300/24"),
        "bad_prefix": lambda: rtnl.add_address("br0", "10.0.0.1/33"),
        "long_name": lambda: rtnl.create_veth("x" * 16, "y"),
        "unreachable_gateway": lambda: rtnl.add_route("192.0.2.0/24", gateway="10.1.1.1"),
        "route_without_target": lambda: rtnl.add_route("192.0.2.0/24"),
    }
    out = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            out[name] = {"raised": None}
        except PinnaceError as exc:
            out[name] = {"raised": type(exc).__name__, "message": str(exc), "errno": getattr(exc, "errno", None)}
    out["links"] = rtnl.list_links()
    return out


if __name__ == "__main__":
    print(json.dumps({"bridge": bridge, "veth": veth, "errors": errors}[sys.argv[1]]()))
