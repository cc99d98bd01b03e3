"""Execute an OCI runtime-spec document (runtime/spec.py) with our own Python runtime.

The caller has joined the per-user namespace holder (rootless) or is real root, and is single-threaded.
`run_foreground` forks: the child unshares the container's namespaces and forks again, so that the
grandchild is pid 1 of a new pid namespace; that one mounts the container's filesystems under the
prepared rootfs, pivots into it, drops to the process user and capabilities, and execs. Exit codes follow
Docker: the command's own, 128+N when killed by signal N, 127 when the command is not found, 126 when it
cannot be invoked.

The supervisor (runtime/supervisor.py) starts containers with `start(direct=True)`; test drivers and
`run_foreground` use the waiting form.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import signal
import sys

from pinnace.runtime import syscalls
from pinnace.runtime.caps import ALL_CAPS

EXIT_NOT_FOUND, EXIT_CANNOT_INVOKE, EXIT_SETUP_FAILED = 127, 126, 125
_NS_FLAGS = {"pid": syscalls.CLONE_NEWPID, "ipc": syscalls.CLONE_NEWIPC, "uts": syscalls.CLONE_NEWUTS,
             "mount": syscalls.CLONE_NEWNS, "cgroup": syscalls.CLONE_NEWCGROUP, "network": syscalls.CLONE_NEWNET}
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_MOUNT_FLAGS = {"ro": syscalls.MS_RDONLY, "nosuid": syscalls.MS_NOSUID, "nodev": syscalls.MS_NODEV,
                "noexec": syscalls.MS_NOEXEC, "strictatime": syscalls.MS_STRICTATIME,
                "relatime": syscalls.MS_RELATIME, "noatime": syscalls.MS_NOATIME}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
              ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"), ("core", "/proc/kcore"))
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 23, 24, 38
CGROUP_ANNOTATION = "io.pinnace.cgroup"   # JSON {controller: dir} the container's processes go into


class SetupError(Exception):
    """Preparing the container failed before exec: reported on stderr, exit 125."""


def run_foreground(spec: dict) -> int:
    """Run the container described by `spec` with this process's stdio; return its exit code."""
    return wait_exit(start(spec))


def wait_exit(pid: int) -> int:
    return _exit_code(os.waitpid(pid, 0)[1])


