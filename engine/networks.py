"""User networks: `network create|ls|inspect|rm|prune|connect|disconnect` over `<root>/networks/`.

A network is a JSON file (net/ipam.py has the layout and the address management the runtime uses); the
containers on it are named by each container's `networks.json` ({network: {"aliases": […]}}), and those
holding an address by the network's ipam file. Files, not SQLite, because the per-container supervisor
reads them with nothing but json.
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import time
from pathlib import Path

from pinnace.engine.network_contract import NetworkCreateOptions, NetworkRecord, NetworkUser
from pinnace.engine.store import Store
from pinnace.errors import Conflict, InvalidArgument, NotFound, PinnaceError, StorageError
from pinnace.net import ipam

# Network modes that `--network` understands by themselves: a user network cannot take their names.
RESERVED = ("host", "none", "bridge", "usermode", "pasta", "slirp4netns", "private")
DEFAULT_POOL = (10, 89)      # default subnets 10.89.N.0/24, as Podman's
LIST_FILTERS = ("name", "label", "driver", "id")
PRUNE_FILTERS = ("label", "until")
CONTAINER_NETWORKS = "networks.json"


def networks_dir(store: Store) -> Path:
    return store.layout.root / ipam.DIR


def _root(store: Store) -> str:
    return str(store.layout.root)


def check_name(name: str) -> None:
    if name in RESERVED or name.startswith("container:") or name.startswith("ns:"):
        raise InvalidArgument(f"network name {name!r} is reserved: it is a --network mode, not a network")
    if not ipam.valid_name(name):
        raise InvalidArgument(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-]* are allowed")


# -- subnets --------------------------------------------------------------------------------------------
def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    shorter = ipam.mask(min(a[1], b[1]))
    return a[0] & shorter == b[0] & shorter


def _host_routes() -> list[tuple[int, int]]:
    """The host's routed subnets (not the default route): a default subnet should not hide them."""
    routes = []
    try:
        with open("/proc/net/route") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return routes
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:  # little-endian hex
            dest = int.from_bytes(bytes.fromhex(fields[1]), "little")
            prefix = bin(int.from_bytes(bytes.fromhex(fields[7]), "little")).count("1")
        except ValueError:
            continue
        if prefix:
            routes.append((dest, prefix))
    return routes


def _parse_subnet(text: str) -> tuple[int, int]:
    try:
        base, prefix = ipam.parse_cidr(text)
    except ValueError:
        raise InvalidArgument(f"invalid subnet {text!r}: expected an IPv4 CIDR like 10.89.0.0/24") from None
    if not 8 <= prefix <= 30:
        raise InvalidArgument(f"invalid subnet {text}: the prefix length must be between /8 and /30")
    if base & ~ipam.mask(prefix) & 0xFFFFFFFF:
        raise InvalidArgument(f"invalid subnet {text}: host bits are set (did you mean "
                              f"{ipam.int_to_ip(base & ipam.mask(prefix))}/{prefix}?)")
    return base, prefix


def _pick_subnet(opts: NetworkCreateOptions, existing: list[NetworkRecord]) -> tuple[str, str]:
    """(subnet, gateway) as asked for, or the first free default; validated."""
    taken = [(n.name, ipam.parse_cidr(n.subnet)) for n in existing]
    if opts.subnet:
        net = _parse_subnet(opts.subnet)
        for name, other in taken:
            if _overlaps(net, other):
                raise Conflict(f"subnet {opts.subnet} overlaps {ipam.int_to_ip(other[0])}/{other[1]} of network "
                               f"{name}")
    else:
        if opts.gateway:
            raise InvalidArgument("--gateway needs --subnet")
        busy = [t for _, t in taken] + _host_routes()
        a, b = DEFAULT_POOL
        candidates = ((a << 24 | b << 16 | n << 8, 24) for n in range(256))
        net = next((c for c in candidates if not any(_overlaps(c, t) for t in busy)), None)
        if net is None:
            raise Conflict(f"no free default subnet left in {a}.{b}.0.0/16: give one with --subnet")
    base, prefix = net
    broadcast = base | (~ipam.mask(prefix) & 0xFFFFFFFF)
    subnet = f"{ipam.int_to_ip(base)}/{prefix}"
    if not opts.gateway:
        return subnet, ipam.int_to_ip(base + 1)
    try:
        gw = ipam.ip_to_int(opts.gateway)
    except ValueError:
        raise InvalidArgument(f"invalid gateway {opts.gateway!r}: expected an IPv4 address") from None
    if gw & ipam.mask(prefix) != base:
        raise InvalidArgument(f"gateway {opts.gateway} is not in subnet {subnet}")
    if gw in (base, broadcast):
        raise InvalidArgument(f"gateway {opts.gateway} is the {'network' if gw == base else 'broadcast'} "
                              f"address of subnet {subnet}")
    return subnet, ipam.int_to_ip(gw)


