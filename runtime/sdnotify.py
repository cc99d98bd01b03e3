"""systemd's readiness protocol (sd_notify(3)) for the supervisor: `run --sdnotify=conmon|container|ignore`.

Nothing happens unless the supervisor inherited NOTIFY_SOCKET (a `Type=notify` unit's ExecStart ran
`pinnace run`/`start`). The mode is the container's `io.pinnace.sdnotify` annotation (`run --sdnotify`),
overridden by $PINNACE_SDNOTIFY (what `generate systemd` puts in units that `start` an existing container),
else `container`, Podman's default.

- conmon: the supervisor sends MAINPID=<its pid> and READY=1 as soon as the container runs.
- container: the container's own process says when it is ready. It gets a socket of ours, bound at
  /run/notify/notify.sock (its NOTIFY_SOCKET), and the supervisor forwards what arrives there: systemd
  takes messages only from processes of the unit's cgroup, and the container lives in a cgroup of its own
  (runtime/cgroups.py), as does an abstract @socket live in the host's network namespace only. MAINPID is
  the supervisor's here too: systemd refuses a main pid outside the unit's cgroup from a non-root sender,
  and the container's pid changes whenever a restart policy starts it again.
- ignore: nothing is sent; the container does not see NOTIFY_SOCKET.

Imported by the supervisor (which must stay small): `_socket` and `os` only.
"""
from __future__ import annotations

import _socket
import os

ANNOTATION = "io.pinnace.sdnotify"
OVERRIDE_ENV = "PINNACE_SDNOTIFY"
MODES = ("container", "conmon", "ignore")
INNER_DIR = "/run/notify"                  # where the container sees our socket (Podman's place)
INNER_SOCKET = INNER_DIR + "/notify.sock"
PROXY_DIR, PROXY_NAME = "notify", "notify.sock"   # in the container's directory


def address(path: str) -> bytes:
    """The sockaddr of a NOTIFY_SOCKET value: `@name` is Linux's abstract namespace."""
    if path.startswith("@"):
        return b"\0" + os.fsencode(path[1:])
    return os.fsencode(path)


def send(message: str, path: str | None = None) -> bool:
    """One datagram to `path` (default $NOTIFY_SOCKET); False when there is no socket or it refuses."""
    path = os.environ.get("NOTIFY_SOCKET") if path is None else path
    if not path:
        return False
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        sock.sendto(message.encode(), address(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


class Notifier:
    """What one supervisor tells systemd. `fd` is the proxy socket (container mode) for the poll loop."""

    def __init__(self, mode: str, target: str | None, proxy=None, proxy_path: str = ""):  # noqa: ANN001
        self.mode, self.target, self.proxy, self.proxy_path = mode, target, proxy, proxy_path
        self.fd = proxy.fileno() if proxy is not None else None

    @classmethod
    def from_spec(cls, spec: dict, container_dir: str) -> Notifier:
        """Read the mode and take NOTIFY_SOCKET out of our environment (no child of ours may use it:
        an external runtime such as crun would answer systemd itself). Container mode binds the proxy
        socket and adds its mount and NOTIFY_SOCKET to `spec` (in memory: config.json stays as created)."""
        target = os.environ.pop("NOTIFY_SOCKET", None)
        override = os.environ.pop(OVERRIDE_ENV, None)
        mode = override or spec.get("annotations", {}).get(ANNOTATION) or "container"
        if not target or mode not in MODES or mode == "ignore":
            return cls("ignore", None)
        if mode == "conmon":
            return cls(mode, target)
        directory = os.path.join(os.path.abspath(container_dir), PROXY_DIR)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        os.chmod(directory, 0o755)  # any uid of the container may reach the socket
        path = os.path.join(directory, PROXY_NAME)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        proxy = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        # bound by a relative name: sun_path holds 108 bytes, a store's path may be longer
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(directory)
            proxy.bind(PROXY_NAME)
        finally:
            os.fchdir(cwd)
            os.close(cwd)
        os.chmod(path, 0o777)
        proxy.setblocking(False)
        process = spec.setdefault("process", {})
        env = [e for e in process.get("env", []) if not e.startswith("NOTIFY_SOCKET=")]
        process["env"] = env + ["NOTIFY_SOCKET=" + INNER_SOCKET]
        spec.setdefault("mounts", []).append({"destination": INNER_DIR, "type": "bind", "source": directory,
                                              "options": ["bind", "rprivate"]})
        return cls(mode, target, proxy, path)

    def started(self, main_pid: int) -> None:
        """The container runs (called once, before `run` returns): who the main process is, and in
        conmon mode that the service is ready."""
        if self.mode == "conmon":
            send(f"MAINPID={main_pid}\nREADY=1\n", self.target)
        elif self.mode == "container":
            send(f"MAINPID={main_pid}\n", self.target)

    def forward(self) -> None:
        """Pass on what the container sent, without its MAINPID (a pid of its namespace means nothing to
        systemd; the supervisor is the main process)."""
        while True:
            try:
                data = self.proxy.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            lines = [line for line in data.decode(errors="replace").split("\n")
                     if line and not line.startswith("MAINPID=")]
            if lines:
                send("\n".join(lines) + "\n", self.target)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = self.fd = None
            try:
                os.unlink(self.proxy_path)
            except OSError:
                pass
