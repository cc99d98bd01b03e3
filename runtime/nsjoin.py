"""Joining an existing namespace holder with nothing but os and ctypes: the part of runtime/userns.py
that helper processes (the supervisor) need. userns.py (dataclasses, pathlib: ~1.5 MB more RSS) starts
holders and answers everything else.
"""
from __future__ import annotations

import os

from pinnace.errors import NamespaceError
from pinnace.runtime import syscalls

PIDFILE = "holder.pid"
HOLDER_NAME = "pinnace-holder"  # /proc/PID/comm of the holder: part of checking a pidfile is ours


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of a process, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19])


def _read_pidfile(runroot: "str | os.PathLike") -> tuple[int, int] | None:
    try:
        with open(os.path.join(runroot, PIDFILE)) as f:
            pid_s, start_s = f.read().split()[:2]
        return int(pid_s), int(start_s)
    except (OSError, ValueError):
        return None


def _is_our_holder(pid: int, start: int) -> bool:
    """The pidfile is trusted only if the process has the recorded start time (pids get reused), our
    uid, and the holder's name; a zombie counts as gone."""
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X") or stat[1] != start:
        return False
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        if comm == HOLDER_NAME:
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0", 1)[0]
        # b"": caught inside its execve of sleep, after the name changed but before the new argv is set up
        return comm == "sleep" and argv0 in (HOLDER_NAME.encode(), b"")
    except OSError:
        return False


def _join(pid: int, start: int) -> bool:
    """setns into the holder's user then mount namespace; False if the holder vanished first."""
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        threads = 1
    if threads > 1:
        raise NamespaceError(f"cannot join the user namespace: the process has {threads} threads "
                             "(join before starting any thread)")
    try:
        user_fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        mnt_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(user_fd)
        return False
    try:
        # checked again with the fds open: they pin the namespaces of the process we checked
        if not _is_our_holder(pid, start):
            return False
        try:
            cwd = os.getcwd()
        except OSError:
            cwd = "/"
        try:
            syscalls.setns(user_fd, syscalls.CLONE_NEWUSER)
        except OSError as e:
            raise NamespaceError(f"cannot join the user namespace of holder {pid}: {e.strerror}") from None
        try:
            syscalls.setns(mnt_fd, syscalls.CLONE_NEWNS)
        except OSError as e:
            raise NamespaceError(f"cannot join the mount namespace of holder {pid}: {e.strerror}") from None
        # joining a mount namespace resets the working directory to its root
        try:
            os.chdir(cwd)
        except OSError:
            pass
        return True
    finally:
        os.close(user_fd)
        os.close(mnt_fd)




def join_existing(runroot: "str | os.PathLike") -> bool:
    """Join the live holder of `runroot`; False if there is none (then userns.ensure_joined starts one)."""
    rec = _read_pidfile(runroot)
    return bool(rec and _is_our_holder(*rec) and _join(*rec))
