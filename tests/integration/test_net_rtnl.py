"""net/rtnl.py against the real kernel: bridges, veth pairs across namespaces, addresses and routes in a
network namespace owned by the store's user namespace (rootless) or by root, checked with sockets,
/sys/class/net and /proc/net — never with `ip`. The driver runs inside `pinnace unshare`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from nsrun import TEST_USER
from testenv import PINNACE_BIN

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "netns_driver.py"


def drive(pinnace, scenario: str) -> dict:
    res = subprocess.run([PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot), "unshare",
                          sys.executable, str(DRIVER), scenario],
                         capture_output=True, text=True, env=pinnace.env, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_loopback_bridge_address_and_routes(pinnace):
    r = drive(pinnace, "bridge")
    assert r["before"] == ["lo"] and r["lo_index"] == 1
    assert r["lo_tcp"] == {"peer": "127.0.0.1", "echo": "PING"}          # lo is up: TCP over loopback works
    assert r["links"] == ["lo", "br0"] and r["sys"] == ["br0", "lo"]
    assert r["br0"] == {"up": True, "mtu": 1500, "master": None, "bridge": True}
    assert r["routes"] == sorted([
        ["br0", "0.0.0.0", "10.99.0.254", "0.0.0.0"],                     # add_default_route
        ["br0", "10.99.0.0", "0.0.0.0", "255.255.255.0"],                 # the kernel's prefix route
        ["br0", "198.51.100.0", "0.0.0.0", "255.255.255.0"],              # on-link route via dev
        ["br0", "192.0.2.0", "10.99.0.7", "255.255.255.0"],               # route via a gateway
    ])
    assert r["src_default"] == "10.99.0.1" and r["src_net"] == "10.99.0.1"
    assert r["inet6"] == ["fd990000000000000000000000000001"]
    assert ["fd9900000000000000000000000000fe", "br0"] in r["route6_default"]
    # four netlink round trips plus the bridge's creation: must stay far below pyroute2's import alone
    assert r["sequence_ms"] < 100, r["sequence_ms"]


def test_veth_pairs_between_namespaces_carry_tcp_and_are_deleted(pinnace):
    r = drive(pinnace, "veth")
    assert r["a_links"] == ["lo", "br0", "vh0", "vm0"] and r["a_sys"] == ["br0", "lo", "vh0", "vm0"]
    assert r["vh0"] == {"up": True, "mtu": 1400, "master": "br0", "bridge": False}
    assert r["b_links_fresh"] == ["lo", "eth0", "vm1"]                   # peer created in B; vm1 moved there
    assert r["eth0"] == {"up": True, "mtu": 1400, "master": None, "bridge": False}
    assert r["b_sys"] == ["eth0", "lo", "vm1"]
    assert ["eth0", "0.0.0.0", "10.99.0.1", "0.0.0.0"] in r["b_routes"]
    assert r["b_src_default"] == "10.99.0.2"
    assert r["b_to_a"] == {"peer": "10.99.0.2", "echo": "PING"}
    assert r["a_to_b"] == {"peer": "10.99.0.1", "echo": "PING"}
    assert r["a_to_b_direct"] == {"peer": "10.99.2.1", "echo": "PING"}
    # deleting one end removes its peer in the other namespace too
    assert r["a_after"] == ["lo", "br0"] and r["a_sys_after"] == ["br0", "lo"]
    assert r["b_after"] == ["lo"] and r["b_sys_after"] == ["lo"]


def test_refusals_are_one_line_errors_naming_the_object(pinnace):
    r = drive(pinnace, "errors")
    for name, e in r.items():
        if name != "links":
            assert e["raised"] and "\n" not in e["message"], (name, e)
    assert r["missing_link"] == {"raised": "NotFound", "message": "network interface 'nosuch0' not found",
                                 "errno": None}
    assert r["delete_missing"]["raised"] == "NotFound" and "'nosuch0'" in r["delete_missing"]["message"]
    assert r["duplicate_bridge"] == {"raised": "NetlinkError", "errno": 17,
                                     "message": "cannot create bridge 'br0': File exists [EEXIST]"}
    assert r["bad_address"]["raised"] == "InvalidArgument" and "10.0.0.300/24" in r["bad_address"]["message"]
    assert r["bad_prefix"]["raised"] == "InvalidArgument" and "0-32" in r["bad_prefix"]["message"]
    assert r["long_name"]["raised"] == "InvalidArgument" and "x" * 16 in r["long_name"]["message"]
    unreachable = r["unreachable_gateway"]
    assert unreachable["raised"] == "NetlinkError" and unreachable["errno"] == 101
    assert unreachable["message"].startswith("cannot add route 192.0.2.0/24 via 10.1.1.1: ")
    assert "[ENETUNREACH]" in unreachable["message"]
    assert r["route_without_target"]["raised"] == "InvalidArgument"
    assert r["links"] == ["lo", "br0"]                                   # nothing half-created


def test_unprivileged_caller_in_the_host_namespace_gets_eperm():
    """Without CAP_NET_ADMIN over the namespace the kernel refuses; the error says so in one line.
    (Setting lo's MTU to the value it already has, so even an unexpected success changes nothing.)"""
    code = ("from pinnace.net import rtnl\nfrom pinnace.errors import PinnaceError\n"
            "try:\n    rtnl.set_mtu('lo', int(open('/sys/class/net/lo/mtu').read()))\n"
            "except PinnaceError as e:\n    print(type(e).__name__, e.errno, e)\nelse:\n    print('no error')\n")
    kw = {"user": TEST_USER, "group": TEST_USER, "extra_groups": []} if os.geteuid() == 0 else {}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd="/", **kw)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "NetlinkError 1 cannot set MTU 65536 on 'lo': Operation not permitted [EPERM]\n"
