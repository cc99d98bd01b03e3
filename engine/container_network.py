"""`create`'s network options: --network, --network-alias, -p/-P, --dns turned into what the supervisor
reads (annotations, the container's networks.json) and the container's resolv.conf.

Modes (Docker's names where they exist):
    "" / default / bridge / usermode  own namespace, user-mode relayed networking (rootless' default)
    slirp4netns, pasta                own namespace served by that external helper (when installed)
    host, none                        the host's namespace / only lo
    container:NAME                    another running container's namespace
    NAME                              a user network (`network create`): bridge in the shared namespace
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from pinnace.errors import InvalidArgument, NotFound

DEFAULT_ALIASES = ("", "default", "bridge", "usermode", "private")
EXTERNAL_BACKENDS = ("slirp4netns", "pasta")
ANN = "io.pinnace."


@dataclass
class NetworkChoice:
    mode: str                                    # "usermode" | "bridge" | "host" | "none" | "container:ID"
    networks: dict = field(default_factory=dict)  # bridge: name -> {"aliases": [...]}
    ports: list = field(default_factory=list)     # net.ports.PortMapping
    annotations: dict = field(default_factory=dict)

    @property
    def own_netns(self) -> bool:
        return self.mode != "host"


def choose_network(store, opts, image_cfg: dict) -> NetworkChoice:  # noqa: ANN001 - Store, options
    requested = (opts.network or "").strip()
    if opts.runtime and not requested:
        requested = "none"  # an external runtime makes its own namespaces: ours cannot be set up for it
    if requested in ("host", "none"):
        choice = NetworkChoice(requested)
    elif requested in DEFAULT_ALIASES:
        choice = NetworkChoice("usermode")
    elif requested in EXTERNAL_BACKENDS:
        from pinnace.net.external_backend import PACKAGES, find
        if find(requested) is None:
            raise InvalidArgument(f"--network {requested}: {requested} is not installed (Debian package "
                                  f"{PACKAGES[requested]}); the default network needs no helper")
        choice = NetworkChoice(requested)
    elif requested.startswith("container:"):
        choice = NetworkChoice("container:" + _container_id(store, requested.split(":", 1)[1]))
    else:
        names = [n for n in requested.split(",") if n]
        from pinnace.net import ipam
        for name in names:
            if ipam.load_network(str(store.layout.root), name) is None:
                raise NotFound(f"network {name} not found")
        aliases = list(dict.fromkeys(opts.network_aliases))
        choice = NetworkChoice("bridge", {n: {"aliases": aliases} for n in names})
    if opts.network_aliases and choice.mode != "bridge":
        raise InvalidArgument("--network-alias works only on user networks (network create)")
    choice.ports = _ports(opts, image_cfg, choice.mode)
    if choice.mode not in ("host", "none"):
        choice.annotations[ANN + "network"] = choice.mode
    if choice.ports:
        choice.annotations[ANN + "ports"] = json.dumps([m.to_json() for m in choice.ports])
    servers = os.environ.get("PINNACE_DNS_SERVERS")
    if servers:
        from pinnace.net.container_net import parse_servers
        try:
            choice.annotations[ANN + "dns-upstreams"] = json.dumps(parse_servers(servers))
        except ValueError:
            raise InvalidArgument(f"invalid PINNACE_DNS_SERVERS {servers!r} (ip[:port],…)") from None
    return choice


def _ports(opts, image_cfg: dict, mode: str) -> list:  # noqa: ANN001
    if not opts.publish and not opts.publish_all:
        return []
    if mode in ("host", "none") or mode.startswith("container:"):
        raise InvalidArgument(f"conflicting options: port publishing and the {mode.split(':')[0]} network mode")
    from pinnace.net import ports
    mappings = [m for spec in opts.publish for m in ports.parse_publish(spec)]
    if opts.publish_all:
        published = {(m.container_port, m.protocol) for m in mappings}
        exposed = (image_cfg.get("config") or {}).get("ExposedPorts") or {}
        mappings += [m for m in ports.publish_all(list(exposed) + list(opts.expose))
                     if (m.container_port, m.protocol) not in published]
    ports.check_available(mappings)  # a port in use fails `run` before anything is created
    return mappings


def _container_id(store, name: str) -> str:  # noqa: ANN001
    from pinnace.storage.containers import ContainerStore
    rec = ContainerStore(store.layout, store.db).get(name)
    if rec is None:
        raise NotFound(f"no such container: {name}")
    return rec.id


def resolv_conf(choice: NetworkChoice, dns: tuple[str, ...]) -> str:
    """Docker's rules: --dns wins; else the namespace's own resolver (user-mode: 10.0.2.3, user networks:
    the embedded 127.0.0.11), with the host's search domains and options; the host's file for host."""
    try:
        with open("/etc/resolv.conf") as f:
            host = f.read()
    except OSError:
        host = ""
    if choice.mode == "host" and not dns:
        return host
    others = [l for l in host.splitlines() if l.split()[:1] in (["search"], ["domain"], ["options"])]
    if dns:
        servers = list(dns)
    elif choice.mode in ("usermode", *EXTERNAL_BACKENDS):
        from pinnace.net.container_net import USERMODE_DNS
        servers = [USERMODE_DNS]
    elif choice.mode == "bridge":
        from pinnace.net.container_net import BRIDGE_DNS
        servers = [BRIDGE_DNS]
    else:  # none, container: — what the host has, minus loopback resolvers nobody can reach from there
        servers = [l.split()[1] for l in host.splitlines()
                   if l.startswith("nameserver") and len(l.split()) > 1 and not l.split()[1].startswith("127.")]
    return "".join(f"nameserver {s}\n" for s in servers) + "".join(l + "\n" for l in others)
