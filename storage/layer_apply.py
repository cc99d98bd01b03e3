"""Apply one layer tar into an empty directory, in the form the overlay driver uses.

The layer is hostile until proven otherwise. Every path is normalised lexically and must stay under the
root; the tree is walked with directory fds opened O_NOFOLLOW from the root, so no component of any
path, and no final name, is ever resolved through a symlink: an entry below a symlink (`evil -> /etc`,
then `evil/passwd`) is refused with LayerError rather than resolved. Files are created O_EXCL|O_NOFOLLOW,
owners set with fchown/lchown, modes with fchmod (never on symlinks).
"""
from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pinnace.errors import LayerError
from pinnace.storage import tar_reader as tr

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_CACHED_DIRS = 128


@dataclass(frozen=True)
class ApplyReport:
    files: int  # entries materialised, whiteouts included
    size: int  # bytes of regular-file content (apparent size)
    lost_owners: int  # entries left owned by the applier because their uid/gid is not mapped
    skipped_devices: tuple[str, ...]  # device nodes the kernel refused (user namespace)
    dropped_xattrs: int  # trusted.*, overlay-private, or refused xattrs not applied


def split_path(name: str, what: str = "layer entry") -> list[str]:
    """Lexically normalised components of a tar member name, relative to the layer root."""
    parts: list[str] = []
    for part in name.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if not parts:
                raise LayerError(f"{what} {name!r} escapes the layer root")
            parts.pop()
        else:
            parts.append(part)
    return parts


class _Tree:
    """Directory fds below the root, opened component by component without following symlinks, kept in a
    small LRU cache (layers list entries in tree order, so the parent of the next entry is nearly always
    cached)."""

    def __init__(self, root: Path):
        self.root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds: OrderedDict[str, int] = OrderedDict()  # "a/b" -> fd; the root is not in here
        self.implicit: list[str] = []  # parents created because the layer lacks their entry

    def _cached(self, key: str) -> int | None:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
        return fd

    def dir_fd(self, parts: list[str], depth: int, entry: str, create: bool = True) -> int:
        """fd of the directory parts[:depth]; missing parents are created (0700 until `finish`) unless
        `create` is false (FileNotFoundError then). Iterative: hostile layers can nest very deep."""
        if depth == 0:
            return self.root_fd
        full = "/".join(parts[:depth])
        fd = self._cached(full)
        if fd is not None:
            return fd
        ends, n = [], -1  # ends[i]: length of the key of parts[:i + 1]
        for part in parts[:depth]:
            n += len(part) + 1
            ends.append(n)
        start, fd = depth - 1, self.root_fd  # deepest cached ancestor
        while start > 0:
            got = self._cached(full[:ends[start - 1]])
            if got is not None:
                fd = got
                break
            start -= 1
        for i in range(start, depth):
            name = parts[i]
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o700, dir_fd=fd)
                self.implicit.append(full[:ends[i]])
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LayerError(f"layer entry {entry!r}: its parent {full[:ends[i]]!r} is a symlink or "
                                     "not a directory") from None
                raise
            self._fds[full[:ends[i]]] = fd = child
        return fd

    def forget(self, key: str) -> None:
        """`key` was removed or replaced: drop it and everything cached below it."""
        prefix = key + "/"
        for k in [k for k in self._fds if k == key or k.startswith(prefix)]:
            os.close(self._fds.pop(k))

    def trim(self) -> None:
        # only between entries: no caller holds a cached fd then
        while len(self._fds) > _MAX_CACHED_DIRS:
            os.close(self._fds.popitem(last=False)[1])

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self.root_fd)