# -- records --------------------------------------------------------------------------------------------
def _load(store: Store, name: str) -> NetworkRecord | None:
    data = ipam.load_network(_root(store), name)
    if data is None:
        return None
    try:
        return NetworkRecord.from_json(data)
    except (KeyError, TypeError):
        raise StorageError(f"network {name}: {ipam.network_path(_root(store), name)} is damaged") from None


def all_networks(store: Store) -> list[NetworkRecord]:
    try:
        entries = sorted(os.listdir(networks_dir(store)))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        name = entry[:-len(".json")]
        if entry.endswith(".json") and not entry.endswith(".ipam.json") and ipam.valid_name(name):
            rec = _load(store, name)
            if rec is not None:
                out.append(rec)
    return out


def get_network(store: Store, text: str) -> NetworkRecord:
    """By name, full id, or unique id prefix (Docker's order)."""
    if ipam.valid_name(text):
        rec = _load(store, text)
        if rec is not None:
            return rec
    if text and all(c in "0123456789abcdef" for c in text):
        found = [n for n in all_networks(store) if n.id.startswith(text)]
        if len(found) > 1:
            raise InvalidArgument(f"network id prefix {text} is ambiguous ({len(found)} networks)")
        if found:
            return found[0]
    raise NotFound(f"no such network {text}")


def create_network(store: Store, opts: NetworkCreateOptions) -> NetworkRecord:
    from pinnace.storage.locks import FileLock
    if opts.driver not in ("bridge", ""):
        raise InvalidArgument(f"unsupported network driver {opts.driver!r} (only 'bridge')")
    if opts.ipv6:
        raise InvalidArgument("IPv6 networks are not supported (rootless user networks are IPv4 only)")
    if opts.name is not None:
        check_name(opts.name)
    store.layout.create_dirs()
    ndir = networks_dir(store)
    ndir.mkdir(mode=0o700, exist_ok=True)
    # One lock for all creates: two at once must neither both take a name nor both pick the same subnet.
    with FileLock(ndir / ".create.lock"):
        existing = all_networks(store)
        names = {n.name for n in existing}
        name = opts.name or next(f"pinnace{i}" for i in range(1, len(names) + 2) if f"pinnace{i}" not in names)
        if name in names:
            if opts.ignore_existing:
                return next(n for n in existing if n.name == name)
            raise Conflict(f"network with name {name} already exists")
        subnet, gateway = _pick_subnet(opts, existing)
        nid = os.urandom(32).hex()
        ns = time.time_ns()
        created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
        rec = NetworkRecord(name=name, id=nid, driver="bridge", created=created, subnet=subnet, gateway=gateway,
                            internal=opts.internal, labels=dict(opts.labels), options={},
                            interface=f"pn-{nid[:10]}", dns_enabled=True)
        final = ipam.network_path(_root(store), name)
        tmp = f"{final}.tmp-{os.getpid()}"
        ipam.write_json(tmp, rec.to_json(), sync=True)
        try:
            os.link(tmp, final)  # exclusive and atomic: never replaces a network another process made
        except FileExistsError:
            raise Conflict(f"network with name {name} already exists") from None
        finally:
            os.unlink(tmp)
    return rec


# -- listing and inspection -----------------------------------------------------------------------------
def _matches(rec: NetworkRecord, key: str, value: str) -> bool:
    if key == "name":
        return value in rec.name or fnmatch.fnmatchcase(rec.name, value)
    if key == "id":
        return rec.id.startswith(value)
    if key == "driver":
        return rec.driver == value
    k, sep, v = value.partition("=")
    return k in rec.labels and (not sep or rec.labels[k] == v)


def list_networks(store: Store, filters: tuple[str, ...] = ()) -> list[NetworkRecord]:
    from pinnace.engine.image_list import parse_filters
    parsed = parse_filters(filters, LIST_FILTERS, "network")
    return [n for n in all_networks(store) if all(_matches(n, k, v) for k, v in parsed)]


def inspect_dict(store: Store, rec: NetworkRecord) -> dict:
    """Docker's `network inspect` shape; Containers are those holding an address (running ones)."""
    prefix = rec.subnet.partition("/")[2]
    containers = {}
    for cid, entry in sorted(ipam.members(_root(store), rec.name).items()):
        if not isinstance(entry, dict):
            continue
        endpoint = hashlib.sha256(f"{rec.id}/{cid}".encode()).hexdigest()
        containers[cid] = {"Name": entry.get("name", ""), "EndpointID": endpoint,
                           "MacAddress": entry.get("mac", ""), "IPv4Address": f"{entry.get('ip', '')}/{prefix}",
                           "IPv6Address": ""}
    return {"Name": rec.name, "Id": rec.id, "Created": rec.created, "Scope": "local", "Driver": rec.driver,
            "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": {}, "Config": [{"Subnet": rec.subnet, "Gateway": rec.gateway}]},
            "Internal": rec.internal, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Containers": containers, "Options": dict(rec.options), "Labels": dict(rec.labels)}


