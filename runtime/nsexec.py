"""Run a process inside a running container (`pinnace exec`, healthchecks): join its namespaces, exec.

The caller has joined the per-user namespace holder (rootless) or is real root, and is single-threaded.
`exec_in_container` forks an *intermediate* child that opens every namespace of the container's init
(/proc/PID/ns/*) before joining any (after setns(mnt) the /proc of the container is visible instead of
ours), joins them, and forks the *grandchild*: the first process that is really inside the container's
pid namespace. The grandchild enters the working directory (setns(mnt) put its root at the container's
root), applies rlimits, drops privileges exactly as the container's init does (executor's helpers), and
execs. The intermediate child waits and exits with the grandchild's exit code, so `executor.wait_exit(pid)`
on the returned pid gives the exec'd command's code: its own, 128+N when killed by signal N, 127 when the
command is not found, 126 when it cannot be invoked, 125 when joining or preparing failed (one
`Error: …` line on the given stderr).

Signals: the intermediate forwards the catchable termination/job signals (those `--init` forwards) to the
grandchild; a SIGKILL of the intermediate kills the grandchild too (parent-death signal). With
`process_group=True` both are in a new process group whose id is the returned pid, so
`os.killpg(pid, SIGKILL)` also ends whatever the command started (what healthcheck timeouts use).

Only os, signal, select, fcntl, termios and the executor (ctypes, resource) are imported: the
per-container supervisor imports this module, and it must stay small.
"""
from __future__ import annotations

import errno
import fcntl
import os
import resource
import select
import signal
import sys
import termios

from pinnace.runtime import executor, syscalls

# The order of joining. mnt comes last: after it the intermediate's root is the container's root.
# user is never joined: the container lives in the holder's user namespace, which the caller is in.
_NAMESPACES = (("ipc", syscalls.CLONE_NEWIPC), ("uts", syscalls.CLONE_NEWUTS), ("net", syscalls.CLONE_NEWNET),
               ("pid", syscalls.CLONE_NEWPID), ("cgroup", syscalls.CLONE_NEWCGROUP),
               ("mnt", syscalls.CLONE_NEWNS))
_RLIM_MAX = 2**63  # values at or above this mean "unlimited" (the spec writes 2**64-1)


def exec_in_container(container_pid: int, process: dict, *, stdio: tuple[int, int, int] | None = None,
                      detach: bool = False, process_group: bool = False) -> int:
    """Start `process` (an OCI runtime-spec `process` object) inside the namespaces of the running
    container whose init is host pid `container_pid`; return the pid to wait for with
    `executor.wait_exit` (its exit code is the command's, see the module docstring).

    `stdio`: fds for the command's stdin, stdout and stderr (default: ours). When `process["terminal"]`
    is true they are a pty slave: the command gets a new session with it as controlling terminal.
    `detach`: the returned pid (the intermediate child) does not wait for the command: it exits 0 as soon
    as the command has been exec'd (or with 125/126/127 when it could not be), and the command is
    reparented to the nearest child subreaper among the caller's ancestors (the supervisor when it is
    the caller), or to init; nobody here learns its exit code.
    `process_group`: see the module docstring.
    """
    syscalls._lib()  # resolve libc now: once inside the container, nothing may be loaded from our disk
    max_fd = max(4096, os.sysconf("SC_OPEN_MAX"))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # or the child would flush our buffered output a second time
        except (OSError, ValueError, AttributeError):
            pass
    child = os.fork()
    if child == 0:
        code = executor.EXIT_SETUP_FAILED
        try:
            code = _intermediate(container_pid, process, stdio, detach, process_group, max_fd)
        except BaseException as exc:  # noqa: BLE001 - a forked child must never return into the caller
            executor._report(f"exec in container process {container_pid}: {_describe(exc)}")
        finally:
            os._exit(code)
    if process_group:
        try:
            os.setpgid(child, child)  # also done by the child: whichever runs first, killpg works on return
        except OSError:
            pass
    return child


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    if isinstance(exc, (KeyError, TypeError)):
        return f"invalid process description: {exc}"
    return str(exc) or type(exc).__name__


def _reset_signals() -> None:
    """The caller's Python handlers, wakeup fd and blocked mask must not reach the command (or run here)."""
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    executor._default_signals()
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _intermediate(container_pid: int, process: dict, stdio: tuple[int, int, int] | None, detach: bool,
                  process_group: bool, max_fd: int) -> int:
    _reset_signals()
    if process_group:
        os.setpgid(0, 0)
    if stdio is not None:
        copies = [os.dup(fd) for fd in stdio]  # via copies: stdio may name 0/1/2 in another order
        for target, fd in enumerate(copies):
            os.dup2(fd, target)
    os.closerange(3, max_fd)  # none of the caller's files (log, sockets, pipes) go into the container
    namespaces = _open_namespaces(container_pid)
    _join_cgroups(container_pid)
    try:
        for name, fd, flag in namespaces:
            try:
                syscalls.setns(fd, flag)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot join its {name} namespace: {os.strerror(exc.errno)}") from None
    finally:
        for _, fd, _ in namespaces:
            os.close(fd)
    status_r, status_w = os.pipe() if detach else (-1, -1)  # close-on-exec: EOF means exec succeeded
    alive_r, alive_w = (-1, -1) if detach else os.pipe()   # EOF for the grandchild: we are gone
    grandchild = os.fork()
    if grandchild == 0:
        for fd in (status_r, alive_w):
            if fd >= 0:
                os.close(fd)
        _command(process, detach, status_w, alive_r, max_fd)  # never returns
    if detach:
        os.close(status_w)
        failed = _read_all(status_r)
        if not failed:
            return 0
        return executor._exit_code(os.waitpid(grandchild, 0)[1])
    os.close(alive_r)

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(grandchild, signum)
        except ProcessLookupError:
            pass
    for sig in executor._FORWARDED:
        signal.signal(sig, forward)
    return executor._exit_code(os.waitpid(grandchild, 0)[1])  # PEP 475: retried after a forwarded signal


