"""`network connect` / `network disconnect` of a running container: a veth more (or less) in its namespace.

The container's namespace and the shared one (net/sharedns.py) are both owned by our user namespace, so a
forked child of the CLI can enter each in turn (setns; a fresh child because the CLI may have threads).
The nf_tables table is replaced so the new network's subnet stays inside (not relayed to the host). The
supervisor's DNS server reads the container's networks.json again on its next query. A container keeps
the way out it started with: connecting an internal-only container to a normal network gives it that
network's containers, not the outside (the relay's listeners are made when it starts).
"""
from __future__ import annotations

import json
import os

_CLONE_NEWNET = 0x40000000


def _container(container_dir: str) -> tuple[dict, dict]:
    from pinnace.errors import InvalidArgument
    from pinnace.runtime import ctrstate
    with open(os.path.join(container_dir, "config.json")) as f:
        ann = json.load(f).get("annotations", {})
    state = ctrstate.effective_state(container_dir)
    if not ctrstate.is_running(state):
        raise InvalidArgument("the container is not running")
    if ann.get("io.pinnace.network") not in ("bridge", "usermode"):
        raise InvalidArgument(f"a container with --network {ann.get('io.pinnace.network') or 'host/none'} "
                              "cannot be connected while running (stop it first)")
    return ann, state


def live_connect(container_dir: str, network: dict, aliases: list[str]) -> None:
    from pinnace.net import ipam, sharedns
    from pinnace.runtime import ctrstate
    ann, state = _container(container_dir)
    root, runroot, cid = ann["io.pinnace.root"], ann["io.pinnace.runroot"], ann["io.pinnace.id"]
    net_state = dict(state.get("network") or {})
    networks = dict(net_state.get("networks") or {})
    if network["name"] in networks:
        return
    with sharedns.SharedNetnsLock(runroot):
        shared = sharedns.ensure(runroot)
        alloc = ipam.allocate(root, network["name"], cid, ann.get("io.pinnace.name", ""), list(aliases))
    used = {a.get("ifname") for a in networks.values()} | ({"eth0"} if net_state.get("mode") == "usermode" else set())
    index = next(i for i in range(len(used) + 1) if f"eth{i}" not in used)
    alloc = dict(alloc, ifname=f"eth{index}")
    plan = {"shared_netns": shared, "netns": f"/proc/{state['pid']}/ns/net",
            "iface": {"name": f"eth{index}", "address": f"{alloc['ip']}/{alloc['prefix']}",
                      "bridge": alloc["interface"], "host_side": f"vp{cid[:10]}{index}",
                      "bridge_address": f"{alloc['gateway']}/{alloc['prefix']}"},
            "rules": _rules(net_state, [*(a["subnet"] for a in networks.values()), alloc["subnet"]])}
    try:
        _in_child(_connect, plan)
    except BaseException:
        ipam.release(root, network["name"], cid)
        raise
    networks[network["name"]] = alloc
    net_state["networks"] = networks
    ctrstate.update_state(container_dir, network=net_state)


def live_disconnect(container_dir: str, network: dict) -> None:
    from pinnace.net import ipam
    from pinnace.runtime import ctrstate
    ann, state = _container(container_dir)
    net_state = dict(state.get("network") or {})
    networks = dict(net_state.get("networks") or {})
    alloc = networks.pop(network["name"], None)
    if alloc is not None:
        plan = {"netns": f"/proc/{state['pid']}/ns/net", "address": alloc["ip"],
                "rules": _rules(net_state, [a["subnet"] for a in networks.values()])}
        _in_child(_disconnect, plan)
    ipam.release(ann["io.pinnace.root"], network["name"], ann["io.pinnace.id"])
    net_state["networks"] = networks
    ctrstate.update_state(container_dir, network=net_state)


def remove_bridge(runroot: str, interface: str) -> None:
    """Take a removed network's bridge out of the shared namespace (if that is running)."""
    from pinnace.net import sharedns
    if not os.path.isdir(runroot):
        return
    with sharedns.SharedNetnsLock(runroot):
        pid = sharedns.pin_pid(runroot)
        if pid is not None:
            _in_child(_delete_bridge, {"netns": f"/proc/{pid}/ns/net", "name": interface})


def _delete_bridge(plan: dict) -> None:
    from pinnace.net import rtnl
    from pinnace.errors import NotFound
    from pinnace.runtime import syscalls
    syscalls.setns(os.open(plan["netns"], os.O_RDONLY | os.O_CLOEXEC), _CLONE_NEWNET)
    try:
        rtnl.delete_link(plan["name"])
    except NotFound:
        pass  # never brought up (no container ever ran on it since the namespace started)


def _rules(net_state: dict, subnets: list[str]) -> dict:
    from pinnace.net.container_net import BRIDGE_DNS
    excluded = [*(net_state.get("base_exclude") or ["127.0.0.0/8"]), *subnets]
    dns = net_state.get("dns") or [BRIDGE_DNS, 53]
    udp_excluded = excluded + ([f"{dns[0]}/32"] if not dns[0].startswith("127.") else [])
    return {"outbound": net_state.get("outbound", False), "published": net_state.get("published", False),
            "dns": dns, "udp_exclude": udp_excluded,
            "tcp_exclude": excluded, "always": net_state.get("always", [])}


def _connect(plan: dict) -> None:
    from pinnace.net import netns_setup, rtnl
    from pinnace.runtime import syscalls
    iface = plan["iface"]
    container = os.open(plan["netns"], os.O_RDONLY | os.O_CLOEXEC)
    shared = os.open(plan["shared_netns"], os.O_RDONLY | os.O_CLOEXEC)
    syscalls.setns(shared, _CLONE_NEWNET)
    netns_setup.ensure_bridge(iface["bridge"], iface["bridge_address"])
    rtnl.create_veth(iface["host_side"], iface["name"], peer_netns_fd=container)
    rtnl.set_master(iface["host_side"], iface["bridge"])
    rtnl.set_up(iface["host_side"])
    syscalls.setns(container, _CLONE_NEWNET)
    rtnl.add_address(iface["name"], iface["address"])
    rtnl.set_up(iface["name"])
    netns_setup.install_rules(plan["rules"], replace=True)


def _disconnect(plan: dict) -> None:
    from pinnace.net import netns_setup, rtnl
    from pinnace.runtime import syscalls
    syscalls.setns(os.open(plan["netns"], os.O_RDONLY | os.O_CLOEXEC), _CLONE_NEWNET)
    name = rtnl.link_with_address(plan["address"])
    if name:
        rtnl.delete_link(name)  # its peer on the bridge goes with it
    netns_setup.install_rules(plan["rules"], replace=True)


def _in_child(func, plan: dict) -> None:  # noqa: ANN001
    """Run func(plan) in a forked child (it changes network namespace); its error comes back as ours."""
    from pinnace.errors import NamespaceError
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_fd)
            func(plan)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_fd, str(exc).encode()[:4000] or type(exc).__name__.encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    message = b""
    while chunk := os.read(read_fd, 4096):
        message += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise NamespaceError(message.decode(errors="replace") or "changing the container's network failed")
