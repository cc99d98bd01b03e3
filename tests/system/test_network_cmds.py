"""User networks as records: network create, ls, inspect, rm, prune, exists, connect/disconnect of a
container that is not running (running containers and traffic are tests/system/test_user_networks)."""
from __future__ import annotations

import json
import subprocess

import pytest
from testenv import PINNACE_BIN, REGISTRY

from pinnace.net import ipam

pytestmark = pytest.mark.anyuser

IMG = f"{REGISTRY}/fixtures/busybox"


def test_create_list_inspect_remove(pinnace):
    assert pinnace("network", "create", "front").out == "front\n"
    assert pinnace("network", "create", "--subnet", "172.30.0.0/16", "--gateway", "172.30.9.9", "--internal",
                   "--label", "team=a", "-l", "tier=db", "back").out == "back\n"
    anon = pinnace("network", "create").out.strip()
    assert anon == "pinnace1"
    table = pinnace("network", "ls").out.splitlines()
    assert table[0].split() == ["NETWORK", "ID", "NAME", "DRIVER"] and len(table) == 4
    assert [row.split()[1:] for row in table[1:]] == [["back", "bridge"], ["front", "bridge"], ["pinnace1", "bridge"]]
    assert pinnace("network", "ls", "-q").out == "back\nfront\npinnace1\n"

    info = pinnace("network", "inspect", "front").json()[0]
    assert info["Name"] == "front" and len(info["Id"]) == 64 and info["Driver"] == "bridge"
    assert info["IPAM"] == {"Driver": "default", "Options": {},
                            "Config": [{"Subnet": "10.89.0.0/24", "Gateway": "10.89.0.1"}]}
    assert info["Internal"] is False and info["EnableIPv6"] is False and info["Scope"] == "local"
    assert info["Containers"] == {} and info["Labels"] == {} and info["Created"].endswith("Z")
    back = pinnace("network", "inspect", "back").json()[0]
    assert back["IPAM"]["Config"] == [{"Subnet": "172.30.0.0/16", "Gateway": "172.30.9.9"}]
    assert back["Internal"] is True and back["Labels"] == {"team": "a", "tier": "db"}
    subnet = pinnace("network", "inspect", anon).json()[0]["IPAM"]["Config"][0]["Subnet"]
    assert subnet == "10.89.1.0/24"  # the next free default, not front's

    # the file the runtime reads, exactly as documented in net/ipam.py
    config = json.loads((pinnace.root / "networks" / "back.json").read_text())
    assert config == {"name": "back", "id": back["Id"], "driver": "bridge", "created": back["Created"],
                      "subnet": "172.30.0.0/16", "gateway": "172.30.9.9", "internal": True,
                      "labels": {"team": "a", "tier": "db"}, "options": {}, "interface": "pn-" + back["Id"][:10],
                      "dns_enabled": True}

    # an address held on the network (as a running container's supervisor takes it) shows in inspect
    ipam.allocate(str(pinnace.root), "front", "c" * 64, "web", ["site"])
    held = pinnace("network", "inspect", "front").json()[0]["Containers"]
    assert list(held) == ["c" * 64] and held["c" * 64]["Name"] == "web"
    assert held["c" * 64]["IPv4Address"] == "10.89.0.2/24" and len(held["c" * 64]["EndpointID"]) == 64

    # filters and formats
    assert pinnace("network", "ls", "-q", "--filter", "label=team=a").out == "back\n"
    assert pinnace("network", "ls", "-q", "--filter", "label=tier").out == "back\n"
    assert pinnace("network", "ls", "-q", "--filter", "name=fro").out == "front\n"
    assert pinnace("network", "ls", "-q", "--filter", "id=" + back["Id"][:6]).out == "back\n"
    assert pinnace("network", "ls", "-q", "--filter", "driver=macvlan").out == ""
    assert pinnace("network", "ls", "--format", "{{.Name}} {{.ID}} {{.Subnets}}", "--filter", "name=back").out == \
        f"back {back['Id'][:12]} 172.30.0.0/16\n"
    assert [n["Name"] for n in pinnace("network", "ls", "--format", "json").json()] == ["back", "front", "pinnace1"]
    res = pinnace("network", "ls", "--filter", "colour=red", check=False)
    assert res.rc == 125 and "colour" in res.err

    # by id prefix too; exists
    assert pinnace("network", "inspect", "--format", "{{.Name}}", back["Id"][:12]).out == "back\n"
    assert pinnace("network", "exists", "front").rc == 0
    assert pinnace("network", "exists", "nope", check=False).rc == 1

    assert pinnace("network", "rm", "front", anon).out == f"front\n{anon}\n"
    assert sorted(p.name for p in (pinnace.root / "networks").iterdir() if not p.name.startswith(".")) == ["back.json"]
    res = pinnace("network", "inspect", "front", check=False)
    assert res.rc == 125 and "no such network front" in res.err
    res = pinnace("network", "rm", "front", check=False)
    assert res.rc == 125 and "no such network front" in res.err
    assert pinnace("network", "ls", "-q").out == "back\n"