class _Applier:
    def __init__(self, dest: Path, xattr_prefix: str):
        self.tree = _Tree(dest)
        self.prefix = xattr_prefix
        self.dirmeta: dict[str, tuple[int, int | None]] = {}  # deferred (mode, mtime_ns) of directories
        self.files = self.size = self.lost = self.dropped = 0
        self.skipped: list[str] = []
        self.euid, self.egid = os.geteuid(), os.getegid()
        # new entries start owned by us, so equal ids need no chown, unless a setgid root passes its group on
        self.chown_always = bool(os.fstat(self.tree.root_fd).st_mode & stat.S_ISGID)

    # -- helpers ------------------------------------------------------------------------------------
    def _remove(self, pfd: int, name: str, key: str) -> None:
        try:
            os.unlink(name, dir_fd=pfd)
        except IsADirectoryError:
            import shutil

            shutil.rmtree(name, dir_fd=pfd)  # fd-based: never follows symlinks inside
            self.tree.forget(key)
            prefix = key + "/"
            for k in [k for k in self.dirmeta if k == key or k.startswith(prefix)]:
                del self.dirmeta[k]

    def _chown(self, e: tr.Entry, fd: int = -1, pfd: int = -1, name: str = "", new: bool = True) -> bool:
        """Set the owner; False (and counted) if the ids are not mapped here, the entry stays ours."""
        if new and e.uid == self.euid and e.gid == self.egid and not self.chown_always:
            return True
        try:
            if fd >= 0:
                os.fchown(fd, e.uid, e.gid)
            else:
                os.chown(name, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
            return True
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EPERM):
                raise
            self.lost += 1
            return False

    def _xattrs(self, e: tr.Entry, target: int | str) -> None:
        for key, value in e.xattrs.items():
            # trusted.* and overlay's own attributes could forge overlay metadata (opaque, redirect)
            if (key.startswith(("trusted.", "user.overlay.", self.prefix))
                    or (key.startswith("security.") and key != "security.capability")):
                self.dropped += 1
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:  # a path through /proc/self/fd/DIRFD: only the last component could be a link
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError:
                self.dropped += 1

    @staticmethod
    def _mode(e: tr.Entry, owned: bool) -> int:
        # an owner that could not be set must not turn a setuid/setgid file into one of ours
        return e.mode if owned else e.mode & ~(stat.S_ISUID | stat.S_ISGID)

    def _create(self, make, pfd: int, name: str, key: str):
        try:
            return make()
        except FileExistsError:
            self._remove(pfd, name, key)  # later entries win
            return make()

    # -- entry kinds --------------------------------------------------------------------------------
    def entry(self, src: tr.Source, e: tr.Entry) -> None:
        parts = split_path(e.name)
        base = parts[-1] if parts else ""
        if base.startswith(WHITEOUT_PREFIX):
            return self._whiteout(e, parts, base)
        if not parts:
            if e.type != tr.DIRECTORY:
                raise LayerError(f"layer entry {e.name!r} names the layer root but is not a directory")
            return self._directory(e, parts, "")
        pfd = self.tree.dir_fd(parts, len(parts) - 1, e.name)
        name, key, typ = parts[-1], "/".join(parts), e.type
        if typ == tr.REGULAR:
            self._file(src, e, pfd, name, key)
        elif typ == tr.DIRECTORY:
            self._directory(e, parts, key, pfd)
        elif typ == tr.SYMLINK:
            self._create(lambda: os.symlink(e.linkname, name, dir_fd=pfd), pfd, name, key)
            self._chown(e, pfd=pfd, name=name)
            if e.xattrs:
                self._xattrs(e, f"/proc/self/fd/{pfd}/{name}")
            os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        elif typ == tr.HARDLINK:
            self._hardlink(e, parts, pfd, name, key)
        elif not self._node(e, pfd, name, key):
            return
        self.files += 1

    def _file(self, src: tr.Source, e: tr.Entry, pfd: int, name: str, key: str) -> None:
        fd = self._create(lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd), pfd, name, key)
        try:
            tr.copy_data(src, e, fd)
            owned = self._chown(e, fd=fd)
            os.fchmod(fd, self._mode(e, owned))  # after chown, which clears setuid/setgid
            if e.xattrs:
                self._xattrs(e, fd)  # after chown and writes, which drop security.capability
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        finally:
            os.close(fd)
        self.size += e.realsize

    def _directory(self, e: tr.Entry, parts: list[str], key: str, pfd: int = -1) -> None:
        new = False  # the root, or a directory merged with an earlier one: its owner may not be ours
        if parts:
            name = parts[-1]
            try:
                # 0700 until the end: the final mode may forbid writing the entries that follow
                os.mkdir(name, 0o700, dir_fd=pfd)
                new = True
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode):
                    self._remove(pfd, name, key)
                    os.mkdir(name, 0o700, dir_fd=pfd)
                    new = True
        fd = self.tree.dir_fd(parts, len(parts), e.name)
        owned = self._chown(e, fd=fd, new=new)
        if e.xattrs:
            self._xattrs(e, fd)
        self.dirmeta[key] = (self._mode(e, owned), e.mtime_ns)

    def _hardlink(self, e: tr.Entry, parts: list[str], pfd: int, name: str, key: str) -> None:
        target = split_path(e.linkname, f"hardlink {e.name!r} -> {e.linkname!r}: target")
        if not target:
            raise LayerError(f"hardlink {e.name!r} points to the layer root")
        if target == parts:
            return
        try:
            tfd = self.tree.dir_fd(target, len(target) - 1, e.name, create=False)
            self._create(lambda: os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd,
                                         follow_symlinks=False), pfd, name, key)
        except FileNotFoundError:
            raise LayerError(f"hardlink {e.name!r} -> {e.linkname!r}: the target is not in the layer "
                             "(or comes after the link)") from None
        except PermissionError:
            raise LayerError(f"hardlink {e.name!r} -> {e.linkname!r}: the target is a directory") from None

    def _node(self, e: tr.Entry, pfd: int, name: str, key: str) -> bool:
        if e.type == tr.FIFO:
            make = lambda: os.mkfifo(name, 0o600, dir_fd=pfd)  # noqa: E731
        else:
            kind = stat.S_IFCHR if e.type == tr.CHARDEV else stat.S_IFBLK
            make = lambda: os.mknod(name, kind | 0o600, os.makedev(e.devmajor, e.devminor),  # noqa: E731
                                    dir_fd=pfd)
        try:
            self._create(make, pfd, name, key)
        except PermissionError:
            # mknod of a real device is refused inside a user namespace: skip it, the runtime
            # bind-mounts /dev anyway
            self.skipped.append(key)
            return False
        owned = self._chown(e, pfd=pfd, name=name)
        os.chmod(name, self._mode(e, owned), dir_fd=pfd)  # just created by us: not a symlink
        if e.xattrs:
            self._xattrs(e, f"/proc/self/fd/{pfd}/{name}")
        os.utime(name, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        return True

    def _whiteout(self, e: tr.Entry, parts: list[str], base: str) -> None:
        if base == OPAQUE_MARKER:
            fd = self.tree.dir_fd(parts, len(parts) - 1, e.name)
            os.setxattr(fd, self.prefix + "opaque", b"y")
        elif not base.startswith(WHITEOUT_PREFIX * 2):  # other .wh..wh.* are aufs metadata: ignored
            hidden = base[len(WHITEOUT_PREFIX):]
            if hidden in ("", ".", ".."):
                raise LayerError(f"invalid whiteout {e.name!r} in layer")
            pfd = self.tree.dir_fd(parts, len(parts) - 1, e.name)
            key = "/".join(parts[:-1] + [hidden])
            self._create(lambda: os.mknod(hidden, stat.S_IFCHR, 0, dir_fd=pfd), pfd, hidden, key)
            # the marker's mtime, so that export → apply reproduces the same tree
            os.utime(hidden, ns=(e.mtime_ns, e.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        else:
            return
        self.files += 1

    def finish(self) -> None:
        for key in self.tree.implicit:
            self.dirmeta.setdefault(key, (0o755, None))
        # children before parents (a parent's final mode may forbid reaching them), siblings together
        for key in sorted(self.dirmeta, key=lambda k: k.split("/") if k else [], reverse=True):
            mode, mtime = self.dirmeta[key]
            self.tree.trim()
            parts = key.split("/") if key else []
            try:
                fd = self.tree.dir_fd(parts, len(parts), key, create=False)
            except FileNotFoundError:
                continue
            os.fchmod(fd, mode)
            if mtime is not None:
                os.utime(fd, ns=(mtime, mtime))


def apply_layer(tar_stream: BinaryIO, dest: Path, xattr_prefix: str = "user.overlay.") -> ApplyReport:
    """Extract the uncompressed layer tar `tar_stream` into the existing, empty directory `dest`.

    Whiteouts become overlay whiteouts: `.wh.NAME` a 0:0 character device NAME, `DIR/.wh..wh..opq` the
    xattr `<xattr_prefix>opaque=y` on DIR (pass "trusted.overlay." when running as real root without
    `userxattr`); other `.wh..wh.*` entries are ignored. A later entry replaces an earlier one of the
    same path; a directory over a directory merges.

    Runs as real root or inside the user namespace. Owners the namespace cannot map (EINVAL/EPERM from
    chown) stay the applier's and are counted in `lost_owners`; such entries lose setuid/setgid bits.
    Device nodes the kernel refuses to create (any but 0:0 inside a user namespace) are skipped and
    listed in `skipped_devices` instead of failing the layer: rootless containers get /dev bind-mounted.
    trusted.* xattrs, overlay's own xattrs and security.* other than security.capability are dropped and
    counted. The stream is read to its end (past the end-of-archive blocks) for the caller's hashing.
    """
    try:
        applier = _Applier(Path(dest), xattr_prefix)
    except OSError as e:
        raise LayerError(f"cannot open layer directory {dest}: {e.strerror}") from None
    src = tr.Source(tar_stream)
    current = None
    try:
        for current in tr.entries(src):
            applier.tree.trim()
            applier.entry(src, current)
        current = None
        applier.finish()
    except (OSError, ValueError, OverflowError) as e:
        where = f"layer entry {current.name!r}" if current is not None else f"layer in {dest}"
        raise LayerError(f"cannot apply {where}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        applier.tree.close()
    return ApplyReport(applier.files, applier.size, applier.lost, tuple(applier.skipped), applier.dropped)
