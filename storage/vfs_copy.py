"""The vfs driver's tools (storage/vfs.py): reading a stack of layers the way overlayfs merges it, and copying
single entries with everything they carry.

Layer stack, overlayfs's rules: per directory, layers top down; a 0:0 character device hides the name in
every lower layer; a non-directory ends the stack for its name; a directory merges with the directories
below it until one carries `<prefix>opaque` = "y". (Overlay's xattr whiteouts, for nested overlays, are
never in the store: layer_apply writes devices.)

Copies: regular files are cloned (FICLONE) where the filesystem shares extents (btrfs, xfs), tried on the
first file and then left alone if the filesystem refuses; otherwise copy_file_range (in-kernel), then
sendfile; sparse files keep their holes. Owner before mode (chown clears set-id bits), xattrs after both
(chown and writes drop security.capability), times last. Everything is relative to directory fds and no
symlink is ever followed: a source may be a running container's rootfs.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass

FICLONE = 0x40049409  # _IOW(0x94, 9, int)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a file swapped for a FIFO by a running container must not hang the copy
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PRIVATE = ("trusted.overlay.", "user.overlay.")  # overlay's own metadata: never copied, never compared
_SETID = stat.S_ISUID | stat.S_ISGID
_NO_OFFLOAD = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTTY, errno.EBADF)


@dataclass(frozen=True)
class CopyReport:
    copy_method: str  # how file data was copied: "reflink", "copy_file_range", "sendfile" ("+"-joined), or "none"
    files: int  # non-directory entries written (whiteouts excluded)
    bytes: int  # apparent size of regular files copied
    lost_owners: int  # entries left ours because their uid/gid is not mapped here
    skipped_devices: int  # device nodes the kernel refused (user namespace)
    whiteouts: int = 0  # changes(): deleted names written as whiteouts
    opaque_dirs: int = 0  # changes(): directories written opaque


# -- reading the layer stack -------------------------------------------------------------------------------
class Item:
    """A name in a merged directory: its visible entry (`pfd`: the parent directory in the layer showing it),
    and for a directory the parents, top first, of every layer copy of it that may merge."""

    __slots__ = ("pfd", "st", "dirs", "done")

    def __init__(self, pfd: int, st: os.stat_result):
        self.pfd, self.st = pfd, st
        self.done = not stat.S_ISDIR(st.st_mode)
        self.dirs = [pfd]


def listing(dir_fds: list[int]) -> dict[str, Item | None]:
    """The names of a directory merged from `dir_fds` (top layer first); None for a whited-out name."""
    items: dict[str, Item | None] = {}
    for fd in dir_fds:
        with os.scandir(fd) as it:
            for e in it:
                item = items.get(e.name, False)
                if item is False:
                    st = e.stat(follow_symlinks=False)
                    whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
                    items[e.name] = None if whiteout else Item(fd, st)
                elif item is not None and not item.done:
                    if e.is_dir(follow_symlinks=False):
                        item.dirs.append(fd)
                    else:  # a non-directory or a whiteout below a directory ends its stack
                        item.done = True
    return items


def open_roots(layers: list[str], prefix: str) -> list[int]:
    """fds of the layer roots (given lowest first) that overlay merges, top first."""
    roots: list[int] = []
    try:
        for layer in reversed(layers):
            roots.append(os.open(layer, DIR_FLAGS))
            if getxattr(roots[-1], prefix + "opaque") == b"y":
                break  # the layers below an opaque root show nothing
    except BaseException:
        close_all(roots)
        raise
    return roots


def open_merged(parents: list[int], name: str, prefix: str) -> list[int]:
    """fds of the layer copies of the directory `name` that overlay merges: down to the first opaque one."""
    fds: list[int] = []
    try:
        for i, pfd in enumerate(parents):
            fds.append(os.open(name, DIR_FLAGS, dir_fd=pfd))
            if i + 1 < len(parents) and getxattr(fds[-1], prefix + "opaque") == b"y":
                break
    except BaseException:
        close_all(fds)
        raise
    return fds


def getxattr(target: int | str, key: str) -> bytes | None:
    try:
        return os.getxattr(target, key, follow_symlinks=isinstance(target, int))
    except OSError:
        return None


def xattrs(target: int | str, prefix: str) -> dict[str, bytes]:
    """The entry's xattrs but overlay's; a str target is /proc/self/fd/DIRFD/NAME, its last part not followed."""
    follow = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:  # no xattr support here
        return {}
    out = {}
    for key in names:
        if not key.startswith(_PRIVATE) and not key.startswith(prefix):
            value = getxattr(target, key)
            if value is not None:
                out[key] = value
    return out


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


# -- writing entries ---------------------------------------------------------------------------------------
class Copier:
    """Creates copies of entries below the directory `root` (ours, fresh: nothing in it is followed)."""

    def __init__(self, root: int, prefix: str):
        self.root, self.prefix = root, prefix
        self.reflink: bool | None = None  # decided by the first file with data
        self.offload: bool | None = None  # copy_file_range works here
        self.methods: set[str] = set()
        self.files = self.bytes = self.lost = self.skipped = 0
        self.links: dict[tuple[int, int], str] = {}  # source inode -> its first copy, relative to root
        self.linked: set[str] = set()  # paths of copies made for sources with st_nlink > 1

    def report(self, whiteouts: int = 0, opaque: int = 0) -> CopyReport:
        return CopyReport("+".join(sorted(self.methods)) or "none", self.files, self.bytes, self.lost,
                          self.skipped, whiteouts, opaque)

    def _own(self, st: os.stat_result, fd: int = -1, pfd: int = -1, name: str = "") -> int:
        """Give the copy the source's owner; the mode to apply (setuid/setgid dropped when that failed)."""
        try:
            if fd >= 0:
                os.fchown(fd, st.st_uid, st.st_gid)
            else:
                os.chown(name, st.st_uid, st.st_gid, dir_fd=pfd, follow_symlinks=False)
            return stat.S_IMODE(st.st_mode)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            self.lost += 1
            return stat.S_IMODE(st.st_mode) & ~_SETID

    @staticmethod
    def set_xattrs(target: int | str, values: dict[str, bytes]) -> None:
        for key, value in values.items():
            try:
                os.setxattr(target, key, value, follow_symlinks=isinstance(target, int))
            except OSError:
                pass  # security.* or trusted.* this namespace may not set: the copy goes on without

    def directory(self, src_fd: int, st: os.stat_result, dpfd: int, name: str) -> int:
        """A new directory `name` in `dpfd` like `src_fd`, its fd; `finish_dir` sets its mode and times once
        its content is in (the mode may forbid writing, writing changes the mtime)."""
        os.mkdir(name, 0o700, dir_fd=dpfd)
        fd = os.open(name, DIR_FLAGS, dir_fd=dpfd)
        self._own(st, fd=fd)
        self.set_xattrs(fd, xattrs(src_fd, self.prefix))
        return fd

    def set_root(self, fd: int, src_fd: int) -> None:
        st = os.fstat(src_fd)
        self._own(st, fd=fd)
        self.set_xattrs(fd, xattrs(src_fd, self.prefix))
        self.finish_dir(fd, st)

    @staticmethod
    def finish_dir(fd: int, st: os.stat_result) -> None:
        os.fchmod(fd, stat.S_IMODE(st.st_mode))  # set-id bits of a directory give nothing away
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    def copy(self, spfd: int, name: str, st: os.stat_result, dpfd: int, path: str) -> None:
        """Copy the non-directory `name` of `spfd` (lstat `st`) to `dpfd`; `path` is its place below root."""
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._regular(spfd, name, st, dpfd, path)
        proc = f"/proc/self/fd/{spfd}/{name}"
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=spfd), name, dir_fd=dpfd)
            self._own(st, pfd=dpfd, name=name)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            try:
                os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dpfd)
            except PermissionError:  # a real device inside a user namespace: the runtime binds /dev
                self.skipped += 1
                return
            os.chmod(name, self._own(st, pfd=dpfd, name=name), dir_fd=dpfd)  # ours, just made: no symlink
        else:
            return  # sockets are not copied
        self.set_xattrs(f"/proc/self/fd/{dpfd}/{name}", xattrs(proc, self.prefix))
        os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dpfd, follow_symlinks=False)
        self.files += 1

    def _regular(self, spfd: int, name: str, st: os.stat_result, dpfd: int, path: str) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            os.link(self.links[key], name, src_dir_fd=self.root, dst_dir_fd=dpfd, follow_symlinks=False)
            self.linked.add(path)
            return
        src = os.open(name, _READ, dir_fd=spfd)
        try:
            sst = os.fstat(src)
            if not stat.S_ISREG(sst.st_mode):
                return  # swapped under us by a running container
            dst = os.open(name, _CREATE, 0o600, dir_fd=dpfd)
            try:
                if sst.st_size:
                    self._data(src, dst, sst)
                os.fchmod(dst, self._own(sst, fd=dst))  # after chown, which clears set-id bits
                self.set_xattrs(dst, xattrs(src, self.prefix))  # after chown and writes (capabilities)
                os.utime(dst, ns=(sst.st_atime_ns, sst.st_mtime_ns))
            finally:
                os.close(dst)
        finally:
            os.close(src)
        if sst.st_nlink > 1:
            self.links[key] = path
            self.linked.add(path)
        self.files += 1
        self.bytes += sst.st_size

    def _data(self, src: int, dst: int, st: os.stat_result) -> None:
        if self.reflink is not False:
            try:
                fcntl.ioctl(dst, FICLONE, src)
                self.reflink = True
                self.methods.add("reflink")
                return
            except OSError:
                if self.reflink is None:
                    self.reflink = False  # tried once: this filesystem does not clone
        if st.st_blocks * 512 >= st.st_size:
            self._range(src, dst, 0, st.st_size)
            return
        pos = 0  # holes: copy the data extents only, so the copy stays sparse
        while pos < st.st_size:
            try:
                data = os.lseek(src, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno != errno.ENXIO:
                    raise
                break
            pos = os.lseek(src, data, os.SEEK_HOLE)
            self._range(src, dst, data, pos - data)
        os.ftruncate(dst, st.st_size)

    def _range(self, src: int, dst: int, offset: int, count: int) -> None:
        end = offset + count
        if self.offload is not False:
            try:
                while offset < end and (n := os.copy_file_range(src, dst, end - offset, offset, offset)):
                    offset += n
                self.offload = True
                self.methods.add("copy_file_range")
                return
            except OSError as e:
                if e.errno not in _NO_OFFLOAD:
                    raise
                self.offload = False  # sendfile from here on
        os.lseek(dst, offset, os.SEEK_SET)  # sendfile writes at the file position
        while offset < end and (n := os.sendfile(dst, src, offset, end - offset)):
            offset += n
        self.methods.add("sendfile")


