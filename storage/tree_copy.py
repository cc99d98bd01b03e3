"""Copying file trees without trusting them: walking a tree, writing it as a tar, creating entries from a
walk or a tar (paths below a root come from storage/rootfs_paths.py; plain volume copies are in
storage/copy_up.py).

What is copied is hostile: an image or a running container can plant symlinks anywhere and swap them while
we copy. So a path below a root never becomes a host path string that the kernel resolves. It is walked
component by component from an fd of the root, each directory opened O_NOFOLLOW, symlinks read and applied
by hand (absolute ones restart at the root, `..` stops there), and files are then read or created relative
to their parent's fd (O_NOFOLLOW, O_EXCL). Below a destination no symlink is followed at all: an entry whose
parent is a symlink is refused.

One tree walker (`walk_tree`) feeds both the tar writer (`write_tar`) and the materializer (`materialize`);
`extract_tar` feeds the materializer from the tar reader. Not layer_export's walker: that one turns 0:0
devices and opaque xattrs into OCI whiteouts and has neither a single-entry start nor exclusions. A file
whose owner changes loses its setuid/setgid bits, so a copy never turns someone's setuid program into root's.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pinnace.errors import InvalidArgument
from pinnace.storage import tar_reader as tr
from pinnace.storage.compression import open_decompressed
from pinnace.storage.rootfs_paths import DIR_FLAGS, close_fd

log = logging.getLogger("pinnace")

# O_NONBLOCK: a regular file swapped for a FIFO by the running container must not hang the copy
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_PRIVATE_XATTRS = ("trusted.", "user.overlay.")  # overlay metadata (trusted.overlay.* too) never travels
_SETID = stat.S_ISUID | stat.S_ISGID


# -- walking a tree --------------------------------------------------------------------------------------
@dataclass
class Node:
    """One entry to copy, from a tree walk or a tar member."""

    name: str  # "/"-separated, relative to the copy's root
    kind: str  # tar_reader's type letters
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    fd: int = -1  # an open regular file (tree walks)
    fill: Callable[[int], None] | None = None  # writes the regular file's content to an fd


def _read_xattrs(target: int | str) -> dict[str, bytes]:
    follow = isinstance(target, int)  # a path is /proc/self/fd/DIRFD/NAME: never follow its last component
    try:
        names = os.listxattr(target, follow_symlinks=follow)
        out = {}
        for key in sorted(names):
            if not key.startswith(_PRIVATE_XATTRS):
                out[key] = os.getxattr(target, key, follow_symlinks=follow)
        return out
    except OSError:  # no xattr support, or the entry went away: nothing to carry
        return {}


def _copy_data(src: int, dst: int) -> None:
    try:
        while os.copy_file_range(src, dst, _CHUNK):  # in-kernel, reflinks where the filesystem can
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
            raise
    while data := os.read(src, _CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]


def _node(dfd: int, name: str, path: str, st: os.stat_result, inodes: dict) -> Node | None:
    mode = st.st_mode
    node = Node(path, tr.DIRECTORY, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    proc = f"/proc/self/fd/{dfd}/{name}"
    if stat.S_ISREG(mode):
        if st.st_nlink > 1:
            first = inodes.setdefault((st.st_dev, st.st_ino), path)
            if first != path:
                node.kind, node.linkname = tr.HARDLINK, first
                return node
        fd = os.open(name, _READ, dir_fd=dfd)
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):  # swapped under us
            os.close(fd)
            return None
        node.kind, node.size, node.fd, node.xattrs = tr.REGULAR, fst.st_size, fd, _read_xattrs(fd)
        node.fill = lambda out: _copy_data(fd, out)
    elif stat.S_ISDIR(mode):
        node.xattrs = _read_xattrs(proc)
    elif stat.S_ISLNK(mode):
        node.kind, node.linkname, node.xattrs = tr.SYMLINK, os.readlink(name, dir_fd=dfd), _read_xattrs(proc)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        node.kind = tr.CHARDEV if stat.S_ISCHR(mode) else tr.BLOCKDEV if stat.S_ISBLK(mode) else tr.FIFO
        node.devmajor, node.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        node.xattrs = _read_xattrs(proc)
    else:  # sockets: not copyable
        return None
    return node


def walk_tree(parent_fd: int, name: str, arcname: str, skip: tuple[str, ...] = ()) -> Iterator[Node]:
    """The entry `name` of `parent_fd` and everything below it, parents first, siblings sorted, named from
    `arcname`; arcname "" yields only a directory's contents. Directories whose names are in `skip` come
    without their contents. No symlink is followed; entries vanishing during the walk are left out.
    A regular file's fd is open until the consumer asks for the next node."""
    inodes: dict[tuple[int, int], str] = {}
    fds: list[int] = []
    stack: list[tuple[int, Iterator[str], str]] = []
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        first = [(parent_fd, name, arcname, st)] if arcname else []
        if not arcname:
            fds.append(os.open(name, DIR_FLAGS, dir_fd=parent_fd))
            stack.append((fds[-1], iter(sorted(os.listdir(fds[-1]))), ""))
        while first or stack:
            if first:
                dfd, child, path, st = first.pop()
            else:
                dfd, names, prefix = stack[-1]
                child = next(names, None)
                if child is None:
                    stack.pop()
                    os.close(fds.pop())
                    continue
                path = prefix + child
                try:
                    st = os.stat(child, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
            try:
                node = _node(dfd, child, path, st, inodes)
            except FileNotFoundError:
                continue
            if node is None:
                continue
            try:
                yield node
            finally:
                close_fd(node.fd)
            if node.kind == tr.DIRECTORY and path not in skip:
                try:
                    fds.append(os.open(child, DIR_FLAGS, dir_fd=dfd))
                except FileNotFoundError:
                    continue
                stack.append((fds[-1], iter(sorted(os.listdir(fds[-1]))), path + "/"))
    finally:
        for fd in fds:
            os.close(fd)


def write_tar(nodes: Iterator[Node], out: BinaryIO) -> None:
    """PAX tar of the nodes: numeric owners only, whole-second mtimes, xattrs as SCHILY.xattr.*."""
    with contextlib.closing(nodes), tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                                                 copybufsize=_CHUNK) as tf:
        for n in nodes:
            info = tarfile.TarInfo(n.name)
            info.type = n.kind.encode()
            info.mode, info.uid, info.gid, info.uname, info.gname = n.mode, n.uid, n.gid, "", ""
            info.mtime = n.mtime_ns // 1_000_000_000
            info.linkname, info.devmajor, info.devminor = n.linkname, n.devmajor, n.devminor
            for key, value in n.xattrs.items():
                # tarfile writes surrogate-escaped strings back as the original bytes
                info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
            if n.kind == tr.REGULAR:
                info.size = n.size
                with open(n.fd, "rb", buffering=0, closefd=False) as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)


