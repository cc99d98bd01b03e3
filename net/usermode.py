"""User-mode networking for one container (preview of the networking milestone: outbound TCP only).

In the container's new network namespace, before its command runs: lo, a bridge `eth0` with ADDRESS and
the default route via GATEWAY (net/rtnl.py), an nf_tables redirect of every outbound TCP connection to a
listener on 127.0.0.1:LISTEN_PORT made there (net/nftables.py). The listener's fd goes to the supervisor,
which lives in the host's network namespace and relays each connection (net/relay.py) to its original
destination — GATEWAY meaning the host's own 127.0.0.1, as `host.containers.internal` does with Podman.
"""
from __future__ import annotations

import _socket

ADDRESS, PREFIX, GATEWAY = "10.0.2.100", 24, "10.0.2.2"
LISTEN_PORT = 59999          # inside the container's namespace: a port its programs should not need
GATEWAY_NAME = "host.containers.internal"
MODES = ("usermode",)


def setup_namespace(mode: str) -> list[int]:
    """Run in the container's fresh network namespace (we own it); return the fds for the supervisor."""
    from pinnace.net import nftables, rtnl
    rtnl.setup_namespace_link("eth0", f"{ADDRESS}/{PREFIX}", GATEWAY)
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", LISTEN_PORT))
    listener.listen(128)
    nftables.install_redirect(tcp_port=LISTEN_PORT, exclude_cidrs=("127.0.0.0/8",))
    return [listener.detach()]


def relay_for(fds: list[int]):  # noqa: ANN201 - net.relay.Relay
    """The supervisor's relay for the fds setup_namespace made."""
    from pinnace.net.relay import Relay
    relay = Relay(gateway_map={GATEWAY: "127.0.0.1"})
    for fd in fds:
        relay.add_outbound_listener(fd)
    return relay
