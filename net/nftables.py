"""nf_tables NAT redirect rules programmed over raw netlink (no `nft` binary, no pyroute2).

The rootless relay needs every new outbound connection of a network namespace to land on one local
listening port, with the original destination still recoverable (`SO_ORIGINAL_DST` for TCP). nf_tables
does that with a `redirect` in a nat chain; this module speaks just enough of the nfnetlink protocol
(linux/netfilter/nfnetlink.h, nf_tables.h) to install and remove such a table in the caller's current
network namespace. Changes go in one nfnetlink batch, so the kernel applies them atomically.

Everything nf_tables parses as a 32-bit number is big-endian (NLA_BE32); netlink headers are host order.
"""
from __future__ import annotations

import errno as _errno
import os
import _socket as socket  # not `socket`: its enums cost a container's start ~4 ms
import struct

from pinnace.errors import InvalidArgument, PinnaceError

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # acks carry only the header of the request, not all of it
NETLINK_EXT_ACK = 11  # errors carry the kernel's explanation (NLMSGERR_ATTR_MSG)

NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x200, 0x400, 0x800
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 16, 17  # NLMSG_MIN_TYPE, +1
NFPROTO_IPV4 = 2

# enum nf_tables_msg_types
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN = 0, 1, 2, 3
NFT_MSG_NEWRULE = 6

NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 1, 3, 4, 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS = 1, 2, 4
NFTA_LIST_ELEM = 1
NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 2
NFTA_DATA_VALUE = 1
NFTA_META_DREG, NFTA_META_KEY = 1, 2
NFT_META_L4PROTO = 16
NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_OFFSET, NFTA_PAYLOAD_LEN = 1, 2, 3, 4
NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER = 1, 2
NFTA_BITWISE_SREG, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN, NFTA_BITWISE_MASK, NFTA_BITWISE_XOR = 1, 2, 3, 4, 5
NFTA_CMP_SREG, NFTA_CMP_OP, NFTA_CMP_DATA = 1, 2, 3
NFT_CMP_EQ, NFT_CMP_NEQ = 0, 1
NFTA_IMMEDIATE_DREG, NFTA_IMMEDIATE_DATA = 1, 2
NFTA_REDIR_REG_PROTO_MIN, NFTA_REDIR_REG_PROTO_MAX = 1, 2
NFTA_META_SREG = 3
NFT_META_MARK = 3
NFTA_CT_DREG, NFTA_CT_KEY, NFTA_CT_SREG = 1, 2, 4
NFT_CT_MARK = 3
NFTA_TPROXY_FAMILY, NFTA_TPROXY_REG_ADDR, NFTA_TPROXY_REG_PORT = 1, 2, 3
NFTA_DATA_VERDICT, NFTA_VERDICT_CODE = 2, 1
NFT_REG_VERDICT = 0
NFT_REG_1, NFT_REG_2 = 1, 2  # 16-byte registers: each match loads, compares and is done with one

NF_ACCEPT = 1
# hook numbers (enum nf_inet_hooks) and the conventional destination-NAT priority (NF_IP_PRI_NAT_DST)
HOOKS = {"prerouting": 0, "output": 3}
NAT_DST_PRIORITY = -100
MANGLE_PRIORITY = -150
CHAIN = "redirect"

_IPV4_DADDR_OFFSET = 16  # struct iphdr: daddr follows saddr
_RECV_TIMEOUT = 5.0  # the kernel answers at once; this only bounds a wedged socket


# --- attribute encoding -------------------------------------------------------------------------

def _attr(kind: int, data: bytes) -> bytes:
    size = 4 + len(data)
    return struct.pack("=HH", size, kind) + data + b"\0" * (-size % 4)


def _nest(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _be32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack(">I", value & 0xFFFFFFFF))


def _value(kind: int, data: bytes) -> bytes:
    return _nest(kind, _attr(NFTA_DATA_VALUE, data))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(NFTA_LIST_ELEM, _str(NFTA_EXPR_NAME, name), _nest(NFTA_EXPR_DATA, *attrs))


def _nfgen(family: int, res_id: int = 0) -> bytes:
    # struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big-endian)
    return struct.pack(">BBH", family, 0, res_id)


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, pos)
        if size < 4:
            break
        attrs[kind & ~NLA_F_NESTED] = data[pos + 4:pos + size]
        pos += (size + 3) & ~3
    return attrs


