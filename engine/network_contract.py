"""Records of the network verbs (`network create|ls|inspect|rm|prune|connect|disconnect`).

The on-disk config (`<root>/networks/<name>.json`, see net/ipam.py) is `NetworkRecord.to_json()`; the
supervisor reads it as a plain dict, so its keys are the contract with the runtime side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class NetworkCreateOptions:
    """What `network create` was asked for."""

    name: str | None = None               # None: the first free "pinnaceN"
    driver: str = "bridge"
    subnet: str | None = None             # None: the first free 10.89.N.0/24
    gateway: str | None = None            # None: the subnet's first address
    internal: bool = False                # no outbound access
    labels: dict[str, str] = field(default_factory=dict)
    ipv6: bool = False
    ignore_existing: bool = False         # Podman's --ignore: an existing network of that name is fine


@dataclass(frozen=True)
class NetworkRecord:
    """One user network as stored."""

    name: str
    id: str                               # 64 hex, random
    driver: str
    created: str                          # RFC 3339
    subnet: str                           # "10.89.0.0/24"
    gateway: str
    internal: bool
    labels: dict[str, str]
    options: dict[str, str]
    interface: str                        # the bridge's name: "pn-" + id[:10]
    dns_enabled: bool = True

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "NetworkRecord":
        return cls(name=data["name"], id=data["id"], driver=data.get("driver", "bridge"),
                   created=data.get("created", ""), subnet=data["subnet"], gateway=data["gateway"],
                   internal=bool(data.get("internal")), labels=dict(data.get("labels") or {}),
                   options=dict(data.get("options") or {}), interface=data["interface"],
                   dns_enabled=bool(data.get("dns_enabled", True)))


@dataclass(frozen=True)
class NetworkUser:
    """A container whose networks.json names the network (connected, running or not)."""

    id: str
    name: str
    aliases: tuple[str, ...] = ()