def start(spec: dict, stdio: tuple[int, int, int] | None = None, *, direct: bool = False,
          handoff: list[int] | None = None, network: dict | None = None,
          network_ready: "Callable[[list[int]], None] | None" = None) -> int:
    """Start the container; return the pid to wait for (its exit status is the container's).
    `stdio`: file descriptors for the container's stdin, stdout and stderr (default: ours).
    `direct`: return the container's init itself (the intermediate process exits at once), so that the
    caller, which must be a child subreaper, waits for and signals the init directly (the supervisor).
    `network` (with `direct`): the plan net/netns_setup.configure carries out in the new network namespace
    (mode "container": join the namespace at plan["netns"] instead); `handoff` receives the fds it made
    there for the caller (the relay's listeners, the DNS socket). With plan["wait"], the container's command
    waits until `network_ready(fds)` (called here, before that command runs) has returned: an external
    helper (slirp4netns, pasta) configures the namespace from outside first."""
    flags = 0
    for ns in spec["linux"]["namespaces"]:
        flags |= _NS_FLAGS[ns["type"]]
    sys.stdout.flush()
    sys.stderr.flush()
    report_r, report_w = os.pipe() if direct else (-1, -1)
    # closed (O_CLOEXEC) when the container's command has been exec'd, or when its setup failed: `run -d`
    # and `exec` right after it must find the container set up (pivoted), not half-way
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC) if direct else (-1, -1)
    keep_id = spec.get("annotations", {}).get(KEEP_ID_ANNOTATION)
    userns_sync = (os.pipe(), os.pipe()) if keep_id else None
    join_netns = None
    if network is not None and network.get("mode") == "container":
        flags &= ~syscalls.CLONE_NEWNET
        join_netns, network = os.open(network["netns"], os.O_RDONLY | os.O_CLOEXEC), None
    fd_channel = _socket_pair() if network and direct else None
    child = os.fork()
    if child == 0:
        code = EXIT_SETUP_FAILED
        try:
            if stdio is not None:
                for target, fd in enumerate(stdio):
                    os.dup2(fd, target)
            if userns_sync is not None:
                _enter_own_userns(userns_sync)
            cgroup = spec.get("annotations", {}).get(CGROUP_ANNOTATION)
            if cgroup:  # before unshare(CLONE_NEWCGROUP): the container's cgroup becomes its cgroup root
                from pinnace.runtime import cgroups
                cgroups.enter(cgroups.from_json(json.loads(cgroup)).paths)
            syscalls.unshare(flags)
            if join_netns is not None:
                syscalls.setns(join_netns, syscalls.CLONE_NEWNET)
                os.close(join_netns)
            if fd_channel is not None:  # in the new network namespace, before anything runs there
                from pinnace.net.netns_setup import configure
                fds = configure(network)
                fd_channel[1].sendmsg([b"n"], [(_SOL_SOCKET, _SCM_RIGHTS, _fd_bytes(fds))] if fds else [])
                for fd in fds:
                    os.close(fd)
                if network.get("wait") and fd_channel[1].recv(1) != b"g":
                    raise SetupError("the container's network could not be set up")
            init = os.fork()  # the first child in a new pid namespace is its pid 1
            if init == 0:
                if direct:
                    os.close(report_r)
                    os.close(report_w)
                    os.close(ready_r)
                    global _READY_FD
                    _READY_FD = ready_w
                _container_init(spec)  # never returns
            if direct:
                os.write(report_w, f"{init}\n".encode())
                code = 0
            else:
                code = _exit_code(os.waitpid(init, 0)[1])
        except BaseException as exc:  # noqa: BLE001 - a forked child must never return into the caller
            _report(f"container setup failed: {exc}")
        finally:
            os._exit(code)
    if join_netns is not None:
        os.close(join_netns)
    if userns_sync is not None:
        _map_own_userns(child, keep_id, userns_sync)
    if not direct:
        return child
    os.close(report_w)
    os.close(ready_w)
    if fd_channel is not None:
        fd_channel[1].close()
        try:
            _, ancillary, _, _ = fd_channel[0].recvmsg(1, 256)
            for level, kind, data in ancillary:
                if level == _SOL_SOCKET and kind == _SCM_RIGHTS and handoff is not None:
                    handoff.extend(int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, len(data) - 3, 4))
            if network.get("wait"):
                try:
                    if network_ready is not None:
                        network_ready(list(handoff or []))
                    fd_channel[0].send(b"g")
                except BaseException:
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
                    raise
        finally:
            fd_channel[0].close()
    try:
        data = b""
        while chunk := os.read(report_r, 64):
            data += chunk
        while os.read(ready_r, 64):  # EOF: exec'd, or failed and gone
            pass
    finally:
        os.close(report_r)
        os.close(ready_r)
    os.waitpid(child, 0)
    if not data.strip():
        raise SetupError("the container's init did not start")
    return int(data)


KEEP_ID_ANNOTATION = "io.pinnace.keep-id"


def _socket_pair():  # noqa: ANN202 - a pair of _socket.socket (not `socket`: the supervisor's RSS)
    import _socket
    return _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)


_SOL_SOCKET, _SCM_RIGHTS = 1, 1


def _fd_bytes(fds: list[int]) -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)


