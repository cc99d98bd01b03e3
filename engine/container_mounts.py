"""`-v/--volume`, `--mount`, `--tmpfs` and the image's VOLUME list → OCI mounts and volume uses (Docker rules).

Parsing is pure (`parse_requests`); `plan_mounts` then checks bind sources, creates named and anonymous
volumes, copies image content up into empty volumes and applies `:U`, all in the caller's namespace (the
holder's, where we are uid 0 of the user namespace, or real root).
"""
from __future__ import annotations

import csv
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pinnace.errors import Conflict, InvalidArgument, NotFound, PinnaceError, StorageError
from pinnace.runtime.users import ExecUser
from pinnace.storage.copy_up import chown_tree, copy_tree
from pinnace.storage.rootfs_paths import find_in_root

if TYPE_CHECKING:
    from pinnace.engine.store import Store
    from pinnace.storage.volumes import VolumeStore

ANONYMOUS_LABEL = "io.pinnace.anonymous"
resolve_in_root = find_in_root  # this module's name for it before the copying moved to storage/tree_copy
_VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # the rule of storage/volumes.py (Docker's)
_PROPAGATION = ("shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable", "runbindable")
# -v options, by group: at most one of each group. z/Z (SELinux relabel) are accepted and ignored: pinnace
# has no SELinux support, and Docker ignores them too on hosts without SELinux.
_VOLUME_GROUPS = (("ro", "rw"), ("z", "Z"), ("U",), ("nocopy", "copy"), _PROPAGATION, ("exec", "noexec"),
                  ("suid", "nosuid"), ("dev", "nodev"), ("bind", "rbind"))
_TMPFS_GROUPS = (("ro", "rw"), ("exec", "noexec"), ("suid", "nosuid"), ("dev", "nodev"),
                 ("noatime", "relatime", "strictatime"), ("U",), ("notmpcopyup",))
# tmpfs data options (checked here so that a typo fails at create time, not as EINVAL at start)
_TMPFS_DATA = {"size": r"\d+[kmgKMG%]?", "nr_inodes": r"\d+[kmgKMG%]?", "nr_blocks": r"\d+[kmgKMG]?",
               "mode": r"[0-7]{1,4}", "uid": r"\d+", "gid": r"\d+", "huge": r"[a-z_]+", "mpol": r"[a-z:0-9,-]+"}
_TMPFS_DEFAULTS = ("noexec", "nosuid", "nodev")  # Docker's and Podman's (no size limit: the kernel's default)
_TRUE, _FALSE = ("1", "t", "true"), ("0", "f", "false")  # Go's strconv.ParseBool, as Docker's --mount reads it
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?$", re.IGNORECASE)


@dataclass(frozen=True)
class VolumeUse:
    name: str
    destination: str
    anonymous: bool


@dataclass(frozen=True)
class MountPlan:
    mounts: list[dict]        # OCI mount objects, parents before children
    volumes: list[VolumeUse]


@dataclass(frozen=True)
class MountRequest:
    """One parsed flag: kind is "bind", "volume" (source None = anonymous) or "tmpfs"."""

    kind: str
    destination: str
    source: str | None = None
    readonly: bool = False
    options: tuple[str, ...] = ()   # OCI options beyond ro: propagation, exec flags, tmpfs data, "bind"
    nocopy: bool = False
    chown: bool = False             # :U
    labels: tuple[tuple[str, str], ...] = ()


# -- parsing (pure) -------------------------------------------------------------------------------------
def clean_destination(dst: str, origin: str) -> str:
    if not dst.startswith("/"):
        raise InvalidArgument(f"invalid mount {origin!r}: destination {dst!r} must be an absolute path")
    cleaned = "/" + posixpath.normpath(dst).lstrip("/")
    if cleaned == "/":
        raise InvalidArgument(f"invalid mount {origin!r}: destination can't be '/'")
    return cleaned


def _check_groups(opts: list[str], groups: tuple[tuple[str, ...], ...], origin: str) -> None:
    for opt in opts:
        if not any(opt in g for g in groups):
            raise InvalidArgument(f"invalid mount {origin!r}: unknown option {opt!r}")
    for g in groups:
        given = [o for o in opts if o in g]
        if len(given) > 1:
            raise InvalidArgument(f"invalid mount {origin!r}: conflicting or repeated options {', '.join(given)}")


def _is_mode_list(text: str) -> bool:
    return all(any(o in g for g in _VOLUME_GROUPS) for o in text.split(","))