# --- rule expressions ---------------------------------------------------------------------------

def _match_l4proto(proto: int) -> list[bytes]:
    return [_expr("meta", _be32(NFTA_META_KEY, NFT_META_L4PROTO), _be32(NFTA_META_DREG, NFT_REG_1)),
            _expr("cmp", _be32(NFTA_CMP_SREG, NFT_REG_1), _be32(NFTA_CMP_OP, NFT_CMP_EQ),
                  _value(NFTA_CMP_DATA, bytes([proto])))]


def _daddr_not_in(network: bytes, prefix: int) -> list[bytes]:
    """`ip daddr != network/prefix`: load the destination, mask it (unless /32), compare."""
    exprs = [_expr("payload", _be32(NFTA_PAYLOAD_DREG, NFT_REG_1),
                   _be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER),
                   _be32(NFTA_PAYLOAD_OFFSET, _IPV4_DADDR_OFFSET), _be32(NFTA_PAYLOAD_LEN, 4))]
    if prefix < 32:
        mask = struct.pack(">I", (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF)
        exprs.append(_expr("bitwise", _be32(NFTA_BITWISE_SREG, NFT_REG_1), _be32(NFTA_BITWISE_DREG, NFT_REG_1),
                           _be32(NFTA_BITWISE_LEN, 4), _value(NFTA_BITWISE_MASK, mask),
                           _value(NFTA_BITWISE_XOR, b"\0\0\0\0")))
    exprs.append(_expr("cmp", _be32(NFTA_CMP_SREG, NFT_REG_1), _be32(NFTA_CMP_OP, NFT_CMP_NEQ),
                       _value(NFTA_CMP_DATA, network)))
    return exprs


def _daddr_is(address: str) -> list[bytes]:
    """`ip daddr == address`."""
    network, _ = _parse_cidr(address + "/32")
    return [_expr("payload", _be32(NFTA_PAYLOAD_DREG, NFT_REG_1), _be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER),
                  _be32(NFTA_PAYLOAD_OFFSET, _IPV4_DADDR_OFFSET), _be32(NFTA_PAYLOAD_LEN, 4)),
            _expr("cmp", _be32(NFTA_CMP_SREG, NFT_REG_1), _be32(NFTA_CMP_OP, NFT_CMP_EQ), _value(NFTA_CMP_DATA, network))]


def _dport_is(port: int) -> list[bytes]:
    """`th dport == port` (TCP and UDP keep the destination port at offset 2)."""
    return [_expr("payload", _be32(NFTA_PAYLOAD_DREG, NFT_REG_1), _be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER),
                  _be32(NFTA_PAYLOAD_OFFSET, 2), _be32(NFTA_PAYLOAD_LEN, 2)),
            _expr("cmp", _be32(NFTA_CMP_SREG, NFT_REG_1), _be32(NFTA_CMP_OP, NFT_CMP_EQ),
                  _value(NFTA_CMP_DATA, struct.pack(">H", port)))]


def _redirect_to(port: int) -> list[bytes]:
    # the port goes into a register in network order; nft_redir reads two bytes from it
    return [_expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_1),
                  _value(NFTA_IMMEDIATE_DATA, struct.pack(">H", port))),
            _expr("redir", _be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1),
                  _be32(NFTA_REDIR_REG_PROTO_MAX, NFT_REG_1))]


def _mark_eq(mark: int, key: str = "meta") -> list[bytes]:
    """`meta mark MARK` or `ct mark MARK` (marks are host-order u32)."""
    load = (_expr("meta", _be32(NFTA_META_KEY, NFT_META_MARK), _be32(NFTA_META_DREG, NFT_REG_1)) if key == "meta"
            else _expr("ct", _be32(NFTA_CT_KEY, NFT_CT_MARK), _be32(NFTA_CT_DREG, NFT_REG_1)))
    return [load, _expr("cmp", _be32(NFTA_CMP_SREG, NFT_REG_1), _be32(NFTA_CMP_OP, NFT_CMP_EQ),
                        _value(NFTA_CMP_DATA, struct.pack("=I", mark)))]