def _enter_own_userns(sync: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """--userns=keep-id, in the container's first process: a user namespace of its own, mapped by the
    parent (which is root of the per-user namespace and may map any of its ids)."""
    (ready_r, ready_w), (go_r, go_w) = sync
    os.close(ready_r)
    os.close(go_w)
    syscalls.unshare(syscalls.CLONE_NEWUSER)
    os.write(ready_w, b"1")
    os.close(ready_w)
    if os.read(go_r, 1) != b"1":
        raise SetupError("the user namespace for --userns=keep-id was not mapped")
    os.close(go_r)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _map_own_userns(child: int, keep_id: str, sync: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """Map container id U (the user's own uid) to 0 of the per-user namespace, which is the user on the
    host; container ids 0..U-1 to 1..U, and the rest to themselves."""
    (ready_r, ready_w), (go_r, go_w) = sync
    os.close(ready_w)
    os.close(go_r)
    try:
        if os.read(ready_r, 1) != b"1":
            return
        for kind, own in zip(("uid", "gid"), (int(x) for x in keep_id.split(":"))):
            with open(f"/proc/self/{kind}_map") as f:
                total = sum(int(line.split()[2]) for line in f if line.strip())
            lines = [f"0 1 {own}", f"{own} 0 1"]
            if total - 1 - own > 0:
                lines.append(f"{own + 1} {own + 1} {total - 1 - own}")
            with open(f"/proc/{child}/{kind}_map", "w") as f:
                f.write("\n".join(lines) + "\n")
        os.write(go_w, b"1")
    finally:
        os.close(ready_r)
        os.close(go_w)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _report(message: str) -> None:
    try:
        os.write(2, f"Error: {message}\n".encode())
    except OSError:
        pass


def _container_init(spec: dict) -> None:
    try:
        rootfs = spec["root"]["path"]
        _prepare_rootfs(spec, rootfs)
        _pivot(rootfs)
        _apply_paths(spec)
        if spec["root"].get("readonly"):
            syscalls.mount(None, "/", None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY, None)
        if spec.get("hostname"):
            _sethostname(spec["hostname"])
        process = spec["process"]
        if process.get("terminal"):
            import fcntl
            import termios
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty slave on stdin becomes the controlling terminal
        for limit in process.get("rlimits", []):
            # 2**64-1 is the spec's "unlimited"; Python wants RLIM_INFINITY (-1) for it
            soft, hard = (v if v < 2**63 else resource.RLIM_INFINITY for v in (limit["soft"], limit["hard"]))
            resource.setrlimit(getattr(resource, limit["type"]), (soft, hard))
        program = _find_program(process["args"][0], process["env"])
        _drop_privileges(process)
        os.chdir(process.get("cwd") or "/")
    except BaseException as exc:  # noqa: BLE001
        _report(f"container setup failed: {exc}")
        os._exit(EXIT_SETUP_FAILED)
    if spec.get("annotations", {}).get(INIT_ANNOTATION) == "true":
        command = os.fork()
        if command != 0:
            _init_loop(command)  # never returns
    _default_signals()
    if program is None:
        _report(f"{process['args'][0]}: executable file not found in $PATH")
        os._exit(EXIT_NOT_FOUND)
    try:
        os.execve(program, process["args"], dict(e.split("=", 1) for e in process["env"] if "=" in e))
    except OSError as exc:
        _report(f"{process['args'][0]}: {exc.strerror}")
        os._exit(EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_CANNOT_INVOKE)


# -- --init ------------------------------------------------------------------------------------------------
INIT_ANNOTATION = "io.pinnace.init"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
              signal.SIGWINCH, signal.SIGCONT, signal.SIGALRM)


def _default_signals() -> None:
    for sig in range(1, signal.NSIG):  # the command starts with default dispositions, as after a fresh exec
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass


def _set_cmdline(name: bytes) -> None:
    """Overwrite our argv in place (what /proc/PID/cmdline reads): no privilege needed, it is our memory."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48 and 49)
        if end - start > len(name):
            ctypes.memmove(start, name + b"\0" * (end - start - len(name)), end - start)
    except (OSError, ValueError, IndexError):
        pass


_READY_FD = -1  # in the container's init: the write end of start()'s readiness pipe


def _init_loop(command: int) -> None:
    """`--init`: stay pid 1, forward signals to the command (which, not being pid 1, can be killed by them),
    reap every orphan, and exit with the command's status. Runs after pivot_root, so it uses only what is
    already imported (os, signal)."""
    _set_cmdline(b"pinnace-init")  # else /proc/1/cmdline would show the supervisor's host command line
    if _READY_FD >= 0:
        os.close(_READY_FD)  # pid 1 never execs: the command's exec closes the other copy
    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(command, signum)
        except ProcessLookupError:
            pass
    for sig in _FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == command:
            os._exit(_exit_code(status))


# -- filesystems --------------------------------------------------------------------------------------
def _inside(rootfs: str, dest: str, *, file: bool = False) -> str:
    """The host path of `dest` below rootfs, creating directories (and the last part as an empty file
    when a file is to be bound there); refuses to pass through a symlink of the image (which could
    point anywhere on the host)."""
    path = rootfs
    parts = [p for p in dest.split("/") if p and p != "."]
    for i, part in enumerate(parts):
        if part == "..":
            raise SetupError(f"mount destination {dest!r} leaves the container")
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if file and i == len(parts) - 1:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
            else:
                os.mkdir(path, 0o755)
            continue
        if os.path.islink(path):
            raise SetupError(f"mount destination {dest!r} goes through a symlink in the image")
        del st
    return path


def _options(options: list[str]) -> tuple[int, str]:
    flags, data = 0, []
    for opt in options:
        if opt in _MOUNT_FLAGS:
            flags |= _MOUNT_FLAGS[opt]
        elif opt in ("rbind", "bind"):
            flags |= syscalls.MS_BIND | (syscalls.MS_REC if opt == "rbind" else 0)
        else:
            data.append(opt)
    return flags, ",".join(data)


def _prepare_rootfs(spec: dict, rootfs: str) -> None:
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)
    syscalls.mount(rootfs, rootfs, None, syscalls.MS_BIND | syscalls.MS_REC, None)  # pivot_root wants a mount
    for m in spec.get("mounts", []):
        flags, data = _options(m.get("options", []))
        is_bind = bool(flags & syscalls.MS_BIND) or m.get("type") == "bind"
        target = _inside(rootfs, m["destination"], file=is_bind and not os.path.isdir(m["source"]))
        if is_bind:
            syscalls.mount(m["source"], target, None, syscalls.MS_BIND | (flags & syscalls.MS_REC), None)
            if flags & ~(syscalls.MS_BIND | syscalls.MS_REC):
                syscalls.mount(None, target, None, syscalls.MS_BIND | syscalls.MS_REMOUNT
                               | (flags & ~(syscalls.MS_BIND | syscalls.MS_REC)), None)
        else:
            syscalls.mount(m["source"], target, m["type"], flags, data or None)
    dev = os.path.join(rootfs, "dev")
    for name in _DEVICES:
        # mknod is refused in a user namespace: bind the host's device nodes, as rootless Podman does
        node = os.path.join(dev, name)
        if not os.path.lexists(node):
            os.close(os.open(node, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o666))
        syscalls.mount(f"/dev/{name}", node, None, syscalls.MS_BIND, None)
    for name, target in _DEV_LINKS:
        link = os.path.join(dev, name)
        if not os.path.lexists(link):
            os.symlink(target, link)
    if spec["process"].get("terminal"):
        console = os.path.join(dev, "console")  # the supervisor's pty slave, as runc binds it
        if not os.path.lexists(console):
            os.close(os.open(console, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        syscalls.mount(os.ttyname(0), console, None, syscalls.MS_BIND, None)
    cwd = spec["process"].get("cwd") or "/"
    _inside(rootfs, cwd)  # Docker creates a missing working directory


def _pivot(rootfs: str) -> None:
    machine = os.uname().machine
    number = _PIVOT_ROOT.get(machine)
    if number is None:
        raise SetupError(f"pivot_root: unsupported architecture {machine}")
    os.chdir(rootfs)
    # pivot_root(".", "."): the old root ends up stacked on the new one, then is detached
    if syscalls._lib().syscall(ctypes.c_long(number), b".", b".") < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")
    syscalls.umount2(".", syscalls.MNT_DETACH)
    os.chdir("/")


def _apply_paths(spec: dict) -> None:
    linux = spec.get("linux", {})
    for path in linux.get("maskedPaths", []):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                syscalls.mount("tmpfs", path, "tmpfs", syscalls.MS_RDONLY, "size=0")
            else:
                syscalls.mount("/dev/null", path, None, syscalls.MS_BIND, None)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
    for path in linux.get("readonlyPaths", []):
        try:
            syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC, None)
            syscalls.mount(None, path, None, syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY
                           | syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC, None)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise


def _sethostname(name: str) -> None:
    raw = name.encode()
    if syscalls._lib().sethostname(raw, ctypes.c_size_t(len(raw))) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sethostname: {os.strerror(err)}")


# -- identity ------------------------------------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _cap_mask(names: list[str]) -> int:
    return sum(1 << ALL_CAPS.index(n) for n in names if n in ALL_CAPS)


def _drop_privileges(process: dict) -> None:
    caps = process.get("capabilities", {})
    bounding = _cap_mask(caps.get("bounding", []))
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = len(ALL_CAPS) - 1
    for bit in range(last + 1):
        if not bounding & (1 << bit):
            syscalls.prctl(PR_CAPBSET_DROP, bit)
        elif not syscalls.prctl(PR_CAPBSET_READ, bit):
            bounding &= ~(1 << bit)  # not ours to give (a host that dropped it for root): --privileged gets the rest
    user = process["user"]
    os.setgroups(list(user.get("additionalGids", [])))
    os.setresgid(user["gid"], user["gid"], user["gid"])
    os.setresuid(user["uid"], user["uid"], user["uid"])  # a non-zero uid loses its capabilities here
    if user["uid"] == 0:
        keep = _cap_mask(caps.get("permitted", [])) & bounding
        effective = _cap_mask(caps.get("effective", [])) & keep
        header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
        data = (_CapData * 2)(_CapData(effective & 0xFFFFFFFF, keep & 0xFFFFFFFF, 0),
                              _CapData(effective >> 32, keep >> 32, 0))
        if syscalls._lib().capset(ctypes.byref(header), data) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"capset: {os.strerror(err)}")
    if process.get("noNewPrivileges"):
        syscalls.prctl(PR_SET_NO_NEW_PRIVS, 1)


def _find_program(name: str, env: list[str]) -> str | None:
    """execvp's search, done before dropping privileges so that the error is ours to word."""
    if "/" in name:
        return name if os.path.lexists(name) else None
    path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/bin:/bin")
    for d in path.split(":"):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None
