"""The few rtnetlink (NETLINK_ROUTE) operations rootless networking needs, over a raw AF_NETLINK socket.

pyroute2 costs ~145 ms to import and `run` needs only a handful of requests, so this module packs the
kernel structs itself (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/veth.h) and imports
nothing but os, socket, struct and pinnace.errors. Every request asks for an acknowledgement
(NLM_F_ACK), so a refusal surfaces here as one error naming the operation, the object and the errno
(plus the kernel's extended-ack text when it gives one) instead of passing silently.

Every call works in the network namespace the calling thread is in (a netlink socket is bound to the
namespace it was created in); `peer_netns_fd`/`netns_fd` place a link in another namespace through
IFLA_NET_NS_FD, which needs CAP_NET_ADMIN over that namespace too.
"""
from __future__ import annotations

import errno
import os
import _socket as socket  # not `socket`: its enums cost a container's start ~4 ms
import struct

from pinnace.errors import InvalidArgument, NamespaceError, NotFound

__all__ = [
    "NetlinkError", "link_index", "list_links", "set_up", "set_mtu", "create_bridge", "create_veth",
    "set_master", "set_netns", "delete_link", "add_address", "add_route", "add_default_route",
    "add_local_default_route", "add_fwmark_rule", "link_with_address",
]

# linux/netlink.h
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_MULTI, _NLM_F_ACK = 0x1, 0x2, 0x4
_NLM_F_DUMP = 0x300                      # NLM_F_ROOT | NLM_F_MATCH
_NLM_F_EXCL, _NLM_F_CREATE = 0x200, 0x400
_NLM_F_CAPPED, _NLM_F_ACK_TLVS = 0x100, 0x200   # flags of an NLMSG_ERROR answer
_SOL_NETLINK = 270
_NETLINK_CAP_ACK, _NETLINK_EXT_ACK = 10, 11
_NLMSGERR_ATTR_MSG = 1

# linux/rtnetlink.h
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK = 16, 17, 18
_RTM_NEWADDR, _RTM_GETADDR, _RTM_NEWROUTE = 20, 22, 24
_RTM_NEWRULE = 32
_RT_TABLE_MAIN, _RTPROT_BOOT, _RTN_UNICAST, _RTN_LOCAL = 254, 3, 1, 2
_RT_SCOPE_UNIVERSE, _RT_SCOPE_LINK, _RT_SCOPE_HOST = 0, 253, 254
_FR_ACT_TO_TBL = 1
_FRA_PRIORITY, _FRA_FWMARK, _FRA_TABLE, _FRA_FWMASK = 6, 10, 15, 16
_RTA_DST, _RTA_OIF, _RTA_GATEWAY = 1, 4, 5
_IFA_ADDRESS, _IFA_LOCAL, _IFA_BROADCAST = 1, 2, 4

# linux/if_link.h, linux/veth.h, linux/if.h
_IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER, _IFLA_LINKINFO, _IFLA_NET_NS_FD = 3, 4, 10, 18, 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA = 1, 2
_VETH_INFO_PEER = 1
_IFF_UP = 0x1
_NLA_F_NESTED = 0x8000

_NLMSGHDR = struct.Struct("=IHHII")      # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")    # family, (pad), type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")     # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")     # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTATTR = struct.Struct("=HH")           # len, type
_IFNAMSIZ = 16


class NetlinkError(NamespaceError):
    """The kernel refused a netlink request; `errno` is the positive errno it answered with."""

    def __init__(self, message: str, err: int):
        super().__init__(message)
        self.errno = err


# ---------------------------------------------------------------- packing

