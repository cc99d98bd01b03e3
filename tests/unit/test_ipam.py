"""net/ipam.py: address allocation for user networks (real files, real flock, real processes) and the
name lookup the embedded DNS server uses."""
from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest

from pinnace.errors import Conflict, NotFound
from pinnace.net import ipam


def make_network(root, name: str, subnet: str = "10.89.0.0/24", gateway: str = "10.89.0.1",
                 internal: bool = False) -> dict:
    os.makedirs(os.path.join(root, "networks"), exist_ok=True)
    net = {"name": name, "id": "ab" * 32, "driver": "bridge", "created": "2024-01-01T00:00:00Z",
           "subnet": subnet, "gateway": gateway, "internal": internal, "labels": {}, "options": {},
           "interface": "pn-abababab", "dns_enabled": True}
    with open(ipam.network_path(str(root), name), "w") as f:
        json.dump(net, f)
    return net


def test_addresses_are_distinct_and_skip_network_gateway_and_broadcast(tmp_path):
    make_network(tmp_path, "small", "192.168.7.8/29", "192.168.7.12")
    got = [ipam.allocate(str(tmp_path), "small", f"c{i}", f"name{i}", [])["ip"] for i in range(5)]
    assert got == ["192.168.7.9", "192.168.7.10", "192.168.7.11", "192.168.7.13", "192.168.7.14"]
    with pytest.raises(Conflict, match=r"no free address left in 192\.168\.7\.8/29"):
        ipam.allocate(str(tmp_path), "small", "c5", "name5", [])
    lease = ipam.allocate(str(tmp_path), "small", "c0", "name0", [])
    assert lease == {"ip": "192.168.7.9", "prefix": 29, "gateway": "192.168.7.12", "subnet": "192.168.7.8/29",
                     "interface": "pn-abababab", "internal": False}


def test_allocation_is_idempotent_and_updates_names(tmp_path):
    make_network(tmp_path, "n", internal=True)
    first = ipam.allocate(str(tmp_path), "n", "c1", "web", ["a"])
    again = ipam.allocate(str(tmp_path), "n", "c1", "web2", ["b", "c"])
    assert first["ip"] == again["ip"] == "10.89.0.2" and again["internal"] is True
    assert ipam.members(str(tmp_path), "n") == {"c1": {"ip": "10.89.0.2", "name": "web2", "aliases": ["b", "c"]}}


def test_release_frees_the_address(tmp_path):
    make_network(tmp_path, "n")
    a = ipam.allocate(str(tmp_path), "n", "c1", "one", [])["ip"]
    b = ipam.allocate(str(tmp_path), "n", "c2", "two", [])["ip"]
    ipam.release(str(tmp_path), "n", "c1")
    ipam.release(str(tmp_path), "n", "c1")  # twice is fine
    ipam.release(str(tmp_path), "gone", "c1")  # no such network: nothing to release
    assert set(ipam.members(str(tmp_path), "n")) == {"c2"}
    assert ipam.allocate(str(tmp_path), "n", "c3", "three", [])["ip"] == a != b


def test_entries_of_dead_containers_are_reclaimed(tmp_path):
    make_network(tmp_path, "tiny", "10.0.0.0/30", "10.0.0.1")  # one usable address: .2
    assert ipam.allocate(str(tmp_path), "tiny", "dead", "x", [])["ip"] == "10.0.0.2"
    with pytest.raises(Conflict):
        ipam.allocate(str(tmp_path), "tiny", "new", "y", [], alive=lambda cid: True)
    lease = ipam.allocate(str(tmp_path), "tiny", "new", "y", [], alive=lambda cid: cid != "dead")
    assert lease["ip"] == "10.0.0.2" and set(ipam.members(str(tmp_path), "tiny")) == {"new"}