def _set_mark(mark: int, key: str = "meta") -> list[bytes]:
    """`meta mark set MARK` or `ct mark set MARK`."""
    put = _expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_1), _value(NFTA_IMMEDIATE_DATA, struct.pack("=I", mark)))
    if key == "meta":
        return [put, _expr("meta", _be32(NFTA_META_KEY, NFT_META_MARK), _be32(NFTA_META_SREG, NFT_REG_1))]
    return [put, _expr("ct", _be32(NFTA_CT_KEY, NFT_CT_MARK), _be32(NFTA_CT_SREG, NFT_REG_1))]


def _accept() -> list[bytes]:
    return [_expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
                  _nest(NFTA_IMMEDIATE_DATA, _nest(NFTA_DATA_VERDICT, _be32(NFTA_VERDICT_CODE, NF_ACCEPT))))]


def _tproxy_to(address: str, port: int) -> list[bytes]:
    return [_expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_1),
                  _value(NFTA_IMMEDIATE_DATA, socket.inet_aton(address))),
            _expr("immediate", _be32(NFTA_IMMEDIATE_DREG, NFT_REG_2), _value(NFTA_IMMEDIATE_DATA, struct.pack(">H", port))),
            _expr("tproxy", _be32(NFTA_TPROXY_FAMILY, NFPROTO_IPV4), _be32(NFTA_TPROXY_REG_ADDR, NFT_REG_1),
                  _be32(NFTA_TPROXY_REG_PORT, NFT_REG_2))]


def _parse_cidr(cidr: str) -> tuple[bytes, int]:
    addr, _, plen = cidr.partition("/")
    try:
        prefix = int(plen) if plen else 32
        packed = socket.inet_pton(socket.AF_INET, addr)
    except (ValueError, OSError):
        raise InvalidArgument(f"invalid IPv4 network to exclude from the redirect: {cidr!r}") from None
    if not 0 <= prefix <= 32:
        raise InvalidArgument(f"invalid IPv4 network to exclude from the redirect: {cidr!r}")
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return struct.pack(">I", struct.unpack(">I", packed)[0] & mask), prefix


def _check_port(port: int | None, what: str) -> None:
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise InvalidArgument(f"invalid {what} port for the redirect: {port!r}")


def _check_table(table: str) -> None:
    if not table or len(table.encode()) > 255 or "\0" in table:
        raise InvalidArgument(f"invalid nf_tables table name: {table!r}")


# --- netlink transport ----------------------------------------------------------------------------

