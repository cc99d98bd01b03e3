"""A container's networking as its supervisor runs it: the plan for its namespace, the relays, DNS, ports.

Lifecycle, driven by runtime/supervisor.py:
    net = ContainerNetwork.from_spec(spec, container_dir)   # None: host, none, or an external runtime
    plan = net.prepare()          # before each start: addresses (IPAM), published ports bound (errors here
                                  # fail the start cleanly), the plan net/netns_setup.configure runs inside
    net.started(init_pid, fds)    # the fds configure() made inside the namespace: relays and DNS start
    ... net.fds() / on_readable / on_writable / tick() in the supervisor's loop ...
    net.stopped()                 # the container exited (a restart calls prepare() again)
    net.release()                 # the end: addresses back to IPAM, the shared namespace stopped if unused

Modes (annotation io.pinnace.network): "usermode" (the default: own namespace, relayed outbound, like
slirp4netns without a TCP/IP stack in user space), "bridge" (user networks: veths on bridges in the
per-user shared namespace; outbound still relayed from the container's own namespace, so no NAT
daemon is shared), "container:ID" (join another container's namespace; nothing to serve).
"""
from __future__ import annotations

import json
import os

ANN = "io.pinnace."
USERMODE_ADDRESS, USERMODE_PREFIX, USERMODE_GATEWAY, USERMODE_DNS = "10.0.2.100", 24, "10.0.2.2", "10.0.2.3"
BRIDGE_DNS = "127.0.0.11"            # as Docker's embedded DNS
GATEWAY_NAMES = ("host.containers.internal", "host.docker.internal")
EXTERNAL = ("slirp4netns", "pasta")     # optional helpers (net/external_backend.py) instead of our relay
DNS_SERVERS_ENV = "PINNACE_DNS_SERVERS"   # "ip[:port],…": upstream resolvers instead of the host's


def parse_servers(text: str) -> list[tuple[str, int]]:
    servers = []
    for item in text.replace(" ", ",").split(","):
        if item:
            host, sep, port = item.rpartition(":") if item.count(":") == 1 else ("", "", "")
            servers.append((host, int(port)) if sep else (item, 53))
    return servers