def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(attrs))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Top-level attributes of a message body from `offset` on (the last one wins for repeated types)."""
    out: dict[int, bytes] = {}
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        out[kind & ~_NLA_F_NESTED] = data[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    return out


def _ifname(name: str) -> str:
    # the kernel answers a long name with a bare EINVAL (or ERANGE): say what is wrong before asking
    if not name or len(name.encode()) >= _IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise InvalidArgument(f"invalid network interface name {name!r} (1-15 bytes, no '/' or spaces)")
    return name


def _ip(text: str, what: str, shown: str | None = None) -> tuple[int, bytes]:
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return family, socket.inet_pton(family, text)
    except (OSError, ValueError):
        raise InvalidArgument(f"invalid {what} {shown or text!r}") from None


def _cidr(text: str, what: str) -> tuple[int, bytes, int]:
    addr, sep, plen = text.partition("/")
    family, packed = _ip(addr, what, repr(text))
    bits = len(packed) * 8
    try:
        prefix = int(plen) if sep else bits
    except ValueError:
        prefix = -1
    if not 0 <= prefix <= bits:
        raise InvalidArgument(f"invalid {what} {text!r}: prefix length must be 0-{bits}")
    return family, packed, prefix


# ---------------------------------------------------------------- transport

_seq = 0


def _next_seq() -> int:
    global _seq
    _seq = (_seq + 1) & 0xFFFFFFFF or 1
    return _seq


def _open() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        # ask for the kernel's reason text (extended ack) and not to echo our request back in errors
        sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
        sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
    except OSError:
        pass
    sock.bind((0, 0))
    return sock


def _fail(what: str, err: int, detail: str = "") -> NetlinkError:
    name = errno.errorcode.get(err, str(err))
    extra = f" ({detail})" if detail else ""
    return NetlinkError(f"cannot {what}: {os.strerror(err)} [{name}]{extra}", err)


def _error_reason(msg: bytes, flags: int) -> str:
    """The extended-ack message text following an NLMSG_ERROR's struct nlmsgerr, if the kernel sent one."""
    if not flags & _NLM_F_ACK_TLVS:
        return ""
    offset = _NLMSGHDR.size + 4
    if flags & _NLM_F_CAPPED:
        offset += _NLMSGHDR.size
    else:
        offset += _NLMSGHDR.unpack_from(msg, offset)[0]
    text = _attrs(msg, _align(offset)).get(_NLMSGERR_ATTR_MSG, b"")
    return text.split(b"\0", 1)[0].decode(errors="replace").rstrip(".")


def _messages(data: bytes):
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        yield kind, flags, seq, data[offset:offset + length]
        offset += _align(length)


def _request(what: str, kind: int, flags: int, body: bytes) -> list[bytes]:
    """Send one request and read until its ack (or, for a dump, NLMSG_DONE). Returns the data messages."""
    seq = _next_seq()
    flags |= _NLM_F_REQUEST | _NLM_F_ACK
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body
    try:
        sock = _open()
    except OSError as exc:
        raise _fail(f"{what}: no netlink socket", exc.errno or errno.EIO) from None
    replies: list[bytes] = []
    try:
        sock.sendto(msg, (0, 0))
        while True:
            data = sock.recv(65536)
            for mkind, mflags, mseq, m in _messages(data):
                if mseq != seq:
                    continue  # not ours (cannot happen on a fresh socket, but cheap to be sure)
                if mkind == _NLMSG_ERROR:
                    err = -struct.unpack_from("=i", m, _NLMSGHDR.size)[0]
                    if err:
                        raise _fail(what, err, _error_reason(m, mflags))
                    return replies
                if mkind == _NLMSG_DONE:
                    return replies
                replies.append(m)
    except OSError as exc:
        raise _fail(what, exc.errno or errno.EIO) from None
    finally:
        sock.close()