def test_unknown_or_hostile_network_names(tmp_path):
    make_network(tmp_path, "n")
    assert ipam.load_network(str(tmp_path), "n")["subnet"] == "10.89.0.0/24"
    for name in ("missing", "../n", "n/../n", "", ".hidden"):
        assert ipam.load_network(str(tmp_path), name) is None
    with pytest.raises(NotFound):
        ipam.allocate(str(tmp_path), "missing", "c", "c", [])
    with pytest.raises(NotFound):
        ipam.allocate(str(tmp_path), "../n", "c", "c", [])
    assert ipam.members(str(tmp_path), "missing") == ipam.members(str(tmp_path), "../n") == {}
    ipam.release(str(tmp_path), "../n", "c")
    assert ipam.resolver(str(tmp_path), ["../n"])("c") is None


def _allocate_many(root: str, worker: int, start: float, out) -> None:  # noqa: ANN001 - a Queue
    while time.time() < start:  # all workers begin together, so they contend for the lock
        pass
    try:
        ips = [ipam.allocate(root, "busy", f"w{worker}-{i}", f"w{worker}-{i}", [])["ip"] for i in range(5)]
        out.put((worker, ips, os.getpid()))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put((worker, repr(exc), os.getpid()))


def test_ten_processes_allocating_at_once_get_distinct_addresses(tmp_path):
    make_network(tmp_path, "busy")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_allocate_many, args=(str(tmp_path), w, start, out)) for w in range(10)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len({pid for _, _, pid in results}) == 10  # really ten processes
    ips = [ip for _, got, _ in results for ip in (got if isinstance(got, list) else pytest.fail(got))]
    assert len(ips) == 50 and len(set(ips)) == 50
    assert not {"10.89.0.0", "10.89.0.1", "10.89.0.255"} & set(ips)
    members = ipam.members(str(tmp_path), "busy")
    assert len(members) == 50 and {m["ip"] for m in members.values()} == set(ips)
    assert [f for f in os.listdir(tmp_path / "networks") if ".tmp-" in f] == []


def test_resolver_names_aliases_short_ids_and_network_scope(tmp_path):
    root = str(tmp_path)
    make_network(root, "front")
    make_network(root, "back", "10.89.1.0/24", "10.89.1.1")
    make_network(root, "other", "10.89.2.0/24", "10.89.2.1")
    web = "1234567890ab" + "c" * 52
    ipam.allocate(root, "front", web, "web", ["site", "WWW"])
    ipam.allocate(root, "back", web, "web", [])
    ipam.allocate(root, "back", "d" * 64, "db", ["postgres"])
    ipam.allocate(root, "other", "e" * 64, "hidden", [])
    lookup = ipam.resolver(root, ["front", "back"])
    assert lookup("web") == ["10.89.0.2", "10.89.1.2"]
    assert lookup("WEB.") == ["10.89.0.2", "10.89.1.2"]
    assert lookup("www") == lookup("site") == lookup("site.front") == ["10.89.0.2"]
    assert lookup("1234567890ab") == ["10.89.0.2", "10.89.1.2"]
    assert lookup("postgres") == lookup("db.back") == lookup("db.dns.podman") == ["10.89.1.3"]
    assert lookup("db.front") is None
    assert lookup("hidden") is None and lookup("example.com") is None
    # a container that arrives later is found (the file's mtime changed); one that leaves is forgotten
    ipam.allocate(root, "front", "f" * 64, "late", ["newcomer"])
    assert lookup("newcomer") == ["10.89.0.3"]
    ipam.release(root, "back", "d" * 64)
    assert lookup("postgres") is None
    assert lookup("web") == ["10.89.0.2", "10.89.1.2"]


def test_resolver_reads_files_only_when_they_change(tmp_path, monkeypatch):
    root = str(tmp_path)
    make_network(root, "n")
    ipam.allocate(root, "n", "a" * 64, "a", [])
    lookup = ipam.resolver(root, ["n"])
    reads = []
    real = ipam._read_members
    monkeypatch.setattr(ipam, "_read_members", lambda path: reads.append(path) or real(path))
    for _ in range(100):
        assert lookup("a") == ["10.89.0.2"]
    assert len(reads) == 1
    ipam.allocate(root, "n", "b" * 64, "b", [])
    assert lookup("b") == ["10.89.0.3"]
    assert len(reads) == 3  # the allocation's own read, then the lookup's re-read
