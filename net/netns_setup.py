"""What runs inside a container's fresh network namespace before its command: interfaces, routes, rules,
and the sockets the supervisor serves from outside (executor.start hands them over by SCM_RIGHTS).

`plan` (a JSON-able dict the supervisor builds, net/container_net.py):
    mode          "usermode" | "bridge"
    interfaces    [{"name": "eth0", "address": "10.0.2.100/24", "extra": ["10.0.2.3/24"],
                    "bridge": "pn-…", "host_side": "veth…", "bridge_address": "10.89.0.1/24"}]
                  usermode: a lone bridge device in the container's namespace (no dummy devices here);
                  bridge: a veth whose other end joins `bridge` in the per-user shared namespace
    shared_netns  path of the shared namespace (bridge mode)
    gateway       the default route's gateway, or None (internal networks: no way out)
    outbound      install the redirect/TPROXY rules and make the relay's listeners
    tcp_exclude, udp_exclude   destinations that stay in the namespace (loopback, own and network subnets)
    dns           (address, port) the DNS socket binds to
Returns [the namespace itself (an nsfs fd: the supervisor's socket factory enters it even after the
container exited)] + [tcp listener, udp listener] (with `outbound`) + [dns socket] (with `dns`).

Marks and the policy rule: see nftables.install_transparent_rules; TABLE routes marked packets to `lo`.
"""
from __future__ import annotations

import _socket
import os

LISTEN_PORT = 59999        # inside the container's namespace: the relay's TCP and UDP listeners
DNS_PORT = 59998           # 127.0.0.1:DNS_PORT: the DNS server, reached by a redirect of <dns address>:53
TPROXY_MARK, LOCAL_MARK, MARK_MASK, TABLE = 0x1, 0x3, 0x1, 100
IP_TRANSPARENT, IP_RECVORIGDSTADDR = 19, 20
_CLONE_NEWNET = 0x40000000


def configure(plan: dict) -> list[int]:
    from pinnace.net import rtnl
    rtnl.set_up("lo")
    if any(iface.get("bridge") for iface in plan["interfaces"]):
        _attach_veths(plan)
    for iface in plan["interfaces"]:
        if not iface.get("bridge"):  # user-mode's eth0: a lone device that only carries the address
            rtnl.create_bridge(iface["name"])
        rtnl.add_address(iface["name"], iface["address"])
        for extra in iface.get("extra", ()):
            rtnl.add_address(iface["name"], extra)
        rtnl.set_up(iface["name"])
    if plan.get("gateway"):
        rtnl.add_default_route(plan["gateway"], plan.get("gateway_dev") or plan["interfaces"][0]["name"])
    fds: list[int] = [os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)]
    try:
        if plan.get("outbound") or plan.get("published"):
            rtnl.add_fwmark_rule(TPROXY_MARK, MARK_MASK, TABLE)
            rtnl.add_local_default_route(TABLE)
        if plan.get("outbound"):
            fds.append(_listener(_socket.SOCK_STREAM))
            fds.append(_listener(_socket.SOCK_DGRAM))
        install_rules(plan)
        if plan.get("dns"):
            dns = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
            dns.bind(("127.0.0.1", DNS_PORT))
            fds.append(dns.detach())
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def install_rules(plan: dict, *, replace: bool = False) -> None:
    """The nf_tables table of the plan. Without a way out, published ports still need their answers
    routed to the relay's sockets, and DNS its redirect."""
    from pinnace.net import nftables
    everything = ("0.0.0.0/0",)
    nftables.install_transparent_rules(
        tcp_port=LISTEN_PORT, udp_port=LISTEN_PORT,
        tcp_exclude=tuple(plan["tcp_exclude"]) if plan.get("outbound") else everything,
        udp_exclude=tuple(plan["udp_exclude"]) if plan.get("outbound") else everything,
        always=tuple(plan.get("always", ())) if plan.get("outbound") else (),
        tproxy_mark=TPROXY_MARK, local_mark=LOCAL_MARK, replace=replace,
        dns=(plan["dns"][0], DNS_PORT) if plan.get("dns") else None)


def _listener(kind: int) -> int:
    sock = _socket.socket(_socket.AF_INET, kind)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if kind == _socket.SOCK_DGRAM:
            sock.setsockopt(_socket.SOL_IP, IP_TRANSPARENT, 1)        # TPROXY delivers only to these
            sock.setsockopt(_socket.SOL_IP, IP_RECVORIGDSTADDR, 1)    # where each datagram was going
        sock.bind(("127.0.0.1", LISTEN_PORT))
        if kind == _socket.SOCK_STREAM:
            sock.listen(512)
        return sock.detach()
    except BaseException:
        sock.close()
        raise


def _attach_veths(plan: dict) -> None:
    """One veth per network: `eth<N>` created here, its peer created in the shared namespace and put on
    the network's bridge there (the bridge is made on first use; concurrent first uses race benignly)."""
    from pinnace.net import rtnl
    from pinnace.runtime import syscalls
    own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    shared = os.open(plan["shared_netns"], os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(shared, _CLONE_NEWNET)
        try:
            for iface in [i for i in plan["interfaces"] if i.get("bridge")]:
                ensure_bridge(iface["bridge"], iface["bridge_address"])
                rtnl.create_veth(iface["host_side"], iface["name"], peer_netns_fd=own)
                rtnl.set_master(iface["host_side"], iface["bridge"])
                rtnl.set_up(iface["host_side"])
        finally:
            syscalls.setns(own, _CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(shared)


def ensure_bridge(name: str, address: str) -> None:
    """The network's bridge in the shared namespace (current), with the gateway address, up."""
    from pinnace.net import rtnl
    import errno
    try:
        rtnl.create_bridge(name)
    except rtnl.NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise
    try:
        rtnl.add_address(name, address)
    except rtnl.NetlinkError as exc:
        if exc.errno != errno.EEXIST:
            raise
    rtnl.set_up(name)