@pytest.mark.parametrize("args, message", [
    (["--", "-bad"], "invalid network name"),
    (["a/b"], "invalid network name"),
    (["a b"], "invalid network name"),
    (["host"], "reserved"), (["none"], "reserved"), (["bridge"], "reserved"), (["container:web"], "reserved"),
    (["--subnet", "10.1.2.3/24", "n"], "host bits are set (did you mean 10.1.2.0/24?)"),
    (["--subnet", "10.1.2.0", "n"], "invalid subnet"),
    (["--subnet", "10.1.300.0/24", "n"], "invalid subnet"),
    (["--subnet", "10.1.2.0/33", "n"], "invalid subnet"),
    (["--subnet", "10.1.2.0/31", "n"], "between /8 and /30"),
    (["--subnet", "fd00::/64", "n"], "invalid subnet"),
    (["--subnet", "10.1.2.0/24", "--gateway", "10.1.3.1", "n"], "is not in subnet 10.1.2.0/24"),
    (["--subnet", "10.1.2.0/24", "--gateway", "10.1.2.0", "n"], "network address"),
    (["--subnet", "10.1.2.0/24", "--gateway", "10.1.2.255", "n"], "broadcast address"),
    (["--subnet", "10.1.2.0/24", "--gateway", "gw", "n"], "invalid gateway"),
    (["--gateway", "10.89.0.9", "n"], "--gateway needs --subnet"),
    (["-d", "macvlan", "n"], "unsupported network driver"),
    (["--ipv6", "n"], "IPv6"),
    (["-o", "mtu=1400", "n"], "not supported"),
])
def test_invalid_create(pinnace, args, message):
    res = pinnace("network", "create", *args, check=False)
    assert res.rc == 125 and message in res.err, res
    assert res.err.count("\n") == 1 and res.err.startswith("Error: ")
    assert pinnace("network", "ls", "-q").out == ""


def test_duplicates_and_overlaps(pinnace):
    pinnace("network", "create", "--subnet", "10.20.0.0/16", "wide")
    res = pinnace("network", "create", "wide", check=False)
    assert res.rc == 125 and "network with name wide already exists" in res.err
    assert pinnace("network", "create", "--ignore", "wide").out == "wide\n"
    res = pinnace("network", "create", "--subnet", "10.20.5.0/24", "inside", check=False)
    assert res.rc == 125 and "overlaps 10.20.0.0/16 of network wide" in res.err
    res = pinnace("network", "create", "--subnet", "10.0.0.0/8", "outside", check=False)
    assert res.rc == 125 and "overlaps" in res.err
    assert pinnace("network", "ls", "-q").out == "wide\n"