def _read_all(fd: int) -> bytes:
    data = b""
    try:
        while chunk := os.read(fd, 64):
            data += chunk
    finally:
        os.close(fd)
    return data


def _open_namespaces(container_pid: int) -> list[tuple[str, int, int]]:
    """Open the container's namespaces (all before joining any), leaving out those we already share
    (e.g. the network namespace of a `--network host` container)."""
    opened: list[tuple[str, int, int]] = []
    try:
        for name, flag in _NAMESPACES:
            try:
                fd = os.open(f"/proc/{container_pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise OSError(errno.ESRCH, "the container is not running") from None
            except OSError as exc:
                raise OSError(exc.errno, f"cannot open its {name} namespace: {os.strerror(exc.errno)}") from None
            theirs = os.fstat(fd)
            ours = os.stat(f"/proc/self/ns/{name}")
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
                os.close(fd)
                continue
            opened.append((name, fd, flag))
    except BaseException:
        for _, fd, _ in opened:
            os.close(fd)
        raise
    return opened


def _cgroups_of(pid: int | str) -> dict[str, tuple[str, str]]:
    """hierarchy id -> (controllers, path) from /proc/PID/cgroup (paths as our cgroup namespace sees them)."""
    found = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                hid, _, rest = line.rstrip("\n").partition(":")
                controllers, _, path = rest.partition(":")
                found[hid] = (controllers, path)
    except OSError:
        pass
    return found


def _join_cgroups(container_pid: int) -> None:
    """Move into the container's cgroups (v2, and each v1 hierarchy where it is elsewhere than we are),
    so that its limits and `stats` also cover what we run, as runc exec does. Best effort: where the move
    is refused (a rootless user without a delegated cgroup) the command stays in the caller's cgroup."""
    ours = _cgroups_of("self")
    moves = {hid: entry for hid, entry in _cgroups_of(container_pid).items()
             if ours.get(hid) != entry and ".." not in entry[1].split("/")}
    if not moves:
        return
    from pinnace.runtime.cgroups import _cgroup_mounts, _in_mount  # only here: rarely needed, not small
    try:
        with open("/proc/self/mountinfo") as f:
            mounts = _cgroup_mounts(f.read())
    except OSError:
        return
    for controllers, path in moves.values():
        wanted = set(controllers.split(",")) if controllers else set()
        for point, root, fstype, options in mounts:
            if (fstype == "cgroup" and wanted and wanted <= options) or (fstype == "cgroup2" and not wanted):
                try:
                    fd = os.open(os.path.join(_in_mount(point, root, path), "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, b"0")  # "0": the writing process
                    finally:
                        os.close(fd)
                except OSError:
                    pass
                break


def _apply_rlimits(process: dict) -> None:
    """The container's rlimits; a hard limit above ours (the caller may have lower ones than the
    container's creator) is clamped, since only the host's root could raise it."""
    for limit in process.get("rlimits") or []:
        which = getattr(resource, limit["type"])
        soft, hard = (resource.RLIM_INFINITY if v >= _RLIM_MAX else v for v in (limit["soft"], limit["hard"]))
        try:
            resource.setrlimit(which, (soft, hard))
        except ValueError:
            cap = resource.getrlimit(which)[1]
            if cap != resource.RLIM_INFINITY:
                hard = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
                soft = hard if soft == resource.RLIM_INFINITY else min(soft, hard)
            resource.setrlimit(which, (soft, hard))


def _command(process: dict, detach: bool, status_w: int, alive_r: int, max_fd: int) -> None:
    """The grandchild, inside the container's pid namespace: prepare and exec. Never returns."""
    def fail(code: int, message: str) -> None:
        executor._report(message)
        if detach:
            try:
                os.write(status_w, bytes([code]))
            except OSError:
                pass
        os._exit(code)

    args = process.get("args") or []
    env = process.get("env") or []
    program = None
    try:
        if not args:
            raise ValueError("no command given")
        if process.get("terminal"):
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty slave on stdin becomes the controlling terminal
        cwd = process.get("cwd") or "/"
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot enter the working directory {cwd}: {exc.strerror}") from None
        _apply_rlimits(process)
        program = executor._find_program(args[0], env)
        executor._drop_privileges(process)
        os.umask(0o022)  # Docker's; the caller's umask is no business of the container
        if not detach:
            # set after the uid change, which clears it; then make sure the intermediate did not die first
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            if select.select([alive_r], [], [], 0)[0]:
                os._exit(128 + signal.SIGKILL)
            os.close(alive_r)
        keep = status_w if detach else 2
        os.closerange(3, keep)
        os.closerange(keep + 1, max_fd)
    except BaseException as exc:  # noqa: BLE001
        fail(executor.EXIT_SETUP_FAILED, f"exec setup failed: {_describe(exc)}")
    if program is None:
        fail(executor.EXIT_NOT_FOUND, f"{args[0]}: executable file not found in $PATH")
    try:
        os.execve(program, args, dict(e.split("=", 1) for e in env if "=" in e))
    except OSError as exc:
        fail(executor.EXIT_NOT_FOUND if exc.errno == errno.ENOENT else executor.EXIT_CANNOT_INVOKE,
             f"{args[0]}: {exc.strerror}")
    os._exit(executor.EXIT_SETUP_FAILED)  # not reached