class _Socket:
    """One NETLINK_NETFILTER socket; requests carry their own sequence numbers, answers are matched to them."""

    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        except OSError as e:
            raise _error("socket(NETLINK_NETFILTER)", e.errno or _errno.EIO, "") from None
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass  # older kernels: plain acks, no explanations
        self.sock.settimeout(_RECV_TIMEOUT)
        self.seq = int.from_bytes(os.urandom(2), "little") << 8

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def message(self, msg_type: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self.seq += 1
        return self.seq, struct.pack("=IHHII", 16 + len(body), msg_type, flags, self.seq, 0) + body

    def send(self, data: bytes, what: str) -> None:
        try:
            self.sock.sendto(data, (0, 0))
        except OSError as e:
            raise _error(what, e.errno or _errno.EIO, "") from None

    def replies(self, what: str):
        """Yield (type, flags, seq, payload) of every message the kernel sends back."""
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except (OSError, TimeoutError) as e:
                raise _error(what, getattr(e, "errno", None) or _errno.ETIMEDOUT, "no answer") from None
            pos = 0
            while pos + 16 <= len(data):
                size, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", data, pos)
                if size < 16:
                    break
                yield mtype, flags, seq, data[pos + 16:pos + size]
                pos += (size + 3) & ~3


def _error(what: str, code: int, detail: str) -> PinnaceError:
    name = _errno.errorcode.get(code, str(code))
    hint = ""
    if code == _errno.EPERM:
        hint = " (the caller needs CAP_NET_ADMIN over this network namespace)"
    elif code in (_errno.EOPNOTSUPP, _errno.EPROTONOSUPPORT, _errno.ENOENT):
        hint = " (is nf_tables with NAT support in this kernel?)" if "NEW" in what or "socket" in what else ""
    why = f": {detail}" if detail else ""
    return PinnaceError(f"nf_tables {what} failed: {name} ({os.strerror(code)}){why}{hint}")


def _ack_error(flags: int, payload: bytes) -> tuple[int, str]:
    """struct nlmsgerr: negative errno, the request's header (capped) or whole request, then TLVs."""
    code = -struct.unpack_from("=i", payload)[0]
    detail = ""
    if flags & NLM_F_ACK_TLVS and len(payload) >= 20:
        orig_len = struct.unpack_from("=I", payload, 4)[0]
        tlv_start = 4 + (16 if flags & NLM_F_CAPPED else (orig_len + 3) & ~3)
        msg = _parse_attrs(payload[tlv_start:]).get(NLMSGERR_ATTR_MSG, b"")
        detail = msg.rstrip(b"\0").decode(errors="replace")
    return code, detail


def _batch(requests: list[tuple[str, int, int, bytes]]) -> tuple[str, int, str] | None:
    """Send (label, nft message type, extra flags, body) requests as one atomic batch and wait for every
    ack. Returns None when the kernel committed it, else (label, errno, kernel's explanation) of the
    first failed request: the kernel then applied none of them."""
    with _Socket() as nl:
        parts: list[bytes] = []
        labels: dict[int, str] = {}
        header = _nfgen(socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES)
        # the batch header itself fails first when the caller may not touch nf_tables (EPERM) or the
        # kernel has none (EOPNOTSUPP): name what the batch was for
        begin, msg = nl.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, header)
        labels[begin] = f"batch for {requests[0][0]}"
        parts.append(msg)
        for label, mtype, flags, body in requests:
            seq, msg = nl.message((NFNL_SUBSYS_NFTABLES << 8) | mtype, NLM_F_REQUEST | NLM_F_ACK | flags, body)
            labels[seq] = label
            parts.append(msg)
        parts.append(nl.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, header)[1])
        nl.send(b"".join(parts), requests[0][0])
        pending = set(labels) - {begin}
        # An aborted batch answers every request that had NLM_F_ACK or failed, so the loop always ends;
        # the first error is the one worth reporting (later ones are usually its consequences).
        for mtype, flags, seq, payload in nl.replies(requests[0][0]):
            if mtype != NLMSG_ERROR or seq not in labels:
                continue
            code, detail = _ack_error(flags, payload)
            if code:
                return labels[seq], code, detail
            pending.discard(seq)
            if not pending:
                return None
    return None


def _commit(requests: list[tuple[str, int, int, bytes]]) -> None:
    failed = _batch(requests)
    if failed:
        raise _error(*failed)


# --- public API -----------------------------------------------------------------------------------

