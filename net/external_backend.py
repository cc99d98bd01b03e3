"""Optional external user-mode network helpers for `--network slirp4netns` / `--network pasta` (issue 4).

The supervisor hands over a container's fresh network namespace (an nsfs fd; only `lo` up) and this module
attaches the helper to it. Both backends give the container the same picture, so /etc/hosts, resolv.conf
and `host.containers.internal` are written the same way as for the default network:

    interface   tap0 (slirp4netns) | eth0 (pasta), 10.0.2.100/24, MTU 65520, default route via 10.0.2.2
    10.0.2.2    the gateway: connections to it reach the host's loopback (slirp4netns without
                --disable-host-loopback; pasta maps its gateway to the host by default)
    10.0.2.3    DNS: forwarded by the helper (slirp's own forwarder, pasta's --dns-forward) to the first
                nameserver of the host's /etc/resolv.conf, also one on the host's loopback (checked with
                both); PINNACE_DNS_SERVERS does not apply (Debian 12's pasta stops forwarding with -D)

Published ports: a random host port (0) or a pool is resolved here first (bound and released at once, so
the errors of a port in use or not allowed are those of the default network), then given to the helper:
slirp4netns through its API socket (add_hostfwd), pasta on its command line (-t/-u). The address the
container sees, measured: a client on the host's loopback arrives as 10.0.2.2 (slirp4netns) or as
127.0.0.1 on the container's loopback (pasta "splices" it); any other client keeps its own address with
both. Debian 12's pasta (2023-03) loses UDP answers to a client on the host's loopback when the host port
differs from the container port (other clients, and TCP, are fine). Only IPv4 is set up (pasta -4), as on
the default network: an IPv6 host address is refused.

The helper is a child of the supervisor (fork+exec, not daemonized) that dies with it (PR_SET_PDEATHSIG;
slirp4netns also leaves when its --exit-fd closes). Readiness is a pipe: slirp4netns's --ready-fd, and for
pasta its pid file given as /proc/self/fd/N of a pipe (this pasta has no ready fd; it writes the pid file
once the namespace is configured). Debian 12's pasta:
- drops to `nobody` when started as root before it joins the namespace, which then fails: `--runas 0:0`
  (only as uid 0) keeps it root, with just the capabilities pasta keeps for itself;
- learns the container's MAC address from the container's first packet, and until then cannot deliver a
  published port's connection to it: --ns-mac-addr fixes the address from the start.
Both helpers need /dev/net/tun (read-write for the user).

The supervisor reaps any child with waitpid(-1): stop() copes with a helper reaped there (it then never
signals that pid again). Supervisor-side: `_socket` not `socket`, no typing, no dataclasses (RSS).
"""
from __future__ import annotations

import _socket
import json
import os
import signal
import time

AVAILABLE = ("slirp4netns", "pasta")
PACKAGES = {"slirp4netns": "slirp4netns", "pasta": "passt"}
ADDRESS, PREFIX, GATEWAY, DNS = "10.0.2.100", 24, "10.0.2.2", "10.0.2.3"
INTERFACE = {"slirp4netns": "tap0", "pasta": "eth0"}
MTU = 65520
GUEST_MAC = "02:50:4e:00:02:64"   # the container's MAC for pasta (see above): locally administered
TUN = "/dev/net/tun"
START_TIMEOUT = 10.0       # seconds for the helper to report ready
STOP_TIMEOUT = 2.0         # seconds between the polite stop and SIGKILL
API_NAME = "slirp4netns.sock"
# fds of the helper: 0, 1 = /dev/null, 2 = its log, then these
_NETNS_FD, _READY_FD, _EXIT_FD = 3, 4, 5
_SUN_PATH_MAX = 107


