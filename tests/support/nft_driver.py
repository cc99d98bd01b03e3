"""Run inside `pinnace unshare` (root of an unprivileged user namespace): make a network namespace of our
own with lo and a bridge holding 10.77.0.1/24 plus a default route, install the nf_tables redirect from
pinnace.net.nftables, and report as JSON what TCP and UDP clients and the local listeners see.

The rtnetlink calls are written out here on purpose (the engine's own rtnl module is tested elsewhere).
"""
from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

from pinnace.net import nftables
from pinnace.runtime import syscalls

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP_RECVORIGDSTADDR = IP_ORIGDSTADDR = 20  # linux/in.h
TCP_PORT, UDP_PORT, LOCAL_PORT = 15001, 15053, 15002

RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFF_UP = 0x1
IFLA_IFNAME, IFLA_LINKINFO, IFLA_INFO_KIND = 3, 18, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5


def _attr(kind: int, data: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(data), kind) + data + b"\0" * (-len(data) % 4)


def rtnl(msg_type: int, flags: int, body: bytes) -> None:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.sendto(struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, 1, 0) + body,
                 (0, 0))
        data = s.recv(65536)
        err = -struct.unpack_from("=i", data, 16)[0]
        if err:
            raise OSError(err, f"rtnetlink message {msg_type}: {os.strerror(err)}")


def link_up(index: int) -> None:
    rtnl(RTM_NEWLINK, 0, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, IFF_UP, IFF_UP))


def setup_network() -> None:
    syscalls.unshare(syscalls.CLONE_NEWNET)
    link_up(socket.if_nametoindex("lo"))
    rtnl(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)
         + _attr(IFLA_IFNAME, b"br0\0") + _attr(IFLA_LINKINFO | 0x8000, _attr(IFLA_INFO_KIND, b"bridge")))
    index = socket.if_nametoindex("br0")
    link_up(index)
    addr = socket.inet_aton("10.77.0.1")
    rtnl(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, index)
         + _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr))
    # default via 10.77.0.254 dev br0: table main, protocol boot, scope universe, unicast
    rtnl(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0)
         + _attr(RTA_GATEWAY, socket.inet_aton("10.77.0.254")) + _attr(RTA_OIF, struct.pack("=I", index)))


def sockaddr_in(raw: bytes) -> list:
    """struct sockaddr_in: host-order family, then port and address in network order."""
    return [socket.inet_ntoa(raw[4:8]), struct.unpack_from(">H", raw, 2)[0]]


def tcp_probe(listener: socket.socket, dest: tuple[str, int]) -> dict:
    with socket.create_connection(dest, timeout=2) as client:
        conn, _ = listener.accept()
        with conn:
            orig = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            return {"original_dst": sockaddr_in(orig), "accepted_local": list(conn.getsockname()),
                    "client_peer": list(client.getpeername())}


def udp_probe(server: socket.socket, dest: tuple[str, int]) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(2)
        client.sendto(b"query", dest)
        data, ancdata, _flags, peer = server.recvmsg(2048, socket.CMSG_SPACE(16))
        origdst = [sockaddr_in(d) for level, kind, d in ancdata if level == socket.SOL_IP and kind == IP_ORIGDSTADDR]
        server.sendto(b"answer:" + data, peer)  # conntrack must rewrite the source back to `dest`
        answer, source = client.recvfrom(2048)
        return {"data": data.decode(), "origdst": origdst[0] if origdst else None,
                "answer": answer.decode(), "answer_from": list(source)}


def connect_outcome(dest: tuple[str, int], timeout: float) -> str:
    try:
        with socket.create_connection(dest, timeout=timeout):
            return "connected"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return e.__class__.__name__ if e.errno is None else os.strerror(e.errno)


def per_connection_us(listener: socket.socket, dest: tuple[str, int], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        with socket.create_connection(dest, timeout=2):
            listener.accept()[0].close()
    return (time.perf_counter() - start) / rounds * 1e6


def error_in_child_userns() -> str:
    """install_redirect from a fresh user namespace, which does not own our network namespace."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            try:
                nftables.install_redirect("other", tcp_port=TCP_PORT)
                msg = "no error"
            except Exception as e:  # noqa: BLE001 - reported to the test
                msg = f"{type(e).__name__}: {e}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    os.waitpid(pid, 0)
    return msg


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    setup_network()
    listener = socket.create_server(("0.0.0.0", TCP_PORT), backlog=64)
    local = socket.create_server(("127.0.0.1", LOCAL_PORT))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    udp.bind(("127.0.0.1", UDP_PORT))  # replies must leave from the address the redirect chose (see test)
    udp.settimeout(2)
    report: dict = {"tables_before": nftables.tables()}

    start = time.perf_counter()
    nftables.install_redirect(tcp_port=TCP_PORT, udp_port=UDP_PORT)
    report["install_ms"] = (time.perf_counter() - start) * 1e3
    report["tables"] = nftables.tables()
    report["foreign_userns"] = error_in_child_userns()
    report["tcp"] = tcp_probe(listener, ("203.0.113.5", 80))
    report["tcp_other"] = tcp_probe(listener, ("10.77.0.200", 443))  # the bridge's subnet too
    report["udp"] = udp_probe(udp, ("198.51.100.7", 53))
    report["loopback_local"] = tcp_probe(local, ("127.0.0.1", LOCAL_PORT))
    report["loopback_closed_port"] = connect_outcome(("127.0.0.1", LOCAL_PORT + 1), 1)
    if rounds:
        report["redirected_us"] = per_connection_us(listener, ("203.0.113.5", 80), rounds)
        report["direct_us"] = per_connection_us(listener, ("127.0.0.1", TCP_PORT), rounds)
    start = time.perf_counter()
    nftables.install_redirect(tcp_port=LOCAL_PORT, exclude_cidrs=("127.0.0.0/8", "203.0.113.0/24"))
    report["replace_ms"] = (time.perf_counter() - start) * 1e3
    report["after_replace_excluded"] = connect_outcome(("203.0.113.5", 80), 0.3)
    report["after_replace_other"] = tcp_probe(local, ("192.0.2.1", 22))["original_dst"]

    start = time.perf_counter()
    nftables.remove_table("pinnace")
    report["remove_ms"] = (time.perf_counter() - start) * 1e3
    report["tables_after"] = nftables.tables()
    report["after_remove"] = connect_outcome(("203.0.113.5", 80), 0.3)
    try:
        nftables.remove_table("pinnace")
        report["remove_again"] = "no error"
    except Exception as e:  # noqa: BLE001 - the test checks its class and message
        report["remove_again"] = f"{type(e).__name__}: {e}"
    print(json.dumps(report))


if __name__ == "__main__":
    main()