def install_redirect(table: str = "pinnace", *, tcp_port: int, udp_port: int | None = None,
                     hook: str = "output", exclude_cidrs: tuple[str, ...] = ("127.0.0.0/8",)) -> None:
    """Redirect every new outbound TCP connection (and UDP flow, with `udp_port`) of the current network
    namespace whose IPv4 destination is outside `exclude_cidrs` to a local port.

    `hook="output"` catches the namespace's own traffic (it goes to 127.0.0.1:port), `"prerouting"` traffic
    arriving on an interface (it goes to that interface's primary address). The table is replaced as a
    whole, atomically, if it exists. For TCP the original destination is `getsockopt(SOL_IP,
    SO_ORIGINAL_DST)` on the accepted socket.
    """
    _check_table(table)
    _check_port(tcp_port, "TCP")
    _check_port(udp_port, "UDP")
    if tcp_port is None:
        raise InvalidArgument("install_redirect needs a TCP port")
    if hook not in HOOKS:
        raise InvalidArgument(f"invalid nf_tables hook {hook!r}: expected one of {', '.join(HOOKS)}")
    excluded = [e for cidr in exclude_cidrs for e in _daddr_not_in(*_parse_cidr(cidr))]
    fam = _nfgen(NFPROTO_IPV4)
    new_table = fam + _str(NFTA_TABLE_NAME, table)
    body = [
        (f"NEWCHAIN {table}/{CHAIN} (type nat hook {hook})", NFT_MSG_NEWCHAIN, NLM_F_CREATE,
         fam + _str(NFTA_CHAIN_TABLE, table) + _str(NFTA_CHAIN_NAME, CHAIN)
         + _nest(NFTA_CHAIN_HOOK, _be32(NFTA_HOOK_HOOKNUM, HOOKS[hook]), _be32(NFTA_HOOK_PRIORITY, NAT_DST_PRIORITY))
         + _be32(NFTA_CHAIN_POLICY, NF_ACCEPT) + _str(NFTA_CHAIN_TYPE, "nat")),
    ]
    for proto, port in ((socket.IPPROTO_TCP, tcp_port), (socket.IPPROTO_UDP, udp_port)):
        if port is None:
            continue
        exprs = _match_l4proto(proto) + excluded + _redirect_to(port)
        name = "tcp" if proto == socket.IPPROTO_TCP else "udp"
        body.append((f"NEWRULE {table}/{CHAIN} ({name} redirect to :{port})", NFT_MSG_NEWRULE,
                     NLM_F_CREATE | NLM_F_APPEND,
                     fam + _str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, CHAIN)
                     + _nest(NFTA_RULE_EXPRESSIONS, *exprs)))
    # The usual case is a fresh namespace: an exclusive create commits in ~0.5 ms. Replacing a table
    # (create, delete, create in one batch) costs ~15 ms more, as deleting makes the kernel wait for an
    # RCU grace period, so it is only the fallback.
    failed = _batch([(f"NEWTABLE {table}", NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, new_table), *body])
    if failed and failed[1] == _errno.EEXIST and failed[0].startswith("NEWTABLE"):
        _commit([(f"NEWTABLE {table}", NFT_MSG_NEWTABLE, NLM_F_CREATE, new_table),
                 (f"DELTABLE {table}", NFT_MSG_DELTABLE, 0, new_table),
                 (f"NEWTABLE {table}", NFT_MSG_NEWTABLE, NLM_F_CREATE, new_table), *body])
    elif failed:
        raise _error(*failed)


def remove_table(table: str = "pinnace") -> None:
    """Delete the IPv4 table and everything in it; a table that does not exist raises an error (ENOENT)."""
    _check_table(table)
    _commit([(f"DELTABLE {table}", NFT_MSG_DELTABLE, 0, _nfgen(NFPROTO_IPV4) + _str(NFTA_TABLE_NAME, table))])


def tables() -> list[str]:
    """Names of the IPv4 (`ip` family) nf_tables tables of the current network namespace."""
    with _Socket() as nl:
        seq, msg = nl.message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_REQUEST | NLM_F_DUMP,
                              _nfgen(NFPROTO_IPV4))
        nl.send(msg, "GETTABLE")
        names: list[str] = []
        for mtype, flags, rseq, payload in nl.replies("GETTABLE"):
            if rseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return names
            if mtype == NLMSG_ERROR:
                code, detail = _ack_error(flags, payload)
                if code:
                    raise _error("GETTABLE", code, detail)
                continue
            if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
                name = _parse_attrs(payload[4:]).get(NFTA_TABLE_NAME)
                if name is not None:
                    names.append(name.rstrip(b"\0").decode(errors="replace"))
    return names