def find(name: str) -> str | None:
    """The helper's executable on PATH (os.defpath without one), or None."""
    for d in (os.environ.get("PATH") or os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def resolver_address(name: str) -> str | None:
    """Where the container's resolv.conf points with this backend (None: not an external backend)."""
    return DNS if name in AVAILABLE else None


def host_env() -> dict:
    """The environment for a host program: without a PyInstaller bundle's library path and variables."""
    env = dict(os.environ)
    orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if orig is not None:
        env["LD_LIBRARY_PATH"] = orig
    elif "_MEIPASS2" in env or any(k.startswith("_PYI_") for k in env):
        env.pop("LD_LIBRARY_PATH", None)
    for key in [k for k in env if k.startswith(("_PYI_", "_MEI"))]:
        del env[key]
    return env


def _where(m) -> str:  # noqa: ANN001 - PortMapping
    return f"{m.host_ip or '0.0.0.0'}:{m.host_port}/{m.protocol}"


def _namespace_error(text: str) -> Exception:
    from pinnace.errors import NamespaceError
    return NamespaceError(text)


def _check_tun(name: str) -> None:
    """Both helpers open /dev/net/tun inside the namespace: say what to do before starting one."""
    if not os.path.exists(TUN):
        raise _namespace_error(f"--network {name} needs {TUN}, which does not exist here: load the tun module "
                               f"(sudo modprobe tun) or use the default network")
    if not os.access(TUN, os.R_OK | os.W_OK):
        raise _namespace_error(f"--network {name} needs read-write access to {TUN}: sudo chmod 666 {TUN} "
                               f"(or use the default network)")


def _in_use(m) -> bool:  # noqa: ANN001 - PortMapping
    """Whether the host port of `m` is taken (by the helper, once it said it is ready)."""
    import errno
    tcp = m.protocol == "tcp"
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM if tcp else _socket.SOCK_DGRAM)
    try:
        if tcp:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((m.host_ip or "0.0.0.0", m.host_port))
        return False
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        sock.close()