# -- creating entries ------------------------------------------------------------------------------------
def _member_parts(name: str, where: str) -> list[str]:
    if name.startswith("/"):
        raise InvalidArgument(f"refusing archive entry {name!r}: absolute path (extracting into {where})")
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise InvalidArgument(f"refusing archive entry {name!r}: it escapes {where}")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


class _Materializer:
    """Creates nodes below the directory `root_fd` (the caller's) without following any symlink at or
    below it. Docker's extraction rules: a directory merges into a directory, a non-directory replaces a
    non-directory, one never replaces the other. `owner`: "keep" the node's ids, "root" (0:0), "caller"."""

    def __init__(self, root_fd: int, owner: str, where: str):
        self.root_fd, self.owner, self.where = root_fd, owner, where
        self.chain: list[tuple[str, int]] = []  # the directories of the last parent, opened in order
        self.dirs: dict[str, tuple[int, int]] = {}  # deferred (mode, mtime_ns): modes may forbid writing
        self.me = (os.geteuid(), os.getegid())

    def _dir_fd(self, parts: list[str], entry: str, create: bool = True) -> int:
        """fd of the directory `parts`, missing ones created (0755) unless not `create`."""
        i = 0
        while i < len(self.chain) and i < len(parts) and self.chain[i][0] == parts[i]:
            i += 1
        for _, fd in self.chain[i:]:
            os.close(fd)
        del self.chain[i:]
        for comp in parts[i:]:
            pfd = self.chain[-1][1] if self.chain else self.root_fd
            try:
                try:
                    fd = os.open(comp, DIR_FLAGS, dir_fd=pfd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=pfd)
                    fd = os.open(comp, DIR_FLAGS, dir_fd=pfd)
                    if self.owner == "root":
                        self._set_owner((0, 0), fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/".join(parts[:len(self.chain) + 1])
                    raise InvalidArgument(f"refusing to write {entry!r} into {self.where}: {where!r} is a "
                                          "symlink or not a directory") from None
                raise
            self.chain.append((comp, fd))
        return self.chain[-1][1] if self.chain else self.root_fd

    @staticmethod
    def _set_owner(ids: tuple[int, int], fd: int = -1, pfd: int = -1, name: str = "") -> bool:
        try:
            if fd >= 0:
                os.fchown(fd, *ids)
            else:
                os.chown(name, *ids, dir_fd=pfd, follow_symlinks=False)
            return True
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EINVAL):
                raise
            return False  # an id this namespace does not map (or no privilege): the entry stays ours

    def _own(self, n: Node, **where) -> int:
        """Set the owner; the mode to apply (setuid/setgid dropped when the owner is not the source's)."""
        ids = (n.uid, n.gid) if self.owner == "keep" else (0, 0) if self.owner == "root" else None
        if ids is not None and not self._set_owner(ids, **where):
            ids = None
        same = (ids or self.me) == (n.uid, n.gid)
        return n.mode if same or n.kind == tr.DIRECTORY else n.mode & ~_SETID

    @staticmethod
    def _set_xattrs(n: Node, target: int | str) -> None:
        for key, value in n.xattrs.items():
            # overlay's and trusted.* could forge overlay metadata; security.* other than file capabilities
            # are the host's business
            if key.startswith(_PRIVATE_XATTRS) or (key.startswith("security.") and key != "security.capability"):
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=isinstance(target, int))
            except OSError:
                pass  # the destination filesystem or namespace refuses it: the copy goes on without

    def add(self, n: Node) -> None:
        parts = _member_parts(n.name, self.where)
        if not parts:
            return  # the destination directory itself is left as it is
        if n.kind == tr.HARDLINK:
            target = _member_parts(n.linkname, self.where)
            if not target:
                raise InvalidArgument(f"refusing hardlink {n.name!r}: it points to {self.where} itself")
            if target == parts:
                return
            try:
                tfd = os.dup(self._dir_fd(target[:-1], n.name, create=False))
            except FileNotFoundError:
                raise InvalidArgument(f"hardlink {n.name!r} -> {n.linkname!r}: no such target") from None
        try:
            pfd = self._dir_fd(parts[:-1], n.name)
        except BaseException:
            if n.kind == tr.HARDLINK:
                os.close(tfd)
            raise
        name, key = parts[-1], "/".join(parts)
        try:
            old = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        is_dir = n.kind == tr.DIRECTORY
        if old is not None and stat.S_ISDIR(old.st_mode) != is_dir:
            raise InvalidArgument(f"cannot overwrite {'a directory' if not is_dir else 'a non-directory'} "
                                  f"{key!r} in {self.where} with {'a directory' if is_dir else 'a file'}")
        if old is not None and not is_dir:
            os.unlink(name, dir_fd=pfd)
        proc = f"/proc/self/fd/{pfd}/{name}"
        if n.kind == tr.REGULAR:
            fd = os.open(name, _CREATE, 0o600, dir_fd=pfd)
            try:
                if n.fill is not None:
                    n.fill(fd)
                os.fchmod(fd, self._own(n, fd=fd))  # after chown, which clears setuid/setgid
                self._set_xattrs(n, fd)  # after chown and writes, which drop security.capability
                os.utime(fd, ns=(n.mtime_ns, n.mtime_ns))
            finally:
                os.close(fd)
        elif is_dir:
            if old is None:
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, DIR_FLAGS, dir_fd=pfd)
            try:
                self.dirs[key] = (self._own(n, fd=fd), n.mtime_ns)
                self._set_xattrs(n, fd)
            finally:
                os.close(fd)
        elif n.kind == tr.SYMLINK:
            os.symlink(n.linkname, name, dir_fd=pfd)
            self._own(n, pfd=pfd, name=name)
            self._set_xattrs(n, proc)
            os.utime(name, ns=(n.mtime_ns, n.mtime_ns), dir_fd=pfd, follow_symlinks=False)
        elif n.kind == tr.HARDLINK:
            try:
                os.link(target[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except (FileNotFoundError, PermissionError):
                raise InvalidArgument(f"hardlink {n.name!r} -> {n.linkname!r}: the target is not a file "
                                      "copied before it") from None
            finally:
                os.close(tfd)
        else:
            self._special(n, pfd, name, key)

    def _special(self, n: Node, pfd: int, name: str, key: str) -> None:
        try:
            if n.kind == tr.FIFO:
                os.mkfifo(name, 0o600, dir_fd=pfd)
            else:
                kind = stat.S_IFCHR if n.kind == tr.CHARDEV else stat.S_IFBLK
                os.mknod(name, kind | 0o600, os.makedev(n.devmajor, n.devminor), dir_fd=pfd)
        except PermissionError:  # device nodes inside a user namespace
            log.warning("skipped device node %s: not permitted here", key)
            return
        mode = self._own(n, pfd=pfd, name=name)
        # chmod through an O_PATH fd: Python cannot chmod relative to a dir fd without following
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                os.chmod(f"/proc/self/fd/{fd}", mode)
        finally:
            os.close(fd)
        self._set_xattrs(n, f"/proc/self/fd/{pfd}/{name}")
        os.utime(name, ns=(n.mtime_ns, n.mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def finish(self) -> None:
        for key in sorted(self.dirs, key=lambda k: k.count("/"), reverse=True):  # children before parents
            fd = self._dir_fd(key.split("/"), key, create=False)
            mode, mtime = self.dirs[key]
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime, mtime))

    def close(self) -> None:
        for _, fd in self.chain:
            os.close(fd)
        self.chain.clear()


def materialize(nodes: Iterator[Node], dest_fd: int, owner: str, where: str) -> None:
    """Create `nodes` below the directory `dest_fd` (see _Materializer); `where` names it in errors."""
    m = _Materializer(dest_fd, owner, where)
    try:
        with contextlib.closing(nodes):
            for n in nodes:
                m.add(n)
        m.finish()
    finally:
        m.close()


def extract_tar(tar_stream: BinaryIO, dest_fd: int, owner: str, where: str) -> None:
    """Materialize a tar (plain, gzip or zstd) below the directory `dest_fd` with `materialize`'s rules."""
    source = tr.Source(open_decompressed(tar_stream, "auto"))  # Docker's API takes gzip too

    def nodes() -> Iterator[Node]:
        for e in tr.entries(source):
            yield Node(e.name, e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.realsize, e.linkname,
                       e.devmajor, e.devminor, e.xattrs, fill=lambda fd, e=e: tr.copy_data(source, e, fd))

    materialize(nodes(), dest_fd, owner, where)
