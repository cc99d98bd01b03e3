"""`--user` resolution against the image's own /etc/passwd and /etc/group (never the host's).

Docker's rules (runc's `user.GetExecUser`): `name`, `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group`.
A name must exist in the image; a numeric uid need not (it then gets gid 0, home `/`). The primary group
comes from passwd unless a group is given; supplementary groups are the /etc/group entries that list the
user by name (only when no group was given explicitly, as Docker does).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pinnace.errors import InvalidArgument

MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class ExecUser:
    """The identity the container's process runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str
    name: str | None


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _read_lines(path: Path, limit: int = 1 << 20) -> list[str]:
    """Lines of a file inside the rootfs; a symlink is not followed out of it (the caller passes a path
    below the rootfs and files an image ships are ordinary text files)."""
    try:
        if path.is_symlink():
            return []
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()


def _number(text: str) -> int | None:
    if text.isdigit():
        value = int(text)
        if value <= MAX_ID:
            return value
    return None


def parse_passwd(lines: list[str]) -> list[PasswdEntry]:
    entries = []
    for line in lines:
        parts = line.split(":")
        if len(parts) < 7 or line.startswith("#"):
            continue
        uid, gid = _number(parts[2]), _number(parts[3])
        if uid is None or gid is None:
            continue
        entries.append(PasswdEntry(parts[0], uid, gid, parts[5] or "/"))
    return entries


def parse_group(lines: list[str]) -> list[GroupEntry]:
    entries = []
    for line in lines:
        parts = line.split(":")
        if len(parts) < 4 or line.startswith("#"):
            continue
        gid = _number(parts[2])
        if gid is None:
            continue
        members = tuple(m for m in parts[3].split(",") if m)
        entries.append(GroupEntry(parts[0], gid, members))
    return entries


def resolve_user(rootfs: Path, spec: str | None) -> ExecUser:
    """The ExecUser for `--user spec` (or the image's USER) in the image at `rootfs`. Raises InvalidArgument."""
    passwd = parse_passwd(_read_lines(rootfs / "etc" / "passwd"))
    groups = parse_group(_read_lines(rootfs / "etc" / "group"))
    user_part, sep, group_part = (spec or "0").partition(":")
    if sep and not group_part:
        raise InvalidArgument(f"invalid user {spec!r}: empty group")
    user_part = user_part or "0"

    uid = _number(user_part)
    entry = next((p for p in passwd if (p.uid == uid if uid is not None else p.name == user_part)), None)
    if uid is None:
        if entry is None:
            raise InvalidArgument(f"unable to find user {user_part}: no matching entries in passwd file")
        uid = entry.uid
    gid = entry.gid if entry else 0
    home = entry.home if entry else "/"
    name = entry.name if entry else None

    if sep:
        gid_number = _number(group_part)
        if gid_number is not None:
            gid = gid_number
        else:
            group = next((g for g in groups if g.name == group_part), None)
            if group is None:
                raise InvalidArgument(f"unable to find group {group_part}: no matching entries in group file")
            gid = group.gid
        additional: tuple[int, ...] = ()
    else:
        additional = tuple(sorted({g.gid for g in groups if name and name in g.members and g.gid != gid}))
    return ExecUser(uid, gid, additional, home, name)
