"""The per-user namespace holder (Podman's "pause process"), and joining it.

One long-lived, tiny process per user and runroot owns a user namespace (uid/gid 0 → the user's own ids,
1..N → the /etc/subuid and /etc/subgid ranges, the layout Podman uses) and a mount namespace in which
storage is mounted. Every rootless command joins both with setns(2) before doing anything else, so all of
them see the same ids and the same mounts, and the mounts outlive the command.

setns(2) into a user namespace is refused for a multi-threaded process: call `ensure_joined` (and
`exec_in_namespace`) before any thread exists (no thread pools, no threaded progress bars, no
`subprocess` call that uses threads). The process is uid 0 with a full capability set inside the
namespace afterwards.

`PINNACE_IGNORE_SUBUID=1` makes the holder ignore /etc/subuid (the single-mapping fallback), for tests.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pinnace.errors import CannotInvoke, CommandNotFound, NamespaceError
from pinnace.runtime.nsjoin import HOLDER_NAME, PIDFILE, _is_our_holder, _join, _proc_stat, _read_pidfile  # noqa: F401

LOCKFILE = "holder.lock"
IGNORE_SUBUID_ENV = "PINNACE_IGNORE_SUBUID"


@dataclass(frozen=True)
class IdRange:
    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class IdMappings:
    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]

    def host_uid(self, container_uid: int) -> int | None:
        return _to_host(self.uids, container_uid)

    def host_gid(self, container_gid: int) -> int | None:
        return _to_host(self.gids, container_gid)


@dataclass(frozen=True)
class UsernsInfo:
    rootless: bool
    single_mapping: bool = False
    mappings: IdMappings | None = None
    holder_pid: int | None = None


def _to_host(ranges: tuple[IdRange, ...], cid: int) -> int | None:
    for r in ranges:
        if r.container_id <= cid < r.container_id + r.size:
            return r.host_id + cid - r.container_id
    return None


# ---------------------------------------------------------------------------------------------- id ranges

def _subid_entries(path: Path, user_name: str, uid: int) -> list[tuple[int, int]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (user_name, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start >= 0 and count > 0:
            found.append((start, count))
    return found


def _layout(own_id: int, ranges: list[tuple[int, int]]) -> tuple[IdRange, ...]:
    # container 0 is the user; the subordinate ranges follow from container id 1, in file order
    out, next_id = [IdRange(0, own_id, 1)], 1
    for start, count in ranges:
        out.append(IdRange(next_id, start, count))
        next_id += count
    return tuple(out)


def subid_ranges(user_name: str, uid: int, gid: int | None = None, *,
                 subuid_file: Path = Path("/etc/subuid"),
                 subgid_file: Path = Path("/etc/subgid")) -> IdMappings | None:
    """The mapping the holder uses, or None when either file has no range for the user (by name or uid).
    `gid` (container gid 0) defaults to the user's primary group."""
    uid_ranges = _subid_entries(subuid_file, user_name, uid)
    gid_ranges = _subid_entries(subgid_file, user_name, uid)
    if not uid_ranges or not gid_ranges:
        return None
    if gid is None and uid == os.geteuid():
        gid = os.getegid()
    elif gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    return IdMappings(_layout(uid, uid_ranges), _layout(gid, gid_ranges))


def _parse_id_map(path: str) -> tuple[IdRange, ...]:
    ranges = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 3:
                ranges.append(IdRange(int(fields[0]), int(fields[1]), int(fields[2])))
    return tuple(ranges)


def current_mappings() -> IdMappings:
    """The uid/gid maps of the calling process's user namespace (identity 0..2^32-2 outside any)."""
    return IdMappings(_parse_id_map("/proc/self/uid_map"), _parse_id_map("/proc/self/gid_map"))


def _in_initial_userns() -> bool:
    return _parse_id_map("/proc/self/uid_map") == (IdRange(0, 0, 4294967295),)


