"""User networks on disk, and their address management (IPAM).

Layout under the store root (the engine writes the config; everything else only reads it):
  networks/<name>.json       the network's config: name, id, subnet, gateway, interface, internal, …
  networks/<name>.ipam.json  {"<container id>": {"ip", "name", "aliases"}}: who holds which address
  networks/<name>.lock       flock'ed exclusively around every read-modify-write of the ipam file
Files are replaced whole (temp + rename), so readers never take the lock.

The per-container supervisor imports this module, so it stays light: os, json and fcntl only, IPv4 math
on plain ints, no dataclasses or typing at run time.
"""
from __future__ import annotations

import fcntl
import json
import os

from pinnace.errors import Conflict, NotFound, StorageError

DIR = "networks"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def valid_name(name: str) -> bool:
    """Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; it also keeps a name from becoming a path."""
    return bool(name) and name[0].isascii() and name[0].isalnum() and all(c in _NAME_CHARS for c in name) \
        and len(name) <= 200


# -- IPv4 as ints ---------------------------------------------------------------------------------------
def ip_to_int(text: str) -> int:
    """'10.89.0.1' → int; ValueError for anything that is not a dotted quad."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"not an IPv4 address: {text!r}")
    value = 0
    for p in parts:
        octet = int(p)
        if octet > 255:
            raise ValueError(f"not an IPv4 address: {text!r}")
        value = value << 8 | octet
    return value


def int_to_ip(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def parse_cidr(text: str) -> tuple[int, int]:
    """'10.89.0.0/24' → (address as int, prefix length); ValueError when malformed."""
    addr, sep, prefix = text.partition("/")
    if not sep or not prefix.isdigit() or not 0 <= int(prefix) <= 32:
        raise ValueError(f"not an IPv4 subnet: {text!r}")
    return ip_to_int(addr), int(prefix)


def mask(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


# -- files ----------------------------------------------------------------------------------------------
def _path(root: str, name: str, suffix: str) -> str:
    if not valid_name(name):
        raise NotFound(f"no such network {name!r}")
    return os.path.join(root, DIR, name + suffix)


def network_path(root: str, name: str) -> str:
    return _path(root, name, ".json")


def ipam_path(root: str, name: str) -> str:
    return _path(root, name, ".ipam.json")


def lock_path(root: str, name: str) -> str:
    return _path(root, name, ".lock")


def load_network(root: str, name: str) -> dict | None:
    """The network's config, or None when there is no such network."""
    try:
        with open(network_path(root, name)) as f:
            data = json.load(f)
    except NotFound:
        return None
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read network {name}: {exc}") from None
    return data if isinstance(data, dict) else None