def _link_msg(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


# ---------------------------------------------------------------- links

def link_index(name: str) -> int:
    """The interface index of `name` in the current network namespace; NotFound when it has none."""
    try:
        return socket.if_nametoindex(_ifname(name))
    except OSError:
        raise NotFound(f"network interface {name!r} not found") from None


def list_links() -> list[str]:
    """Names of all interfaces of the current network namespace, in index order."""
    links: list[tuple[int, str]] = []
    for m in _request("list network interfaces", _RTM_GETLINK, _NLM_F_DUMP, _link_msg()):
        _fam, _type, index, _flags, _change = _IFINFOMSG.unpack_from(m, _NLMSGHDR.size)
        name = _attrs(m, _NLMSGHDR.size + _IFINFOMSG.size).get(_IFLA_IFNAME, b"")
        links.append((index, name.split(b"\0", 1)[0].decode(errors="replace")))
    return [name for _index, name in sorted(links)]


def set_up(name: str) -> None:
    """Bring `name` up (IFF_UP)."""
    _request(f"set network interface {name!r} up", _RTM_NEWLINK, 0,
             _link_msg(link_index(name), _IFF_UP, _IFF_UP))


def set_mtu(name: str, mtu: int) -> None:
    """Set the MTU of `name`; the device's own limits are the kernel's to check (its message is kept)."""
    if not 0 < mtu < 1 << 31:
        raise InvalidArgument(f"invalid MTU {mtu} for {name!r}")
    _request(f"set MTU {mtu} on {name!r}", _RTM_NEWLINK, 0, _link_msg(link_index(name)) + _u32(_IFLA_MTU, mtu))


def create_bridge(name: str) -> None:
    """Create a bridge (down, no ports); EEXIST (a NetlinkError) when the name is taken."""
    body = _link_msg() + _str(_IFLA_IFNAME, _ifname(name)) + _nest(_IFLA_LINKINFO, _str(_IFLA_INFO_KIND, "bridge"))
    _request(f"create bridge {name!r}", _RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body)


def create_veth(name: str, peer: str, *, netns_fd: int | None = None, peer_netns_fd: int | None = None) -> None:
    """Create the veth pair `name`<->`peer`. Each end is created directly in the namespace behind its fd
    (an open /proc/PID/ns/net or bind-mounted nsfs file) when given, else in the current one; creating
    the peer in place avoids a name clash with an interface of the same name here (e.g. `eth0`)."""
    peer_body = _link_msg() + _str(_IFLA_IFNAME, _ifname(peer))
    if peer_netns_fd is not None:
        peer_body += _u32(_IFLA_NET_NS_FD, peer_netns_fd)
    body = _link_msg() + _str(_IFLA_IFNAME, _ifname(name))
    if netns_fd is not None:
        body += _u32(_IFLA_NET_NS_FD, netns_fd)
    body += _nest(_IFLA_LINKINFO, _str(_IFLA_INFO_KIND, "veth"),
                  _nest(_IFLA_INFO_DATA, _attr(_VETH_INFO_PEER, peer_body)))
    _request(f"create veth pair {name!r}/{peer!r}", _RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body)


def set_master(name: str, bridge: str) -> None:
    """Enslave `name` to the bridge `bridge` (both in the current namespace)."""
    _request(f"attach {name!r} to bridge {bridge!r}", _RTM_NEWLINK, 0,
             _link_msg(link_index(name)) + _u32(_IFLA_MASTER, link_index(bridge)))


def set_netns(name: str, netns_fd: int) -> None:
    """Move `name` into the network namespace behind `netns_fd` (it arrives down, without addresses)."""
    _request(f"move {name!r} to another network namespace", _RTM_NEWLINK, 0,
             _link_msg(link_index(name)) + _u32(_IFLA_NET_NS_FD, netns_fd))


def delete_link(name: str) -> None:
    """Delete `name` (for a veth, the kernel removes its peer too, wherever it is)."""
    _request(f"delete network interface {name!r}", _RTM_DELLINK, 0, _link_msg(link_index(name)))


# ---------------------------------------------------------------- addresses and routes

def add_address(name: str, cidr: str) -> None:
    """Add `cidr` ("10.88.0.2/16", "fd00::2/64") to `name`; IPv4 gets the subnet's broadcast address too.
    The kernel adds the prefix route itself once the link is up."""
    family, packed, prefix = _cidr(cidr, "address")
    index = link_index(name)
    body = _IFADDRMSG.pack(family, prefix, 0, _RT_SCOPE_UNIVERSE, index)
    body += _attr(_IFA_LOCAL, packed) + _attr(_IFA_ADDRESS, packed)
    if family == socket.AF_INET and prefix < 31:
        host_mask = (1 << (32 - prefix)) - 1
        body += _attr(_IFA_BROADCAST, struct.pack("!I", struct.unpack("!I", packed)[0] | host_mask))
    _request(f"add address {cidr} to {name!r}", _RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, body)


def link_with_address(address: str) -> str | None:
    """Name of the interface that has the IPv4 `address`, or None."""
    family, packed = _ip(address, "address")
    for m in _request("list addresses", _RTM_GETADDR, _NLM_F_DUMP, _IFADDRMSG.pack(family, 0, 0, 0, 0)):
        fam, _prefix, _flags, _scope, index = _IFADDRMSG.unpack_from(m, _NLMSGHDR.size)
        attrs = _attrs(m, _NLMSGHDR.size + _IFADDRMSG.size)
        if fam == family and packed in (attrs.get(_IFA_LOCAL), attrs.get(_IFA_ADDRESS)):
            return socket.if_indextoname(index)
    return None


def add_route(dst_cidr: str, gateway: str | None = None, dev: str | None = None) -> None:
    """Add a route to `dst_cidr` in the main table via `gateway` and/or out of `dev` (at least one).
    Without a gateway the destination is on-link (scope link), as `ip route add DST dev DEV` makes it."""
    family, packed, prefix = _cidr(dst_cidr, "route destination")
    if gateway is None and dev is None:
        raise InvalidArgument(f"route to {dst_cidr}: needs a gateway or a device")
    scope = _RT_SCOPE_UNIVERSE if gateway else _RT_SCOPE_LINK
    body = _RTMSG.pack(family, prefix, 0, 0, _RT_TABLE_MAIN, _RTPROT_BOOT, scope, _RTN_UNICAST, 0)
    if prefix:
        # the kernel expects the destination's host bits clear ("Invalid prefix for given prefix length")
        value = int.from_bytes(packed, "big") >> (len(packed) * 8 - prefix) << (len(packed) * 8 - prefix)
        body += _attr(_RTA_DST, value.to_bytes(len(packed), "big"))
    if gateway:
        gw_family, gw = _ip(gateway, "gateway")
        if gw_family != family:
            raise InvalidArgument(f"route to {dst_cidr}: gateway {gateway} is of another address family")
        body += _attr(_RTA_GATEWAY, gw)
    if dev:
        body += _u32(_RTA_OIF, link_index(dev))
    via = (f" via {gateway}" if gateway else "") + (f" dev {dev}" if dev else "")
    _request(f"add route {dst_cidr}{via}", _RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL, body)


def add_local_default_route(table: int, dev: str = "lo") -> None:
    """`ip route add local 0.0.0.0/0 dev lo table TABLE`: everything routed by TABLE is delivered to this
    host's own sockets — the half of transparent proxying that hands marked packets to TPROXY listeners
    and to transparently bound sockets (net/nftables.py marks them, `add_fwmark_rule` picks the table)."""
    body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, table, _RTPROT_BOOT, _RT_SCOPE_HOST, _RTN_LOCAL, 0)
    body += _u32(_RTA_OIF, link_index(dev))
    _request(f"add local default route to table {table}", _RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL, body)