def test_concurrent_creates(pinnace):
    def race(names: list[str]) -> list[subprocess.CompletedProcess]:
        procs = [pinnace.popen("network", "create", n, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for n in names]
        return [(p.wait(timeout=60), p.stdout.read().decode(), p.stderr.read().decode()) for p in procs]

    same = race(["same"] * 8)
    assert sorted(rc for rc, _, _ in same) == [0] + [125] * 7, same
    assert all("already exists" in err for rc, _, err in same if rc)
    distinct = race([f"n{i}" for i in range(8)])
    assert [rc for rc, _, _ in distinct] == [0] * 8, distinct
    subnets = [n["IPAM"]["Config"][0]["Subnet"] for n in pinnace("network", "ls", "--format", "json").json()]
    assert len(subnets) == 9 and len(set(subnets)) == 9  # no two racing creates took one default subnet


def _container_networks(pinnace, cid: str) -> dict:
    return json.loads((pinnace.root / "containers" / cid / "networks.json").read_text())


def test_connect_disconnect_a_created_container(pinnace):
    pinnace("pull", "-q", IMG)
    cid = pinnace("create", "--name", "app", IMG, "true").out.strip()
    pinnace("network", "create", "n1")
    pinnace("network", "create", "n2")
    assert pinnace("network", "connect", "--alias", "api", "--alias", "v1.api", "n1", "app").out == ""
    pinnace("network", "connect", "n2", cid[:12])
    assert _container_networks(pinnace, cid) == {"n1": {"aliases": ["api", "v1.api"]}, "n2": {"aliases": []}}
    res = pinnace("network", "connect", "n1", "app", check=False)
    assert res.rc == 125 and "already connected" in res.err
    for args, message in ((["nope", "app"], "no such network nope"), (["n1", "ghost"], "no such container ghost"),
                          (["--alias", "-x", "n1", "app"], "invalid network alias")):
        res = pinnace("network", "connect", *args, check=False)
        assert res.rc == 125 and message in res.err, res

    res = pinnace("network", "rm", "n1", check=False)  # in use: the error names the container
    assert res.rc == 125 and "in use by container(s) app" in res.err
    assert pinnace("network", "prune", "-f").out == ""  # both are used

    pinnace("network", "disconnect", "n1", "app")
    assert _container_networks(pinnace, cid) == {"n2": {"aliases": []}}
    res = pinnace("network", "disconnect", "n1", "app", check=False)
    assert res.rc == 125 and "not connected" in res.err
    pinnace("network", "disconnect", "-f", "n1", "app")
    assert pinnace("network", "prune", "-f").out == "n1\n"

    pinnace("create", "--name", "hosted", "--network", "host", IMG, "true")
    res = pinnace("network", "connect", "n2", "hosted", check=False)
    assert res.rc == 125 and "host" in res.err

    # rm -f takes the containers that use the network with it
    assert pinnace("network", "rm", "-f", "n2").out == "n2\n"
    assert pinnace("ps", "-a", "--format", "{{.Names}}").out == "hosted\n"
    assert pinnace("network", "ls", "-q").out == ""


def test_prune(pinnace):
    pinnace("network", "create", "-l", "keep=yes", "kept")
    pinnace("network", "create", "-l", "keep=no", "dropped")
    pinnace("network", "create", "other")
    res = pinnace("network", "prune", check=False)  # no terminal, no --force
    assert res.rc == 125 and "--force" in res.err
    assert pinnace("network", "prune", "-f", "--filter", "label=keep=no").out == "dropped\n"
    assert pinnace("network", "prune", "-f", "--filter", "until=1h").out == ""  # all younger than an hour
    assert sorted(pinnace("network", "prune", "-f").out.split()) == ["kept", "other"]
    assert pinnace("network", "ls", "-q").out == ""


def test_help_does_not_need_a_store(tmp_path):
    res = subprocess.run([PINNACE_BIN, "--root", str(tmp_path / "r"), "network", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and "connect" in res.stdout and not (tmp_path / "r").exists()
