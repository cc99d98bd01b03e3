"""Starting the per-user namespace holder: fork, unshare, map ids from outside, become a tiny sleeper.

Split from userns.py (which finds, checks and joins a holder); this part runs only when none is alive.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import signal
from pathlib import Path

from pinnace.errors import NamespaceError
from pinnace.runtime import syscalls
from pinnace.runtime.userns import (HOLDER_NAME, IGNORE_SUBUID_ENV, PIDFILE, IdMappings, _find_program,
                                    _proc_stat, host_program_env, subid_ranges)


def _read_line(fd: int) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        buf += chunk
    return buf.strip()


def _userns_refused(err: int) -> NamespaceError:
    def sysctl(name: str) -> str | None:
        try:
            with open("/proc/sys/" + name.replace(".", "/")) as f:
                return f.read().strip()
        except OSError:
            return None

    for name, bad, fix in (("kernel.unprivileged_userns_clone", "0", "1"),
                           ("user.max_user_namespaces", "0", "15000"),
                           ("kernel.apparmor_restrict_unprivileged_userns", "1", "0")):
        if sysctl(name) == bad:
            return NamespaceError(f"unprivileged user namespaces are disabled on this host: "
                                  f"run 'sysctl -w {name}={fix}' as root")
    return NamespaceError(f"cannot create a user namespace: {os.strerror(err)}")


def _holder_main(report_fd: int, go_fd: int) -> None:
    """The holder itself, in the forked child. No imports from here on: the child must stay cheap."""
    os.setsid()
    if os.fork() != 0:
        os._exit(0)  # the grandchild is reparented at once: no zombie for the CLI to reap
    null = os.open("/dev/null", os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(null, std)  # never keep the CLI's stdout/stderr pipes open
    keep = sorted({0, 1, 2, report_fd, go_fd})
    for lo, hi in zip(keep, keep[1:] + [1 << 20]):
        os.closerange(lo + 1, hi)  # also the flock fd: the lock must be released with the CLI
    os.chdir("/")
    with contextlib.suppress(OSError):
        comm = os.open("/proc/self/comm", os.O_WRONLY)
        os.write(comm, HOLDER_NAME.encode())
        os.close(comm)
    try:
        syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNS)
    except OSError as e:
        os.write(report_fd, b"E unshare %d\n" % e.errno)
        os._exit(1)
    os.write(report_fd, b"U %d\n" % os.getpid())
    if os.read(go_fd, 16) != b"M":
        os._exit(1)  # the parent gave up (mapping failed)
    try:
        # mounts made in here must never propagate back to the host
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    except OSError as e:
        os.write(report_fd, b"E mount %d\n" % e.errno)
        os._exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.write(report_fd, b"R\n")
    os.close(report_fd)
    os.close(go_fd)
    # Become small: this fork carries the CLI's whole heap (~26 MB RSS); sleep(1) keeps the namespaces
    # alive in ~1 MB. argv[0] names it, since /proc/PID/comm will say "sleep".
    for sleeper in ("/usr/bin/sleep", "/bin/sleep"):
        with contextlib.suppress(OSError):
            os.execve(sleeper, [HOLDER_NAME, "infinity"], host_program_env())
    while True:
        signal.pause()


def _write_maps(pid: int, uid: int, gid: int, mappings: IdMappings | None, user: str) -> None:
    if mappings is None:
        # single mapping: an unprivileged process may map its own ids once setgroups is denied
        try:
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1\n"), ("gid_map", f"0 {gid} 1\n")):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write(text)
        except OSError as e:
            raise NamespaceError(f"cannot write the id map of the user namespace: {e.strerror}") from None
        return
    import subprocess  # only when a holder starts: keeps joining cheap

    for tool, ranges, file in (("newuidmap", mappings.uids, "/etc/subuid"),
                               ("newgidmap", mappings.gids, "/etc/subgid")):
        args = [str(v) for r in ranges for v in (r.container_id, r.host_id, r.size)]
        try:
            res = subprocess.run([_find_program(tool) or tool, str(pid), *args], env=host_program_env(),
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NamespaceError(f"cannot run {tool}: {e}") from None
        if res.returncode != 0:
            msg = " ".join(res.stderr.decode(errors="replace").split()) or f"exit status {res.returncode}"
            raise NamespaceError(f"{tool} failed: {msg} (check that {file} has a range for {user}, "
                                 f"e.g. '{user}:100000:65536')")


def start_holder(runroot: Path) -> tuple[int, int]:
    """Fork the holder, map its ids from here (setuid helpers cannot work inside an unmapped namespace),
    and record it in the pidfile. Called with the lock held."""
    uid, gid = os.getuid(), os.getgid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    mappings = None
    if os.environ.get(IGNORE_SUBUID_ENV) != "1":
        mappings = subid_ranges(user, uid, gid)
        if mappings and not (_find_program("newuidmap") and _find_program("newgidmap")):
            mappings = None
    syscalls._lib()  # resolve libc before forking
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(report_r)
            os.close(go_w)
            _holder_main(report_w, go_r)
        finally:
            os._exit(1)
    os.close(report_w)
    os.close(go_r)
    holder = 0
    try:
        os.waitpid(child, 0)
        msg = _read_line(report_r)
        if msg.startswith(b"E "):
            _, call, num = msg.split()
            if call == b"unshare":
                raise _userns_refused(int(num))
            raise NamespaceError(f"namespace holder: {call.decode()} failed: {os.strerror(int(num))}")
        if not msg.startswith(b"U "):
            raise NamespaceError("the namespace holder exited during start-up")
        holder = int(msg.split()[1])
        _write_maps(holder, uid, gid, mappings, user)
        os.write(go_w, b"M")
        msg = _read_line(report_r)
        if msg != b"R":
            raise NamespaceError(f"the namespace holder failed to start: {msg.decode(errors='replace')}")
        stat = _proc_stat(holder)
        if stat is None:
            raise NamespaceError("the namespace holder exited during start-up")
        tmp = runroot / f".{PIDFILE}.{os.getpid()}"
        try:
            tmp.write_text(f"{holder} {stat[1]}\n")
            os.replace(tmp, runroot / PIDFILE)
        except OSError as e:
            raise NamespaceError(f"cannot write {runroot / PIDFILE}: {e.strerror}") from None
        return holder, stat[1]
    except BaseException:
        if holder:
            with contextlib.suppress(OSError):
                os.kill(holder, signal.SIGKILL)
        raise
    finally:
        os.close(report_r)
        os.close(go_w)
