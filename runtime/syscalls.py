"""ctypes wrappers for the Linux syscalls Python 3.11's `os` lacks: unshare, setns, mount, umount2, prctl.

Only ctypes is imported (about 1 ms) and libc is resolved on first use, so helper processes that import
this module stay cheap. Every failure raises OSError carrying the errno and a message naming the call.
"""
from __future__ import annotations

import ctypes
import os

# clone/unshare/setns namespace flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags (linux/mount.h)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

# umount2(2) flags
MNT_FORCE = 0x1
MNT_DETACH = 0x2
MNT_EXPIRE = 0x4
UMOUNT_NOFOLLOW = 0x8

# prctl(2) options
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    # The interpreter is linked against libc, so its symbols resolve from the main program (no find_library,
    # which would import subprocess and cost milliseconds).
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, call: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return result


def _b(value: str | bytes | os.PathLike | None) -> bytes | None:
    if value is None:
        return None
    return os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (CLONE_NEW*). CLONE_NEWUSER needs a single thread."""
    _check(_lib().unshare(ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace behind `fd` (an open /proc/PID/ns/* file); nstype 0 accepts any kind."""
    _check(_lib().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns(fd={fd}, 0x{nstype:x})")


def mount(source: str | bytes | os.PathLike | None, target: str | bytes | os.PathLike,
          fstype: str | bytes | None = None, flags: int = 0, data: str | bytes | None = None) -> None:
    _check(_lib().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
           f"mount({os.fsdecode(source) if source is not None else None!r} on {os.fsdecode(target)!r}"
           f", type {fstype!r})")


def umount2(target: str | bytes | os.PathLike, flags: int = 0) -> None:
    _check(_lib().umount2(_b(target), ctypes.c_int(flags)), f"umount2({os.fsdecode(target)!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_lib().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                               ctypes.c_ulong(arg4), ctypes.c_ulong(arg5)), f"prctl({option})")


# The new mount API (Linux 5.2+; overlay's `lowerdir+` from 6.8): one fsconfig call per layer, so the
# number of layers is not bounded by mount(2)'s one-page option string. Syscall numbers are the same on
# every architecture (they were added after the tables were unified).
_SYS_MOVE_MOUNT, _SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 429, 430, 431, 432
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def _syscall(number: int, *args: object) -> int:
    return _lib().syscall(ctypes.c_long(number), *args)


def fsopen(fstype: str) -> int:
    return _check(_syscall(_SYS_FSOPEN, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen({fstype!r})")


def fsconfig_string(fs_fd: int, key: str, value: str | bytes | os.PathLike) -> None:
    _check(_syscall(_SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_SET_STRING), _b(key), _b(value),
                    ctypes.c_int(0)), f"fsconfig({key}={os.fsdecode(value)!r})")


def fsconfig_flag(fs_fd: int, key: str) -> None:
    _check(_syscall(_SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_SET_FLAG), _b(key), None,
                    ctypes.c_int(0)), f"fsconfig({key})")


def fsconfig_create(fs_fd: int) -> None:
    _check(_syscall(_SYS_FSCONFIG, ctypes.c_int(fs_fd), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None,
                    ctypes.c_int(0)), "fsconfig(create)")


def fsmount(fs_fd: int, attr_flags: int = 0) -> int:
    return _check(_syscall(_SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC),
                           ctypes.c_uint(attr_flags)), "fsmount")


def move_mount_to(mount_fd: int, target: str | bytes | os.PathLike) -> None:
    """Attach a detached mount (from fsmount) at target."""
    _check(_syscall(_SYS_MOVE_MOUNT, ctypes.c_int(mount_fd), b"", ctypes.c_int(-100), _b(target),
                    ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount(to {os.fsdecode(target)!r})")