class ExternalBackend:
    """One helper process serving one container network namespace. start() once, stop() any number."""
    __slots__ = ("name", "netns_fd", "init_pid", "ports", "dir", "pid", "_published",
                 "_exit_w", "_log", "_api", "startup_ms")

    def __init__(self, name: str, netns_fd: int, init_pid: int, ports: list, runroot_dir: str) -> None:
        """`netns_fd`: the container's network namespace (an nsfs fd; the caller keeps it and may close it
        once start() returned: the helper holds the namespace itself); `init_pid`: the container's init,
        for messages only; `ports`: net.ports.PortMapping list (host_port 0 = pick one, pools allowed);
        `runroot_dir`: a directory of this container's own: the helper's stderr log (`NAME.log`, removed by
        stop()) and, while it starts, slirp4netns's API socket live there."""
        self.name, self.netns_fd, self.init_pid = name, netns_fd, init_pid
        self.ports, self.dir = list(ports), runroot_dir
        self.pid = 0
        self._published: list = []
        self._exit_w = -1
        self._log = os.path.join(runroot_dir, f"{name}.log")
        self._api = os.path.join(runroot_dir, API_NAME)
        self.startup_ms = 0.0

    # -- start ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the helper and publish the ports; on any error nothing is left running or bound."""
        from pinnace.errors import InvalidArgument
        if self.pid:
            return
        t0 = time.monotonic()
        if self.name not in AVAILABLE:
            raise InvalidArgument(f"unknown network backend {self.name!r} (known: {', '.join(AVAILABLE)})")
        binary = find(self.name)
        if binary is None:
            raise InvalidArgument(f"--network {self.name}: {self.name} is not installed "
                                  f"(install the {PACKAGES[self.name]} package, or use the default network)")
        for m in self.ports:
            if ":" in m.host_ip:
                raise InvalidArgument(f"--network {self.name} publishes IPv4 only: cannot publish "
                                      f"[{m.host_ip}]:{m.host_port}")
        _check_tun(self.name)
        wanted = self._resolve_ports()
        try:
            if self.name == "slirp4netns":
                self._start_slirp4netns(binary, wanted)
            else:
                self._start_pasta(binary, wanted)
        except OSError as exc:  # fork, pipes, its log in runroot_dir
            self.stop()
            raise _namespace_error(f"--network {self.name}: cannot start {binary}: {exc}") from None
        except BaseException:
            self.stop()
            raise
        self._published = wanted
        self.startup_ms = round((time.monotonic() - t0) * 1000, 1)

    def _resolve_ports(self) -> list:
        """The mappings with their real host ports: bound and released at once (random ports, pools, and
        the errors of a port in use or not allowed come from net.ports as for the default network)."""
        if not self.ports:
            return []
        from pinnace.net.ports import bind_host_listeners
        bound = bind_host_listeners(self.ports)
        for _, fd in bound:
            os.close(fd)
        return [m for m, _ in bound]

    def _start_slirp4netns(self, binary: str, wanted: list) -> None:
        _unlink(self._api)
        argv = [binary, "--configure", f"--mtu={MTU}", "--enable-sandbox", "--enable-seccomp",
                f"--ready-fd={_READY_FD}", f"--exit-fd={_EXIT_FD}", f"--api-socket={API_NAME}",
                "--netns-type=path", f"/proc/self/fd/{_NETNS_FD}", INTERFACE["slirp4netns"]]
        exit_r, self._exit_w = os.pipe()
        try:
            self._spawn_and_wait(argv, [exit_r])
        finally:
            os.close(exit_r)
        for m in wanted:
            self._hostfwd(m)
        _unlink(self._api)  # the ports are in place: nothing is left behind even after a kill -9

    def _hostfwd(self, m) -> None:  # noqa: ANN001 - PortMapping
        request = {"execute": "add_hostfwd", "arguments": {
            "proto": m.protocol, "host_addr": m.host_ip or "0.0.0.0", "host_port": m.host_port,
            "guest_addr": ADDRESS, "guest_port": m.container_port}}
        path = self._api if len(self._api) <= _SUN_PATH_MAX else None
        dir_fd = -1
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            if path is None:  # too long for sun_path: through the directory's fd
                dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                path = f"/proc/self/fd/{dir_fd}/{API_NAME}"
            sock.settimeout(5.0)
            sock.connect(path)
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(_socket.SHUT_WR)   # the API answers once the request is complete
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            reply = json.loads(data or b"{}")
        except (OSError, ValueError) as exc:
            raise _namespace_error(f"slirp4netns: cannot publish {_where(m)}: its API socket failed: {exc}") \
                from None
        finally:
            sock.close()
            if dir_fd >= 0:
                os.close(dir_fd)
        if not isinstance(reply, dict) or "return" not in reply:
            desc = reply.get("error", {}).get("desc") if isinstance(reply, dict) else None
            raise _namespace_error(f"slirp4netns: cannot publish {_where(m)}: {desc or reply}")

    def _start_pasta(self, binary: str, wanted: list) -> None:
        argv = [binary, "-f", "-q", "-4", *(("--runas", "0:0") if os.geteuid() == 0 else ()),
                "--config-net", "-I", INTERFACE["pasta"], "--ns-mac-addr", GUEST_MAC, "-a", ADDRESS,
                "-n", str(PREFIX), "-g", GATEWAY, "-m", str(MTU), "--dns-forward", DNS,
                "-T", "none", "-U", "none",    # no forwarding from the container to the host's ports
                "-P", f"/proc/self/fd/{_READY_FD}",
                "--netns", f"/proc/self/fd/{_NETNS_FD}"]
        for proto, flag in (("tcp", "-t"), ("udp", "-u")):
            specs = [f"{m.host_ip + '/' if m.host_ip else ''}{m.host_port}:{m.container_port}"
                     for m in wanted if m.protocol == proto]
            for spec in specs or ["none"]:   # pasta's default is "auto": every port bound inside
                argv += [flag, spec]
        self._spawn_and_wait(argv, [])
        missing = [m for m in wanted if not _in_use(m)]
        if missing:
            raise _namespace_error(f"pasta did not publish {', '.join(_where(m) for m in missing)}"
                                   f"{self._last_error(': ')}")

    def _spawn_and_wait(self, argv: list, extra_fds: list) -> None:
        """Start the helper with the namespace as fd 3, a ready pipe as fd 4 (+ extra_fds from 5), its
        stderr into the log; return once it wrote to the pipe."""
        import select
        log = os.open(self._log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        ready_r, ready_w = os.pipe()
        try:
            self.pid = _spawn(argv, [self.netns_fd, ready_w] + extra_fds, log, self.dir, host_env())
        finally:
            os.close(ready_w)
            os.close(log)
        try:
            poller = select.poll()
            poller.register(ready_r, select.POLLIN)
            deadline = time.monotonic() + START_TIMEOUT
            data = b""
            while not data:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _namespace_error(f"{self.name} did not get ready within {START_TIMEOUT:g} s"
                                           f"{self._last_error(': ')}")
                try:
                    if not poller.poll(int(left * 1000) + 1):
                        continue
                except InterruptedError:
                    continue
                data = os.read(ready_r, 64)
                if not data:  # every write end closed: it exited before it was ready
                    self._reap(0.5)
                    raise _namespace_error(f"{self.name} exited before the network was up"
                                           f"{self._last_error(': ') or ' (no message)'}")
        finally:
            os.close(ready_r)

    def _last_error(self, prefix: str) -> str:
        """The last meaningful line the helper wrote to its stderr."""
        try:
            with open(self._log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            line = line.strip()
            # Debian 12's pasta reports each message it could not pass to a (missing) syslog, and
            # slirp4netns ends with "child failed(1)" after the reason its namespace child gave
            if line and not (line.startswith("Failed to send ") and line.endswith(" to syslog")
                             or line.startswith("child failed(")):
                return prefix + line
        return ""

    # -- while it runs --------------------------------------------------------------------------------
    def published(self) -> list:
        """The PortMappings the helper serves, with their real host ports."""
        return list(self._published)

    def pids(self) -> list[int]:
        return [self.pid] if self.pid else []

    def address(self) -> str:
        return ADDRESS

    def gateway(self) -> str:
        return GATEWAY

    # -- stop -----------------------------------------------------------------------------------------
    def stop(self) -> None:
        """End the helper and reap it; remove its files. Safe to call again, and after it died."""
        if self._exit_w >= 0:
            os.close(self._exit_w)   # slirp4netns leaves on the poll event of its exit fd
            self._exit_w = -1
        if self.pid:
            if self.name == "pasta" and self._alive():
                _signal(self.pid, signal.SIGTERM)
            if not self._reap(STOP_TIMEOUT):
                _signal(self.pid, signal.SIGKILL)
                self._reap(STOP_TIMEOUT)
            self.pid = 0
        self._published = []
        _unlink(self._api)
        _unlink(self._log)

    def _alive(self) -> bool:
        """Whether the helper still runs; forgets its pid once it exited, so it is never signalled after
        (a pid reaped elsewhere, by the supervisor's waitpid(-1), may already belong to another process)."""
        return not self._reap(0)

    def _reap(self, timeout: float) -> bool:
        """Wait up to `timeout` for the helper to exit; True once it is reaped (or not ours any more)."""
        deadline = time.monotonic() + timeout
        while self.pid:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                done = self.pid   # someone else reaped it: it is gone, and its pid is not ours to signal
            if done:
                self.pid = 0
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _spawn(argv: list, fds: list, stderr_fd: int, cwd: str, env: dict) -> int:
    """fork+exec `argv` with fds[i] as fd 3+i, stdin/stdout on /dev/null, stderr on `stderr_fd`, in `cwd`.
    Not posix_spawn: the helper must die with the supervisor (PR_SET_PDEATHSIG), or pasta would keep the
    container's network namespace alive after a kill -9 of its supervisor."""
    from pinnace.runtime import syscalls
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    parent = os.getpid()
    try:
        pid = os.fork()
        if pid == 0:
            try:
                syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
                if os.getppid() != parent:
                    os._exit(1)
                sources = [null, null, stderr_fd] + list(fds)
                # above every source first, so no dup2 below overwrites a source not yet placed
                base = max(sources + [2]) + 1
                for i, fd in enumerate(sources):
                    os.dup2(fd, base + i, inheritable=False)
                for i in range(len(sources)):
                    os.dup2(base + i, i)
                os.closerange(len(sources), 1 << 20)
                for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                    signal.signal(sig, signal.SIG_DFL)   # Python ignores SIGPIPE; exec keeps an ignore
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            except BaseException:  # noqa: BLE001 - a forked child never returns into the supervisor
                pass
            os._exit(127)
    finally:
        os.close(null)
    return pid
