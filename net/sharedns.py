"""The per-user shared network namespace of user networks: their bridges live there, one veth per container.

Podman calls it the rootless-netns. Here it is pinned by a tiny sleeping process (`pinnace-netns`, a fork
of whoever needed it first: inside the user namespace when rootless, so the namespace is ours to
configure). Its pidfile is `<runroot>/netns.pid` ("PID STARTTIME"); `<runroot>/netns.lock` serialises
starting it, allocating addresses on the user networks, and stopping it when the last container using a
user network has gone (`release_if_unused`), so a starting container never finds it killed under it.
Bridges are created in it on first use (net/netns_setup.ensure_bridge); veths vanish with the containers'
own namespaces, so nothing else needs cleaning.
"""
from __future__ import annotations

import fcntl
import os
import signal

PIN_NAME = "pinnace-netns"
_CLONE_NEWNET = 0x40000000


class SharedNetnsLock:
    """flock on <runroot>/netns.lock (a context manager)."""

    def __init__(self, runroot: str) -> None:
        self.path = os.path.join(runroot, "netns.lock")
        self.fd = -1

    def __enter__(self) -> "SharedNetnsLock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pin_pid(runroot: str) -> int | None:
    """The live pin process, if any (pidfile checked against /proc: pid reuse is not mistaken for it)."""
    try:
        with open(os.path.join(runroot, "netns.pid")) as f:
            pid, start = (int(x) for x in f.read().split())
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except (OSError, ValueError):
        return None
    return pid if comm == PIN_NAME and _start_time(pid) == start else None


def ensure(runroot: str) -> str:
    """Path of the shared namespace (/proc/PID/ns/net of its pin), started if needed. Call under the lock."""
    pid = pin_pid(runroot)
    if pid is None:
        pid = _start_pin()
        tmp = os.path.join(runroot, "netns.pid.tmp")
        with open(tmp, "w") as f:
            f.write(f"{pid} {_start_time(pid)}\n")
        os.replace(tmp, os.path.join(runroot, "netns.pid"))
    return f"/proc/{pid}/ns/net"


def stop(runroot: str) -> bool:
    """Stop the pin (its namespace, bridges included, goes with it). Call under the lock."""
    pid = pin_pid(runroot)
    try:
        os.unlink(os.path.join(runroot, "netns.pid"))
    except FileNotFoundError:
        pass
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _start_pin() -> int:
    """Fork the pin: a new network namespace with lo up, then sleep. Returns its pid once it is in place."""
    from pinnace.runtime import syscalls
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDWR)
            for std in (0, 1, 2):
                os.dup2(null, std)
            keep = sorted({0, 1, 2, write_fd})
            for lo, hi in zip(keep, keep[1:] + [1 << 20]):
                os.closerange(lo + 1, hi)
            os.chdir("/")
            syscalls.unshare(_CLONE_NEWNET)
            from pinnace.net import rtnl
            rtnl.set_up("lo")
            with open("/proc/self/comm", "w") as f:
                f.write(PIN_NAME)
            os.write(write_fd, f"{os.getpid()}\n".encode())
            os.close(write_fd)
            while True:
                signal.pause()
        except BaseException:  # noqa: BLE001 - a forked child never returns into its parent
            os._exit(1)
    os.close(write_fd)
    os.waitpid(child, 0)
    data = b""
    while chunk := os.read(read_fd, 64):
        data += chunk
    os.close(read_fd)
    if not data.strip():
        from pinnace.errors import NamespaceError
        raise NamespaceError("cannot create the shared network namespace of user networks")
    return int(data)