def _info_inside(holder_pid: int | None) -> UsernsInfo:
    m = current_mappings()
    single = len(m.uids) == 1 and m.uids[0].size == 1
    return UsernsInfo(rootless=True, single_mapping=single, mappings=m, holder_pid=holder_pid)


# ---------------------------------------------------------------------------------------------- pidfile

def holder_pid(runroot: Path) -> int | None:
    """The pid of the live holder of `runroot`, or None."""
    rec = _read_pidfile(Path(runroot))
    return rec[0] if rec and _is_our_holder(*rec) else None


@contextlib.contextmanager
def _locked(runroot: Path) -> Iterator[None]:
    try:
        runroot.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(runroot / LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise NamespaceError(f"cannot lock {runroot / LOCKFILE}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- joining

def ensure_joined(runroot: Path) -> UsernsInfo:
    """Join (starting it if needed) the namespace holder of `runroot`. No-op for real root.

    Must run while the process is single-threaded (see the module docstring)."""
    if os.geteuid() == 0:
        if _in_initial_userns():
            return UsernsInfo(rootless=False)
        return _info_inside(holder_pid(runroot))  # already inside (joined earlier, or started there)
    runroot = Path(runroot)
    rec = _read_pidfile(runroot)
    if rec and _is_our_holder(*rec) and _join(*rec):
        return _info_inside(rec[0])
    with _locked(runroot):
        rec = _read_pidfile(runroot)
        if not (rec and _is_our_holder(*rec)):
            from pinnace.runtime.holder import start_holder  # only when no holder is alive
            rec = start_holder(runroot)
        if not _join(*rec):
            raise NamespaceError(f"the namespace holder {rec[0]} exited before it could be joined")
    return _info_inside(rec[0])


def exec_in_namespace(runroot: Path, argv: list[str] | None = None, env: dict[str, str] | None = None):
    """`pinnace unshare CMD…`: join the holder, then replace this process with CMD (default $SHELL)."""
    ensure_joined(runroot)
    import shutil

    argv = list(argv or [os.environ.get("SHELL") or "/bin/sh"])
    env = host_program_env(os.environ if env is None else env)
    # resolved here rather than by execvpe, which reports an unreadable PATH entry instead of "not found"
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env.get("PATH", os.defpath))
    if program is None or not os.path.exists(program):
        raise CommandNotFound(f"{argv[0]}: command not found")
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        os.execve(program, argv, env)
    except OSError as e:
        raise CannotInvoke(f"{argv[0]}: {e.strerror}") from None


def stop_holder(runroot: Path, timeout: float = 5.0) -> bool:
    """Terminate the holder of `runroot`; True if one was running. Mounts in its namespace go with it."""
    import time

    runroot = Path(runroot)
    with _locked(runroot):
        rec = _read_pidfile(runroot)
        if not (rec and _is_our_holder(*rec)):
            with contextlib.suppress(OSError):
                (runroot / PIDFILE).unlink()
            return False
        pid = rec[0]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _is_our_holder(*rec):  # never our child (double fork): init reaps it
                break
            time.sleep(0.005)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            (runroot / PIDFILE).unlink()
        return True


# ---------------------------------------------------------------------------------------------- starting

def host_program_env(base: dict[str, str] | os._Environ | None = None) -> dict[str, str]:
    """The environment for a host program we start (newuidmap, sleep, the user's command in `unshare`).

    A PyInstaller build points LD_LIBRARY_PATH at its private bundle (keeping the user's value in
    LD_LIBRARY_PATH_ORIG) and sets _PYI_*/_MEIPASS2 for its own children: host programs must see none of it."""
    env = dict(os.environ if base is None else base)
    if getattr(sys, "frozen", False):
        orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
        if orig is not None:
            env["LD_LIBRARY_PATH"] = orig
        else:
            env.pop("LD_LIBRARY_PATH", None)
        for key in [k for k in env if k.startswith(("_PYI_", "_MEI"))]:
            del env[key]
    return env


def _find_program(name: str) -> str | None:
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
    for d in dirs:
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None