def install_transparent_rules(table: str = "pinnace", *, tcp_port: int, udp_port: int,
                              tcp_exclude: tuple[str, ...], udp_exclude: tuple[str, ...],
                              always: tuple[str, ...] = (), tproxy_mark: int = 0x1, local_mark: int = 0x3,
                              replace: bool = False, dns: tuple[str, int] | None = None) -> None:
    """The user-mode network's rules for a container's own namespace, in one atomic batch:

    - nat/output: new TCP connections to destinations outside `tcp_exclude` -> redirect to 127.0.0.1:tcp_port
      (the relay reads SO_ORIGINAL_DST);
    - route/output: UDP to destinations outside `udp_exclude` gets `tproxy_mark`, which a policy rule
      (rtnl.add_fwmark_rule + add_local_default_route) loops back through `lo` into prerouting;
      packets of sockets marked `local_mark` (SO_MARK: the relay's transparent sockets that carry published
      ports and UDP replies) mark their conntrack entry, and the container's answers on such connections
      get `local_mark` too, so they are delivered to those sockets instead of leaving by the default route;
    - filter/prerouting: UDP with `tproxy_mark` -> TPROXY to 127.0.0.1:udp_port (IP_RECVORIGDSTADDR there
      gives the original destination, which `redirect` would lose for UDP).
    `always`: addresses relayed even inside an excluded subnet (a user network's gateway, which stands for
    the host as `host.containers.internal`).
    Both marks must share the bit of the policy rule's mask; the TPROXY rule matches `tproxy_mark` exactly.
    `replace`: swap an existing table for the new one atomically (`network connect` to a running container).
    `dns`: (address, port): UDP to address:53 is redirected to 127.0.0.1:port, where the supervisor's DNS
    server listens — not on port 53 itself, which the container's own programs may want (0.0.0.0:53).
    """
    _check_table(table)
    _check_port(tcp_port, "TCP")
    _check_port(udp_port, "UDP")
    tcp_excluded = [e for cidr in tcp_exclude for e in _daddr_not_in(*_parse_cidr(cidr))]
    udp_excluded = [e for cidr in udp_exclude for e in _daddr_not_in(*_parse_cidr(cidr))]
    fam = _nfgen(NFPROTO_IPV4)

    def chain(name: str, kind: str, hook: str, priority: int) -> tuple[str, int, int, bytes]:
        return (f"NEWCHAIN {table}/{name} (type {kind} hook {hook})", NFT_MSG_NEWCHAIN, NLM_F_CREATE,
                fam + _str(NFTA_CHAIN_TABLE, table) + _str(NFTA_CHAIN_NAME, name)
                + _nest(NFTA_CHAIN_HOOK, _be32(NFTA_HOOK_HOOKNUM, HOOKS[hook]), _be32(NFTA_HOOK_PRIORITY, priority))
                + _be32(NFTA_CHAIN_POLICY, NF_ACCEPT) + _str(NFTA_CHAIN_TYPE, kind))

    def rule(chain_name: str, what: str, exprs: list[bytes]) -> tuple[str, int, int, bytes]:
        return (f"NEWRULE {table}/{chain_name} ({what})", NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND,
                fam + _str(NFTA_RULE_TABLE, table) + _str(NFTA_RULE_CHAIN, chain_name)
                + _nest(NFTA_RULE_EXPRESSIONS, *exprs))

    new_table = fam + _str(NFTA_TABLE_NAME, table)
    head = [(f"NEWTABLE {table}", NFT_MSG_NEWTABLE, NLM_F_CREATE, new_table),
            (f"DELTABLE {table}", NFT_MSG_DELTABLE, 0, new_table)] if replace else []
    requests = [
        *head,
        (f"NEWTABLE {table}", NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, new_table),
        chain(CHAIN, "nat", "output", NAT_DST_PRIORITY),
        *([rule(CHAIN, f"dns {dns[0]} to :{dns[1]}", _match_l4proto(socket.IPPROTO_UDP) + _daddr_is(dns[0])
                + _dport_is(53) + _redirect_to(dns[1]))] if dns else []),
        *[rule(CHAIN, f"tcp to {a} redirect to :{tcp_port}",
               _match_l4proto(socket.IPPROTO_TCP) + _daddr_is(a) + _redirect_to(tcp_port)) for a in always],
        rule(CHAIN, f"tcp redirect to :{tcp_port}",
             _match_l4proto(socket.IPPROTO_TCP) + tcp_excluded + _redirect_to(tcp_port)),
        chain("mark", "route", "output", MANGLE_PRIORITY),
        rule("mark", "ct mark from transparent sockets", _mark_eq(local_mark) + _set_mark(local_mark, "ct")),
        rule("mark", "answers to transparent sockets", _mark_eq(local_mark, "ct") + _set_mark(local_mark) + _accept()),
        *[rule("mark", f"udp to {a} to tproxy", _match_l4proto(socket.IPPROTO_UDP) + _daddr_is(a)
               + _set_mark(tproxy_mark)) for a in always],
        rule("mark", "udp to tproxy", _match_l4proto(socket.IPPROTO_UDP) + udp_excluded + _set_mark(tproxy_mark)),
        chain("tproxy", "filter", "prerouting", MANGLE_PRIORITY),
        rule("tproxy", f"udp tproxy to :{udp_port}",
             _mark_eq(tproxy_mark) + _match_l4proto(socket.IPPROTO_UDP) + _tproxy_to("127.0.0.1", udp_port)),
    ]
    _commit(requests)