# -- containers on a network ----------------------------------------------------------------------------
def read_container_networks(cdir: Path) -> dict:
    import json
    try:
        data = json.loads((cdir / CONTAINER_NETWORKS).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read {cdir / CONTAINER_NETWORKS}: {exc}") from None
    return data if isinstance(data, dict) else {}


def users(store: Store, name: str) -> list[NetworkUser]:
    """Containers (any state) whose networks.json names the network."""
    if not store.layout.db_path.exists():
        return []
    from pinnace.storage.containers import ContainerStore
    found = []
    for c in ContainerStore(store.layout, store.db).list():
        try:
            nets = read_container_networks(store.layout.containers_dir / c.id)
        except StorageError:
            continue
        if name in nets:
            found.append(NetworkUser(c.id, c.name, tuple((nets[name] or {}).get("aliases") or ())))
    return found


def remove_network(store: Store, text: str, *, force: bool = False, timeout: float | None = None) -> str:
    from pinnace.engine import containers
    rec = get_network(store, text)
    using = users(store, rec.name)
    if using and not force:
        raise Conflict(f"network {rec.name} is in use by container(s) {', '.join(u.name for u in using)}: "
                       "remove them first or use --force")
    for u in using:
        try:
            containers.remove(store, u.id, force=True, timeout=timeout)
        except NotFound:
            pass  # removed meanwhile
    root = _root(store)
    with ipam.locked(root, rec.name):  # an allocation in flight finishes first, later ones find no network
        for path in (ipam.network_path(root, rec.name), ipam.ipam_path(root, rec.name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.unlink(ipam.lock_path(root, rec.name))
        except FileNotFoundError:
            pass
    from pinnace.net import sharedns
    if sharedns.pin_pid(str(store.layout.runroot)) is not None:
        from pinnace.net.bridge import remove_bridge
        store.join_userns()
        try:  # its bridge in the shared namespace; left there, it would only sit idle until that stops
            remove_bridge(str(store.layout.runroot), rec.interface)
        except PinnaceError:
            pass
    return rec.name


def prune_networks(store: Store, filters: tuple[str, ...] = ()) -> list[str]:
    from pinnace.engine.containers import _until
    from pinnace.engine.image_list import parse_filters
    parsed = parse_filters(filters, PRUNE_FILTERS, "network prune")
    removed = []
    for rec in all_networks(store):
        if any(not _matches(rec, "label", v) for k, v in parsed if k == "label"):
            continue
        if any(_created(rec) >= _until(v) for k, v in parsed if k == "until"):
            continue
        if users(store, rec.name):
            continue
        try:
            removed.append(remove_network(store, rec.name))
        except (NotFound, Conflict):
            pass  # removed, or taken into use, meanwhile
    return removed


def _created(rec: NetworkRecord) -> float:
    import calendar
    try:
        return float(calendar.timegm(time.strptime(rec.created[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return 0.0


# -- connect / disconnect -------------------------------------------------------------------------------
def _write_container_networks(cdir: Path, nets: dict) -> None:
    ipam.write_json(str(cdir / CONTAINER_NETWORKS), nets)


def connect(store: Store, network: str, container: str, aliases: tuple[str, ...] = ()) -> None:
    from pinnace.engine import containers
    rec = get_network(store, network)
    for alias in aliases:
        if not ipam.valid_name(alias):
            raise InvalidArgument(f"invalid network alias {alias!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-]* are allowed")
    store.open_for_write()  # a running container is changed inside the user namespace
    c = containers.get(store, container)
    mode = str(c.rec.record.get("Options", {}).get("network") or "")
    if mode == "host" or mode.startswith("container:"):
        raise Conflict(f"container {c.name} shares the network namespace of {mode}: it cannot join network "
                       f"{rec.name}")
    with containers.locked(c):
        nets = read_container_networks(c.dir)
        if rec.name in nets:
            raise Conflict(f"container {c.name} is already connected to network {rec.name}")
        if containers.is_running(c.state()):
            from pinnace.net.bridge import live_connect  # the runtime side: imported only when needed
            live_connect(str(c.dir), rec.to_json(), list(aliases))
        nets[rec.name] = {"aliases": list(aliases)}
        _write_container_networks(c.dir, nets)


def disconnect(store: Store, network: str, container: str, *, force: bool = False) -> None:
    from pinnace.engine import containers
    store.open_for_write()
    c = containers.get(store, container)
    try:
        rec = get_network(store, network)
    except NotFound:
        if not force:
            raise
        rec = None  # -f: forget a network that is gone
    name = rec.name if rec is not None else network
    with containers.locked(c):
        nets = read_container_networks(c.dir)
        if name not in nets and not force:
            raise Conflict(f"container {c.name} is not connected to network {name}")
        if rec is not None and containers.is_running(c.state()):
            from pinnace.net.bridge import live_disconnect
            try:
                live_disconnect(str(c.dir), rec.to_json())
            except PinnaceError:
                if not force:
                    raise
        if rec is not None and ipam.valid_name(name):
            ipam.release(_root(store), name, c.id)
        if name in nets:
            del nets[name]
            _write_container_networks(c.dir, nets)