class ContainerNetwork:
    def __init__(self, spec: dict, container_dir: str) -> None:
        ann = spec.get("annotations", {})
        self.dir = container_dir
        self.mode = ann.get(ANN + "network", "")
        self.root, self.runroot = ann[ANN + "root"], ann[ANN + "runroot"]
        self.cid, self.name = ann[ANN + "id"], ann.get(ANN + "name", "")
        self.hostname = spec.get("hostname") or self.cid[:12]
        from pinnace.net.ports import PortMapping
        self.ports = [PortMapping.from_json(p) for p in json.loads(ann.get(ANN + "ports") or "[]")]
        upstreams = ann.get(ANN + "dns-upstreams")
        self.upstreams = [tuple(u) for u in json.loads(upstreams)] if upstreams else None
        self.address = ""         # the container's (first) address, target of published ports
        self.gateway = ""
        self.networks: dict[str, dict] = {}   # bridge mode: network name -> allocation
        self.bound: list = []     # (PortMapping, fd) between prepare() and started()
        self.published: list = []  # the PortMappings bound, random host ports resolved
        self._owner: dict = {}    # fd -> the part that watches it, this round of the loop
        self.plan: dict = {}
        self.relay = self.udp = self.dns = self.factory = self.backend = None

    @classmethod
    def from_spec(cls, spec: dict, container_dir: str) -> "ContainerNetwork | None":
        mode = spec.get("annotations", {}).get(ANN + "network", "")
        known = mode in ("usermode", "bridge", *EXTERNAL) or mode.startswith("container:")
        return cls(spec, container_dir) if known else None

    # -- before a start -------------------------------------------------------------------------------
    def prepare(self) -> dict:
        if self.mode.startswith("container:"):
            return {"mode": "container", "netns": self._other_netns(self.mode.split(":", 1)[1])}
        if self.mode in EXTERNAL:  # the helper configures the namespace and publishes the ports itself
            self.address, self.gateway = USERMODE_ADDRESS, USERMODE_GATEWAY
            self.plan = {"mode": self.mode, "interfaces": [], "gateway": None, "outbound": False, "wait": True}
            self._write_hosts()
            return self.plan
        plan = self._usermode_plan() if self.mode == "usermode" else self._bridge_plan()
        if self.ports:
            from pinnace.net.ports import bind_host_listeners
            try:
                self.bound = bind_host_listeners(self.ports)
                self.published = [m for m, _ in self.bound]
            except BaseException:
                self.release()
                raise
        plan["published"] = bool(self.ports)
        self.plan = plan
        self._write_hosts()
        return plan

    def _wanted_networks(self) -> dict:
        try:
            with open(os.path.join(self.dir, "networks.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _usermode_plan(self) -> dict:
        """The default network; user networks connected to the container (`network connect`) are added as
        eth1… — the way out stays the user-mode one."""
        self.address, self.gateway = USERMODE_ADDRESS, USERMODE_GATEWAY
        own = f"{USERMODE_ADDRESS}/32"
        plan = {"mode": "usermode", "gateway": USERMODE_GATEWAY, "outbound": True,
                "interfaces": [{"name": "eth0", "address": f"{USERMODE_ADDRESS}/{USERMODE_PREFIX}"}],
                "tcp_exclude": ["127.0.0.0/8", own], "udp_exclude": ["127.0.0.0/8", own, f"{USERMODE_DNS}/32"],
                "dns": [USERMODE_DNS, 53]}
        wanted = self._wanted_networks()
        if wanted:
            plan["shared_netns"] = self._allocate(wanted, plan["interfaces"])
            subnets = [a["subnet"] for a in self.networks.values()]
            plan["tcp_exclude"] += subnets
            plan["udp_exclude"] += subnets
        return plan

    def _bridge_plan(self) -> dict:
        wanted = self._wanted_networks()
        if not wanted:  # disconnected from its last network: only lo, as Docker leaves it
            return {"mode": "bridge", "shared_netns": None, "interfaces": [], "gateway": None, "outbound": False,
                    "dns": [BRIDGE_DNS, 53]}
        interfaces: list[dict] = []
        shared = self._allocate(wanted, interfaces)
        excluded = ["127.0.0.0/8", *(a["subnet"] for a in self.networks.values())]
        gateway = gateway_dev = None
        for index, alloc in enumerate(self.networks.values()):
            if not alloc["internal"]:
                gateway, gateway_dev = alloc["gateway"], f"eth{index}"
                break
        first = next(iter(self.networks.values()))  # the first network's address is the container's
        self.address, self.gateway = first["ip"], gateway or first["gateway"]
        return {"mode": "bridge", "shared_netns": shared, "interfaces": interfaces, "gateway": gateway,
                "gateway_dev": gateway_dev, "outbound": gateway is not None,
                "tcp_exclude": excluded, "udp_exclude": excluded,
                "always": [gateway] if gateway else [], "dns": [BRIDGE_DNS, 53]}

    def _allocate(self, wanted: dict, interfaces: list[dict]) -> str:
        """Addresses on the user networks in `wanted` (IPAM), one veth interface each appended to
        `interfaces`; returns the shared namespace's path (started if needed)."""
        from pinnace.net import ipam, sharedns
        with sharedns.SharedNetnsLock(self.runroot):
            shared = sharedns.ensure(self.runroot)
            for name, options in wanted.items():
                index = len(interfaces)
                alloc = ipam.allocate(self.root, name, self.cid, self.name,
                                      list(options.get("aliases") or ()), alive=self._alive)
                self.networks[name] = dict(alloc, ifname=f"eth{index}")
                interfaces.append({"name": f"eth{index}", "address": f"{alloc['ip']}/{alloc['prefix']}",
                                   "bridge": alloc["interface"], "host_side": f"vp{self.cid[:10]}{index}",
                                   "bridge_address": f"{alloc['gateway']}/{alloc['prefix']}"})
        return shared

    def _alive(self, cid: str) -> bool:
        from pinnace.runtime import ctrstate
        cdir = os.path.join(self.root, "containers", cid)
        # a container being started is still "created": only an exited (or removed) one lost its claim
        return os.path.isdir(cdir) and ctrstate.effective_state(cdir).get("status") != ctrstate.EXITED

    def _other_netns(self, other: str) -> str:
        from pinnace.errors import InvalidArgument
        from pinnace.runtime import ctrstate
        state = ctrstate.effective_state(os.path.join(self.root, "containers", other))
        if not ctrstate.is_running(state):
            raise InvalidArgument(f"--network container:{other[:12]}: that container is not running")
        return f"/proc/{state['pid']}/ns/net"

    def _write_hosts(self) -> None:
        """The container's own address and the gateway names into its /etc/hosts (bound from its dir)."""
        path = os.path.join(self.dir, "hosts")
        try:
            with open(path) as f:
                lines = [l for l in f.read().splitlines() if not l.endswith("# pinnace")]
        except OSError:
            return
        names = " ".join(dict.fromkeys(n for n in (self.hostname, self.name) if n))
        lines += [f"{self.address}\t{names}\t# pinnace"] if self.address else []
        lines += [f"{self.gateway}\t{' '.join(GATEWAY_NAMES)}\t# pinnace"] if self.gateway else []
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)

    # -- while it runs --------------------------------------------------------------------------------
    def started(self, init_pid: int, fds: list[int]) -> None:
        if self.mode.startswith("container:"):
            return
        from pinnace.net.factory import SocketFactory
        fds = list(fds)
        if not fds:
            return
        if self.mode in EXTERNAL:
            from pinnace.net.external_backend import ExternalBackend
            self.backend = ExternalBackend(self.mode, fds[0], init_pid, self.ports, self.dir)
            try:
                self.backend.start()
            finally:
                for fd in fds:
                    os.close(fd)   # the helper has entered the namespace (or failed)
            self.published = list(self.backend.published())
            return
        self.factory = SocketFactory(fds.pop(0))
        upstreams = self.upstreams or _host_upstreams()
        gateway_map = {self.gateway: "127.0.0.1"} if self.gateway else {}
        outbound = len(fds) == 3
        if outbound or self.bound:
            from pinnace.net.relay import Relay
            from pinnace.net.udp_relay import UdpRelay
            dest_map = {(USERMODE_DNS, 53): upstreams[0]} if self.mode == "usermode" and upstreams else {}
            self.relay = Relay(gateway_map=gateway_map, dest_map=dest_map)
            self.udp = UdpRelay(make_socket=self._reply_socket, gateway_map=gateway_map)
            if outbound:
                self.relay.add_outbound_listener(fds.pop(0))
                self.udp.add_outbound_listener(fds.pop(0))
            for mapping, fd in self.bound:
                target = (self.address, mapping.container_port)
                if mapping.protocol == "udp":
                    self.udp.add_forward(fd, target, self._udp_connector(target))
                else:
                    self.relay.add_forward(fd, target, self._tcp_connector)
            self.bound = []
        if fds:
            from pinnace.net.dns import DnsServer
            self.dns = DnsServer(fds, upstreams, self._lookup())

    def _lookup(self):  # noqa: ANN202 - callable(name) -> list[str] | None
        own = {n.lower(): [self.address] for n in (self.hostname, self.name) if n and self.address}
        own.update({n: [self.gateway] for n in GATEWAY_NAMES if self.gateway})
        from pinnace.net import ipam
        path = os.path.join(self.dir, "networks.json")
        try:
            start_mtime = os.stat(path).st_mtime_ns
        except OSError:
            start_mtime = None
        current = {"mtime": start_mtime, "resolve": ipam.resolver(self.root, list(self.networks))}

        def lookup(name: str) -> list[str] | None:
            found = own.get(name)
            if found is not None:
                return found
            try:  # `network connect`/`disconnect` while it runs: follow the container's networks
                mtime = os.stat(path).st_mtime_ns
                if mtime != current["mtime"]:
                    with open(path) as f:
                        current["resolve"] = ipam.resolver(self.root, list(json.load(f)))
                    current["mtime"] = mtime
            except (OSError, ValueError):
                pass
            return current["resolve"](name)
        return lookup

    def _client_address(self, peer: tuple[str, int]) -> tuple[str, int]:
        # a client on the host's loopback is "the host" to the container: its gateway address (127.0.0.1
        # there would be the container itself); everyone else is shown as they are
        ip = peer[0]
        if ip.startswith("127.") or ":" in ip:
            ip = self.gateway or USERMODE_GATEWAY
        return ip, peer[1]

    def _tcp_connector(self, peer: tuple[str, int]) -> int:
        return self._make("tcp", self._client_address(peer))

    def _udp_connector(self, target: tuple[str, int]):  # noqa: ANN202
        return lambda peer: self._make("udp", self._client_address(peer), target)

    def _reply_socket(self, source: tuple[str, int]) -> int:
        return self.factory.make("udp", source)

    def _make(self, kind: str, bind: tuple[str, int], connect: tuple[str, int] | None = None) -> int:
        import errno
        try:
            return self.factory.make(kind, bind, connect)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return self.factory.make(kind, (bind[0], 0), connect)  # that client port is taken in there

    def fds(self) -> tuple[list[int], list[int]]:
        r: list[int] = []
        w: list[int] = []
        owner = self._owner = {}
        if self.relay is not None:
            r, w = self.relay.fds()
            owner.update(dict.fromkeys(r, self.relay))
        for part in (self.udp, self.dns):
            if part is not None:
                mine = part.fds()
                owner.update(dict.fromkeys(mine, part))
                r += mine
        return r, w

    def on_readable(self, fd: int) -> None:
        part = self._owner.get(fd)
        if part is not None:
            part.on_readable(fd)

    def on_writable(self, fd: int) -> None:
        if self.relay is not None:
            self.relay.on_writable(fd)

    def tick(self) -> float | None:
        waits = [t for t in (self.udp.tick() if self.udp else None, self.dns.tick() if self.dns else None)
                 if t is not None]
        return min(waits) if waits else None

    def state(self) -> dict:
        """What inspect/port show while it runs: addresses and the host ports actually bound."""
        return {"mode": self.mode, "address": self.address, "gateway": self.gateway, "networks": self.networks,
                "ports": [m.to_json() for m in self.published], "outbound": bool(self.plan.get("outbound")),
                "published": bool(self.plan.get("published")), "always": self.plan.get("always", []),
                "dns": self.plan.get("dns"), "base_exclude": self._base_exclude()}

    def _base_exclude(self) -> list[str]:
        """What stays inside besides the user networks' subnets (for live connect/disconnect)."""
        if self.mode == "usermode":
            return ["127.0.0.0/8", f"{USERMODE_ADDRESS}/32"]
        return ["127.0.0.0/8"]

    # -- after it ran ---------------------------------------------------------------------------------
    def stopped(self) -> None:
        for part in (self.relay, self.udp, self.dns, self.factory):
            if part is not None:
                part.close()
        if self.backend is not None:
            self.backend.stop()
        self.relay = self.udp = self.dns = self.factory = self.backend = None
        for _, fd in self.bound:
            os.close(fd)
        self.bound = []
        self._owner = {}

    def release(self) -> None:
        self.stopped()
        if self.networks or self.mode == "bridge":
            release_addresses(self.root, self.runroot, self.cid, list(self.networks) or None, self.dir)
            self.networks = {}


def _host_upstreams() -> list[tuple[str, int]]:
    env = os.environ.get(DNS_SERVERS_ENV)
    if env:
        return parse_servers(env)
    from pinnace.net.dns import host_resolvers
    return host_resolvers()[0]


def release_addresses(root: str, runroot: str, cid: str, names: list[str] | None, container_dir: str) -> None:
    """Give a container's addresses back (also used by `container cleanup` after a killed supervisor);
    the shared namespace goes when no user network has a member left."""
    from pinnace.net import ipam, sharedns
    if names is None:
        try:
            with open(os.path.join(container_dir, "networks.json")) as f:
                names = list(json.load(f))
        except (OSError, ValueError):
            names = []
    if not os.path.isdir(runroot):
        return
    with sharedns.SharedNetnsLock(runroot):
        for name in names:
            if ipam.load_network(root, name) is not None:
                ipam.release(root, name, cid)
        netdir = os.path.join(root, "networks")
        try:
            others = [n[:-5] for n in os.listdir(netdir) if n.endswith(".json") and not n.endswith(".ipam.json")]
        except OSError:
            others = []
        if not any(ipam.members(root, n) for n in others):
            sharedns.stop(runroot)