def split_volume_spec(text: str) -> tuple[str | None, str, tuple[str, ...]]:
    """`-v` text → (source or None for an anonymous volume, destination, options)."""
    parts = text.split(":")
    if len(parts) > 3 or not text:
        raise InvalidArgument(f"invalid volume {text!r}: expected [SOURCE:]DESTINATION[:OPTIONS]")
    if len(parts) == 1:
        return None, parts[0], ()
    if len(parts) == 2 and parts[0].startswith("/") and _is_mode_list(parts[1]):
        # Docker refuses `/dst:ro` too: an anonymous volume cannot carry options in -v form
        raise InvalidArgument(f"invalid volume {text!r}: options need a source (SOURCE:DESTINATION:OPTIONS)")
    if not parts[0]:
        raise InvalidArgument(f"invalid volume {text!r}: empty source")
    if not parts[1]:
        raise InvalidArgument(f"invalid volume {text!r}: empty destination")
    opts = tuple(parts[2].split(",")) if len(parts) == 3 else ()
    if len(parts) == 3 and "" in opts:
        raise InvalidArgument(f"invalid volume {text!r}: empty option")
    return parts[0], parts[1], opts


def _host_path(src: str, cwd: str) -> str:
    return posixpath.normpath(posixpath.join(cwd, os.path.expanduser(src)))


def _check_volume_name(name: str, origin: str) -> None:
    if not _VOLUME_NAME.match(name):
        raise InvalidArgument(f"invalid mount {origin!r}: {name!r} is not a valid volume name "
                              "([a-zA-Z0-9][a-zA-Z0-9_.-]+); a host directory must start with / or .")


def parse_volume(text: str, cwd: str) -> MountRequest:
    src, dst, opts = split_volume_spec(text)
    _check_groups(list(opts), _VOLUME_GROUPS, text)
    kept = tuple(o for o in opts if o not in ("ro", "rw", "z", "Z", "U", "nocopy", "copy", "rbind"))
    common = dict(destination=clean_destination(dst, text), readonly="ro" in opts, options=kept,
                  nocopy="nocopy" in opts, chown="U" in opts)
    if src is None:
        return MountRequest("volume", **common)
    if src.startswith(("/", ".", "~")):
        return MountRequest("bind", source=_host_path(src, cwd), **common)
    _check_volume_name(src, text)
    return MountRequest("volume", source=src, **common)


def _bool(value: str | None, key: str, origin: str) -> bool:
    if value is None or value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidArgument(f"invalid mount {origin!r}: {key} must be true or false, not {value!r}")