def add_fwmark_rule(mark: int, mask: int, table: int, priority: int = 100) -> None:
    """`ip rule add fwmark MARK/MASK lookup TABLE pref PRIORITY` (IPv4)."""
    # struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action; flags
    body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, table if table < 256 else 0, 0, 0, _FR_ACT_TO_TBL, 0)
    body += _u32(_FRA_FWMARK, mark) + _u32(_FRA_FWMASK, mask) + _u32(_FRA_TABLE, table) + _u32(_FRA_PRIORITY, priority)
    _request(f"add rule fwmark {mark:#x}/{mask:#x} lookup {table}", _RTM_NEWRULE, _NLM_F_CREATE | _NLM_F_EXCL, body)


def add_default_route(gateway: str | None, dev: str | None) -> None:
    """Add the default route (IPv6 when the gateway is an IPv6 address) via `gateway` and/or `dev`."""
    family = socket.AF_INET6 if gateway and ":" in gateway else socket.AF_INET
    add_route("::/0" if family == socket.AF_INET6 else "0.0.0.0/0", gateway, dev)


def setup_namespace_link(name: str, cidr: str, gateway: str) -> None:
    """What a container's own network namespace needs for user-mode networking: lo up, a bridge `name`
    (no dummy devices on every kernel; a bridge works everywhere) with `cidr`, up, and the default route
    via `gateway` — whose traffic the nf_tables redirect hands to the relay."""
    set_up("lo")
    create_bridge(name)
    add_address(name, cidr)
    set_up(name)
    add_default_route(gateway, name)