def write_json(path: str, data: object, *, sync: bool = False) -> None:
    """Replace path whole (temp + rename): a reader sees the old or the new content, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, sort_keys=True)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _read_members(path: str) -> dict:
    # No fsync on these writes (they are on `run`'s path): after a machine crash the file may be empty,
    # which reads as "nobody" — right then, since no container survived the crash either.
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class _Locked:
    """The network's lock file, flock'ed exclusively (released when the fd closes, also on kill -9)."""

    def __init__(self, root: str, name: str):
        self.path = lock_path(root, name)
        self.fd = -1

    def __enter__(self) -> "_Locked":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def locked(root: str, name: str) -> _Locked:
    return _Locked(root, name)


# -- allocation -----------------------------------------------------------------------------------------
def _lease(net: dict, ip: str) -> dict:
    return {"ip": ip, "prefix": int(net["subnet"].partition("/")[2]), "gateway": net["gateway"],
            "subnet": net["subnet"], "interface": net["interface"], "internal": bool(net.get("internal"))}


def allocate(root: str, name: str, container_id: str, container_name: str, aliases: list,
             alive=None) -> dict:  # noqa: ANN001 - alive: callable(container id) -> bool
    """An address on network `name` for the container: the same one again if it holds one already.

    Never the network address, the gateway or the broadcast address. `alive(cid)` (optional) lets
    entries of containers that are gone be reclaimed first. {"ip","prefix","gateway","subnet",
    "interface","internal"}; Conflict when the subnet is full."""
    with locked(root, name):
        net = load_network(root, name)  # under the lock: a network removed meanwhile is gone
        if net is None:
            raise NotFound(f"no such network {name}")
        path = ipam_path(root, name)
        members = _read_members(path)
        entry = members.get(container_id)
        changed = False
        if alive is not None:
            for cid in [c for c in members if c != container_id]:
                if not alive(cid):
                    del members[cid]
                    changed = True
        if entry is not None:
            want = {"ip": entry["ip"], "name": container_name, "aliases": list(aliases)}
            if want != entry:
                members[container_id] = want
                changed = True
        else:
            try:
                base, prefix = parse_cidr(net["subnet"])
                gateway = ip_to_int(net["gateway"])
                used = {ip_to_int(m["ip"]) for m in members.values() if isinstance(m, dict) and "ip" in m}
            except (KeyError, TypeError, ValueError) as exc:
                raise StorageError(f"network {name}: damaged config or ipam file ({exc})") from None
            broadcast = base | (~mask(prefix) & 0xFFFFFFFF)
            ip = next((a for a in range(base + 1, broadcast) if a != gateway and a not in used), None)
            if ip is None:
                raise Conflict(f"network {name}: no free address left in {net['subnet']} "
                               f"({len(members)} containers hold one)")
            entry = members[container_id] = {"ip": int_to_ip(ip), "name": container_name,
                                             "aliases": list(aliases)}
            changed = True
        if changed:
            write_json(path, members)
        return _lease(net, members[container_id]["ip"])


def release(root: str, name: str, container_id: str) -> None:
    """Give the container's address back; nothing to do when it holds none or the network is gone."""
    if not valid_name(name):
        return
    path = ipam_path(root, name)
    if not os.path.exists(path):
        return
    with locked(root, name):
        members = _read_members(path)
        if members.pop(container_id, None) is not None:
            write_json(path, members)


def members(root: str, name: str) -> dict:
    """{container id: {"ip", "name", "aliases"}} of the network (empty when none or no such network)."""
    return _read_members(ipam_path(root, name)) if valid_name(name) else {}


# -- name resolution ------------------------------------------------------------------------------------
DNS_DOMAIN = "dns.podman"  # Podman's aardvark-dns answers <name>.dns.podman too


def _names_of(cid: str, entry: dict, network: str) -> list:
    names = [entry.get("name") or "", cid[:12]] + list(entry.get("aliases") or [])
    out = []
    for n in names:
        if n:
            n = n.lower()
            out += [n, f"{n}.{network.lower()}", f"{n}.{DNS_DOMAIN}"]
    return out


def resolver(root: str, names: list):  # noqa: ANN201 - callable(qname) -> list[str] | None
    """A lookup over the networks `names`: qname (any case, trailing dot or not) → the addresses of the
    containers it names there (container name, alias, short id; each also as `<n>.<network>` and
    `<n>.dns.podman`), None for a name it does not know. The ipam files are re-read only when their
    modification time changes, so a lookup costs one stat per network."""
    paths = [(n, ipam_path(root, n)) for n in names if valid_name(n)]
    cache = {}  # network -> (stat key, {qname: [ip, …]})

    def table(network: str, path: str) -> dict:
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_ino, st.st_size)
        except OSError:
            return {}
        hit = cache.get(network)
        if hit is not None and hit[0] == key:
            return hit[1]
        entries = {}
        for cid, entry in _read_members(path).items():
            if isinstance(entry, dict) and entry.get("ip"):
                for n in _names_of(cid, entry, network):
                    ips = entries.setdefault(n, [])
                    if entry["ip"] not in ips:
                        ips.append(entry["ip"])
        cache[network] = (key, entries)
        return entries

    def lookup(qname: str) -> list | None:
        q = qname.lower().rstrip(".")
        found = []
        for network, path in paths:
            for ip in table(network, path).get(q, ()):
                if ip not in found:
                    found.append(ip)
        return found or None

    return lookup