def parse_size(text: str, origin: str) -> int:
    """Docker's RAMInBytes: 64m, 1g, 512k, 1.5g, 1024 (binary units)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise InvalidArgument(f"invalid mount {origin!r}: invalid size {text!r}")
    return int(float(m.group(1)) * 1024 ** "bkmgtp".index((m.group(2) or "b").lower()))


def parse_mount(text: str, cwd: str) -> MountRequest:
    """`--mount type=bind|volume|tmpfs,source=…,target=…,…` (Docker's CSV syntax; type defaults to volume)."""
    try:
        fields = next(csv.reader([text], strict=True))
    except (csv.Error, StopIteration):
        raise InvalidArgument(f"invalid mount {text!r}: cannot parse it as comma-separated fields") from None
    kind, src, dst, readonly, nocopy, chown = "volume", None, None, False, False, False
    opts: list[str] = []
    labels: list[tuple[str, str]] = []
    prefixes: set[str] = set()
    for item in fields:
        key, sep, value = item.partition("=")
        key, val = key.strip().lower(), (value if sep else None)
        if key in ("type", "source", "src", "target", "dst", "destination", "bind-propagation", "tmpfs-size",
                   "tmpfs-mode", "volume-label", "volume-driver", "volume-opt", "consistency") and val is None:
            raise InvalidArgument(f"invalid mount {text!r}: field {item!r} must be a key=value pair")
        if key.split("-")[0] in ("bind", "volume", "tmpfs") and "-" in key:
            prefixes.add(key.split("-")[0])
        if key == "type":
            kind = val.lower()
        elif key in ("source", "src"):
            src = val
        elif key in ("target", "dst", "destination"):
            dst = val
        elif key in ("readonly", "ro"):
            readonly = _bool(val, key, text)
        elif key in ("u", "chown"):
            chown = _bool(val, key, text)
        elif key == "volume-nocopy":
            nocopy = _bool(val, key, text)
        elif key == "bind-propagation":
            if val not in _PROPAGATION:
                raise InvalidArgument(f"invalid mount {text!r}: unknown bind-propagation {val!r}")
            opts.append(val)
        elif key == "bind-nonrecursive":
            if _bool(val, key, text):
                opts.append("bind")
        elif key == "volume-label":
            k, _, v = val.partition("=")
            labels.append((k, v))
        elif key == "volume-driver":
            if val != "local":
                raise InvalidArgument(f"invalid mount {text!r}: unknown volume driver {val!r} (only 'local')")
        elif key == "volume-opt":
            raise InvalidArgument(f"invalid mount {text!r}: volume options are not supported")
        elif key == "tmpfs-size":
            opts.append(f"size={parse_size(val, text)}")
        elif key == "tmpfs-mode":
            if not re.fullmatch(r"[0-7]{1,4}", val):
                raise InvalidArgument(f"invalid mount {text!r}: tmpfs-mode must be octal, not {val!r}")
            opts.append(f"mode={val}")
        elif key not in ("consistency", "z", "relabel"):  # macOS-only and SELinux hints: ignored
            raise InvalidArgument(f"invalid mount {text!r}: unexpected key {key!r}")
    if kind not in ("bind", "volume", "tmpfs"):
        raise InvalidArgument(f"invalid mount {text!r}: type must be bind, volume or tmpfs, not {kind!r}")
    if prefixes - {kind}:
        raise InvalidArgument(f"invalid mount {text!r}: cannot mix '{sorted(prefixes - {kind})[0]}-*' options "
                              f"with mount type {kind!r}")
    if not dst:
        raise InvalidArgument(f"invalid mount {text!r}: target is required")
    common = dict(destination=clean_destination(dst, text), readonly=readonly, options=tuple(opts), chown=chown)
    if kind == "tmpfs":
        if src:
            raise InvalidArgument(f"invalid mount {text!r}: a tmpfs mount takes no source")
        return MountRequest("tmpfs", **common)
    if kind == "bind":
        if not src:
            raise InvalidArgument(f"invalid mount {text!r}: a bind mount needs a source")
        return MountRequest("bind", source=_host_path(src, cwd), **common)
    if src:
        _check_volume_name(src, text)
    return MountRequest("volume", source=src or None, nocopy=nocopy, labels=tuple(labels), **common)


def parse_tmpfs(text: str) -> MountRequest:
    """`--tmpfs /dst[:opt,…]`: flags and tmpfs data options (size=, mode=, uid=, gid=, nr_inodes=, …)."""
    dst, _, raw = text.partition(":")
    opts = raw.split(",") if raw else []
    data, flags = {}, []
    for opt in opts:
        key, sep, value = opt.partition("=")
        if sep:
            if key not in _TMPFS_DATA or not re.fullmatch(_TMPFS_DATA[key], value):
                raise InvalidArgument(f"invalid tmpfs {text!r}: unknown or malformed option {opt!r}")
            data[key] = value  # a later size= wins, as Docker merges them
        else:
            flags.append(opt)
    _check_groups(flags, _TMPFS_GROUPS, text)
    return MountRequest("tmpfs", clean_destination(dst, text), readonly="ro" in flags,
                        options=tuple(f for f in flags if f not in ("ro", "rw", "U", "notmpcopyup"))
                        + tuple(f"{k}={v}" for k, v in data.items()), chown="U" in flags)


def parse_requests(*, volumes: tuple[str, ...], mounts: tuple[str, ...], tmpfs: tuple[str, ...],
                   image_volumes: list[str], cwd: str) -> list[MountRequest]:
    """Every flag parsed, duplicates refused, image volumes no flag covers added as anonymous volumes;
    sorted so that a parent directory is mounted before what is mounted below it (as Docker does)."""
    requests = [parse_volume(v, cwd) for v in volumes] + [parse_mount(m, cwd) for m in mounts] \
        + [parse_tmpfs(t) for t in tmpfs]
    seen: set[str] = set()
    for r in requests:
        if r.destination in seen:
            raise InvalidArgument(f"duplicate mount destination {r.destination}")
        seen.add(r.destination)
    for v in image_volumes:
        dst = clean_destination(v, f"image VOLUME {v}")
        if dst not in seen:
            seen.add(dst)
            requests.append(MountRequest("volume", dst))
    return sorted(requests, key=lambda r: r.destination.count("/"))


# -- OCI mount objects ----------------------------------------------------------------------------------
_REMOUNTING = {"ro", "nosuid", "nodev", "noexec", "noatime", "strictatime", "relatime", "nodiratime"}


def keep_source_flags(options: list[str], f_flag: int) -> list[str]:
    """A bind mount that the runtime remounts (ro, nosuid, …) must repeat the source mount's nosuid,
    nodev, noexec, ro and atime flags: in a user namespace those are locked and a remount that drops
    them fails with EPERM. `f_flag` is statvfs(source).f_flag. Podman adds the same flags."""
    if not _REMOUNTING & set(options):
        return options
    out = list(options)
    for name, bit, opposite in (("ro", os.ST_RDONLY, "rw"), ("nosuid", os.ST_NOSUID, "suid"),
                                ("nodev", os.ST_NODEV, "dev"), ("noexec", os.ST_NOEXEC, "exec")):
        if f_flag & bit and name not in out and opposite not in out:
            out.append(name)
    if not {"noatime", "strictatime", "relatime"} & set(out):
        if f_flag & os.ST_NOATIME:
            out.append("noatime")
        elif not f_flag & os.ST_RELATIME:
            out.append("strictatime")
    if f_flag & os.ST_NODIRATIME and "nodiratime" not in out:
        out.append("nodiratime")
    return out


def bind_mount(dst: str, source: str, r: MountRequest) -> dict:
    opts = ([] if "bind" in r.options else ["rbind"]) + (["ro"] if r.readonly else []) + list(r.options)
    try:
        opts = keep_source_flags(opts, os.statvfs(source).f_flag)
    except OSError as exc:
        raise StorageError(f"cannot read the mount flags of {source}: {exc.strerror}") from None
    return {"destination": dst, "type": "bind", "source": source, "options": opts}


def tmpfs_mount(r: MountRequest, user: ExecUser) -> dict:
    flags = [f for f in _TMPFS_DEFAULTS if f[2:] not in r.options] + (["ro"] if r.readonly else [])
    # the runtime passes anything it does not know as tmpfs data: keep exec/suid/dev out (they only
    # cancel a default), and put the remaining flags before the data options
    flags += [o for o in r.options if "=" not in o and o not in ("exec", "suid", "dev") and o not in flags]
    data = [o for o in r.options if "=" in o]
    if r.chown:  # Podman's U for tmpfs: the mount's root belongs to the container user
        data = [o for o in data if not o.startswith(("uid=", "gid="))] + [f"uid={user.uid}", f"gid={user.gid}"]
    return {"destination": r.destination, "type": "tmpfs", "source": "tmpfs", "options": flags + data}


# -- planning (touches the store and the disk) ----------------------------------------------------------
def plan_mounts(store: Store, *, volumes: tuple[str, ...], mounts: tuple[str, ...], tmpfs: tuple[str, ...],
                image_volumes: list[str], rootfs: Path, user: ExecUser, cwd: str) -> MountPlan:
    """The container's mounts and the volumes it uses. Validates everything before it creates a volume;
    anonymous volumes created here are removed again when a later step fails."""
    from pinnace.engine.volumes import volume_store
    requests = parse_requests(volumes=volumes, mounts=mounts, tmpfs=tmpfs, image_volumes=image_volumes, cwd=cwd)
    for r in requests:
        if r.kind == "bind" and not os.path.exists(r.source):
            raise InvalidArgument(f"bind source path does not exist: {r.source}")
    vs = volume_store(store)
    created: list[str] = []
    try:
        oci, uses = [], []
        for r in requests:
            if r.kind == "tmpfs":
                oci.append(tmpfs_mount(r, user))
                continue
            if r.kind == "volume":
                name, new = _volume(vs, r)
                if new and r.source is None:
                    created.append(name)
                source = vs.data_dir(name)
                uses.append(VolumeUse(name, r.destination, r.source is None))
                if not r.nocopy:
                    _copy_up_if_empty(store, name, source, rootfs, r.destination)
            else:
                source = r.source
            if r.chown:
                chown_tree(source, user.uid, user.gid)
            oci.append(bind_mount(r.destination, source, r))
        return MountPlan(oci, uses)
    except BaseException:
        for name in created:
            try:
                vs.remove(name, force=True)
            except PinnaceError:
                pass
        raise


def _volume(vs: VolumeStore, r: MountRequest) -> tuple[str, bool]:
    """(name, created now) of the volume for r: an existing named one, or a new one."""
    if r.source is None:
        rec = vs.create(None, labels={ANONYMOUS_LABEL: "true", **dict(r.labels)}, options={})
        return rec.name, True
    try:
        return vs.get(r.source).name, False
    except NotFound:
        pass
    try:
        return vs.create(r.source, labels=dict(r.labels), options={}).name, True
    except Conflict:  # created by a concurrent command in between: use it
        return r.source, False


def _copy_up_if_empty(store: Store, name: str, data: str, rootfs: Path, dst: str) -> None:
    """Docker's rule: an empty volume gets the image's content at its destination. Under the volume's
    lock, so that two containers created at once do not both copy."""
    from pinnace.storage.locks import FileLock
    store.layout.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(store.layout.lock_path("volume", name)):
        try:
            if any(os.scandir(data)):
                return
            src = find_in_root(str(rootfs), dst)
            if src is not None and stat.S_ISDIR(os.lstat(src).st_mode):
                copy_tree(src, data)
        except OSError as exc:
            raise StorageError(f"cannot copy the image's {dst} into volume {name}: {exc}") from None
