"""The filesystem calls of the FUSE overlay (storage/fuse_overlay.py), on top of the layer stack
(storage/fuse_tree.py), with the semantics of the kernel's overlayfs in its default configuration
(no redirect_dir, index, metacopy or xino):

- any change of data or metadata (write, truncate, chmod, chown, utimens, set/remove xattr, link) first
  copies the file up, with its parents;
- removing a name that a lower layer shows leaves a whiteout; rmdir of a merged directory too;
- mkdir over a whiteout makes an opaque directory;
- rename of a file works across layers; rename of a directory that is merged or only in a lower layer
  fails with EXDEV (what overlayfs does without redirect_dir, its default and the only choice with
  `userxattr`): `mv` and every other tool then copies and deletes. A directory moved into a merged
  directory is made opaque, as overlayfs does;
- new entries belong to the caller (the uid/gid the kernel reports for the request; the group of a
  setgid parent directory, which a new directory inherits with the setgid bit);
- the overlay's own xattrs (`<prefix>*`: `user.overlay.` rootless, `trusted.overlay.` as real root) are
  not shown; `<prefix>X` set through the mount is stored escaped as `<prefix>overlay.X` and shown as
  `<prefix>X` again, as overlayfs (≥ 6.7) does, so an overlay nested inside a container works.
Permission checks are the kernel's (`default_permissions`): nothing here checks modes.

Methods raise OSError; the binding turns it into -errno. Namespace changes hold the stack's lock; data
reads and writes go straight to the file descriptor opened at open/create (the binding does them).
"""
from __future__ import annotations

import errno
import os
import stat
import threading

from pinnace.storage.fuse_links import LinkPeers
from pinnace.storage.fuse_tree import LayerStack, is_whiteout

_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY
_OPEN_ADD = os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_ACCESS = os.O_WRONLY | os.O_RDWR
_DIR_HANDLES = 1 << 40


def _err(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path)


class OverlayOps:
    """The operations object given to the binding: mfusepy's method names and argument order."""

    use_ns = True

    def __init__(self, stack: LayerStack, context=None):
        self.stack = stack
        self.context = context  # () -> (uid, gid, pid) of the calling process
        self._dirs: dict[int, list[tuple[str, int, int]]] = {}
        self._dir_seq = _DIR_HANDLES  # never a file descriptor
        self._dir_lock = threading.Lock()
        self.on_init = None  # called once the kernel has sent INIT (the mount is live)
        self.links = LinkPeers()  # hard-link names: storage/fuse_links.py

    # -- helpers ------------------------------------------------------------------------------------
    def _owner(self, parent_real: str) -> tuple[int, int, bool]:
        """uid, gid for a new entry and whether the parent is setgid (its group is inherited then)."""
        uid, gid, _ = self.context() if self.context else (os.geteuid(), os.getegid(), 0)
        pst = os.lstat(parent_real)
        if pst.st_mode & stat.S_ISGID:
            return uid, pst.st_gid, True
        return uid, gid, False

    def _prepare_new(self, path: str) -> tuple[str, bool]:
        """Parents copied up and a whiteout at `path` removed: the upper path, and whether it was one."""
        parent = path.rpartition("/")[0] or "/"
        self.stack.ensure_upper_dir(parent)
        return self.stack.upper(path), self.stack.clear_whiteout(path)

    def _chown_new(self, real: str, path: str, mode: int | None, fd: int = -1) -> None:
        uid, gid, sgid = self._owner(self.stack.upper(path.rpartition("/")[0] or "/"))
        if fd >= 0:
            os.fchown(fd, uid, gid)
        else:
            os.chown(real, uid, gid, follow_symlinks=False)
        if mode is None:
            return
        if sgid and stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
        if mode & 0o7000:  # chown cleared set-id bits: put them back as asked
            if fd >= 0:
                os.fchmod(fd, stat.S_IMODE(mode))
            else:
                os.chmod(real, stat.S_IMODE(mode))

    # -- attributes ---------------------------------------------------------------------------------
    def stat(self, path: str | None, fh: int | None) -> tuple[os.stat_result, int, int]:
        """lstat of the merged entry, its overlay st_ino and st_nlink."""
        stack = self.stack
        if path is None:  # an unlinked file still open (hard_remove): only its descriptor is left
            if fh is None or fh >= _DIR_HANDLES:
                raise _err(errno.ENOENT)
            st = os.fstat(fh)
            return st, stack.ino(st.st_dev, st.st_ino), st.st_nlink
        ent = stack.lookup(path)
        st = ent.st
        nlink = st.st_nlink
        if ent.layers is not None:
            if len(ent.layers) > 1 or ent.layer != 0:
                nlink = 1  # a merged directory: overlayfs does not count its subdirectories either
        elif nlink > 1 and ent.layer == 0:
            self.links.note(path, st)
        return st, stack.ino(st.st_dev, st.st_ino), nlink

    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        """The portable form of `stat` (the binding fills the C struct from `stat` directly)."""
        st, ino, nlink = self.stat(path, fh)
        keys = ("st_mode", "st_uid", "st_gid", "st_rdev", "st_size", "st_blocks", "st_atime_ns",
                "st_mtime_ns", "st_ctime_ns")
        out = {k.replace("_ns", ""): getattr(st, k) for k in keys}
        out.update(st_ino=ino, st_nlink=nlink)
        return out

    def readlink(self, path: str) -> str:
        return os.readlink(self.stack.lookup(path).real)

    def access(self, path: str, amode: int) -> int:
        self.stack.lookup(path)  # modes are checked by the kernel (default_permissions)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self.stack.lock:
            real = self.stack.copy_up(path)
            os.chmod(real, stat.S_IMODE(mode))
            self.links.changed(path, real)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self.stack.lock:
            real = self.stack.copy_up(path)
            os.chown(real, uid, gid, follow_symlinks=False)
            self.links.changed(path, real)
        return 0

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh is not None:
            os.ftruncate(fh, length)
            return 0
        with self.stack.lock:
            real = self.stack.copy_up(path, data=length > 0)
            os.truncate(real, length)
            self.links.changed(path, real)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        """The portable form (ns times; the binding passes UTIME_NOW/UTIME_OMIT through utimensat)."""
        real = self.utimens_real(path)
        if times is None:
            os.utime(real, follow_symlinks=False)
        else:
            os.utime(real, ns=times, follow_symlinks=False)
        return 0

    def utimens_real(self, path: str) -> str:
        """The upper path to set times on (copied up)."""
        with self.stack.lock:
            real = self.stack.copy_up(path)
        self.links.changed(path, real)
        return real

    # -- xattrs -------------------------------------------------------------------------------------
    def getxattr(self, path: str, name: str, *position) -> bytes:
        return os.getxattr(self.stack.lookup(path).real, self.stack.stored_xattr(name), follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        return self.stack.shown_xattrs(os.listxattr(self.stack.lookup(path).real, follow_symlinks=False))

    def setxattr(self, path: str, name: str, value: bytes, options: int, *position) -> int:
        with self.stack.lock:
            real = self.stack.copy_up(path)
            os.setxattr(real, self.stack.stored_xattr(name), value, options, follow_symlinks=False)
            self.links.changed(path, real)
        return 0

    def removexattr(self, path: str, name: str) -> int:
        name = self.stack.stored_xattr(name)
        with self.stack.lock:
            ent = self.stack.lookup(path)
            if ent.layer != 0:  # a missing attribute is ENODATA without a copy-up, as overlayfs
                os.getxattr(ent.real, name, follow_symlinks=False)
            real = self.stack.copy_up(path)
            os.removexattr(real, name, follow_symlinks=False)
            self.links.changed(path, real)
        return 0

    # -- files --------------------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        return self.open_file(path, flags)[0]

    def open_file(self, path: str, flags: int) -> tuple[int, bool]:
        """The descriptor, and whether the kernel may keep the file's cached pages from earlier opens:
        yes unless the file has other hard-link names in the upper (each name is a kernel inode of its
        own with the high-level libfuse API, so a write through one would leave stale pages in another);
        a lower file never changes."""
        if flags & (_WRITE_ACCESS | os.O_TRUNC):
            with self.stack.lock:
                real = self.stack.copy_up(path, data=not flags & os.O_TRUNC)
        else:
            real = self.stack.lookup(path).real
        fd = os.open(real, (flags & ~_OPEN_STRIP) | _OPEN_ADD)
        if not real.startswith(self.stack.upper_prefix):
            return fd, True
        st = os.fstat(fd)
        if st.st_nlink <= 1:
            return fd, True
        self.links.note(path, st)
        if flags & (_WRITE_ACCESS | os.O_TRUNC):
            self.links.opened_for_write(fd, st)
            if flags & os.O_TRUNC:
                self.links.changed(path, real, st)
        return fd, False

    def create_file(self, path: str, mode: int, flags: int) -> tuple[int, bool]:
        return self.create(path, mode, flags), True

    def create(self, path: str, mode: int, flags: int) -> int:
        with self.stack.lock:
            real, _ = self._prepare_new(path)
            fd = os.open(real, (flags & ~_OPEN_STRIP) | os.O_CREAT | os.O_EXCL | _OPEN_ADD, mode & 0o777)
            try:
                self._chown_new(real, path, mode, fd)
            except OSError:
                os.close(fd)
                os.unlink(real)
                raise
            return fd

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)  # the binding reads straight into libfuse's buffer instead

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        if mode:
            raise _err(errno.EOPNOTSUPP, path or "")
        os.posix_fallocate(fh, offset, size)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        self.links.flushed(fh)
        return 0

    def release(self, path: str | None, fh: int) -> int:
        self.links.released(fh)
        os.close(fh)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        (os.fdatasync if datasync else os.fsync)(fh)
        return 0

    def statfs(self, path: str) -> dict:
        sv = os.statvfs(self.stack.roots[0])
        return {key: getattr(sv, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                 "f_files", "f_ffree", "f_favail", "f_namemax")}

    # -- namespace ----------------------------------------------------------------------------------
    def mknod(self, path: str, mode: int, dev: int) -> int:
        with self.stack.lock:
            real, _ = self._prepare_new(path)
            os.mknod(real, (mode & ~0o7000) | stat.S_IFMT(mode), dev)
            self._chown_new(real, path, mode)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self.stack.lock:
            real, over_whiteout = self._prepare_new(path)
            os.mkdir(real, mode & 0o777)
            try:
                self._chown_new(real, path, stat.S_IFDIR | (mode & 0o7777))
                if over_whiteout:  # the lower directory of that name must stay hidden
                    self.stack.set_opaque(real)
            except OSError:
                os.rmdir(real)
                raise
            self.stack.invalidate(path)
        return 0

    def symlink(self, path: str, target: str) -> int:
        with self.stack.lock:
            real, _ = self._prepare_new(path)
            os.symlink(target, real)
            self._chown_new(real, path, None)
        return 0

    def link(self, path: str, existing: str) -> int:
        with self.stack.lock:
            src = self.stack.copy_up(existing)
            real, _ = self._prepare_new(path)
            os.link(src, real, follow_symlinks=False)
            st = os.lstat(real)
            self.links.note(existing, st)
            self.links.note(path, st)
            self.links.changed(path, real, st)  # their st_nlink changed
        return 0

    def unlink(self, path: str) -> int:
        stack = self.stack
        with stack.lock:
            ent = stack.lookup(path)
            if ent.layers is not None:
                raise _err(errno.EISDIR, path)
            stack.ensure_upper_dir(path.rpartition("/")[0] or "/")
            if ent.layer == 0:
                os.unlink(ent.real)
                stack.forget_inode(ent.st)
                self.links.removed(path, ent.st)
            if stack.lower_positive(path):
                stack.whiteout(path)
        return 0

    def rmdir(self, path: str) -> int:
        stack = self.stack
        with stack.lock:
            ent = stack.lookup(path)
            if ent.layers is None:
                raise _err(errno.ENOTDIR, path)
            if path == "/":
                raise _err(errno.EBUSY, path)
            if not stack.is_empty(path):
                raise _err(errno.ENOTEMPTY, path)
            stack.ensure_upper_dir(path.rpartition("/")[0] or "/")
            if ent.layer == 0:
                stack.clear_upper_dir(ent.real)
                os.rmdir(ent.real)
                stack.forget_inode(ent.st)
            stack.invalidate(path, subtree=True)
            if stack.lower_positive(path):
                stack.whiteout(path)
        return 0

    def rename(self, old: str, new: str) -> int:
        stack = self.stack
        with stack.lock:
            src = stack.lookup(old)
            dst = stack.lookup_or_none(new)
            is_dir = src.layers is not None
            if is_dir and (src.layer != 0 or len(src.layers) > 1):
                raise _err(errno.EXDEV, old)  # merged or lower directory: overlayfs without redirect_dir
            if dst is not None:
                if dst.layers is not None and not is_dir:
                    raise _err(errno.EISDIR, new)
                if dst.layers is None and is_dir:
                    raise _err(errno.ENOTDIR, new)
                if dst.layers is not None and not stack.is_empty(new):
                    raise _err(errno.ENOTEMPTY, new)
                if dst.real == src.real or (dst.st.st_dev, dst.st.st_ino) == (src.st.st_dev, src.st.st_ino):
                    return 0  # the same file under two names: rename(2) does nothing
            src_real = stack.copy_up(old)
            new_parent = new.rpartition("/")[0] or "/"
            stack.ensure_upper_dir(new_parent)
            new_real = stack.upper(new)
            try:
                target = os.lstat(new_real)
            except FileNotFoundError:
                target = None
            if target is not None:
                if is_whiteout(target):
                    if is_dir:
                        os.unlink(new_real)  # a directory cannot replace a device
                elif stat.S_ISDIR(target.st_mode):
                    stack.clear_upper_dir(new_real)  # shown empty: only whiteouts are left in it
            moved_into_merge = len(stack.dir_layers(new_parent)) > 1
            if is_dir and moved_into_merge and not stack._opaque(src_real):
                stack.set_opaque(src_real)  # a lower directory of the new name must not merge into it
            os.rename(src_real, new_real)
            if target is not None and not is_whiteout(target):
                stack.forget_inode(target)
            if target is not None and not is_whiteout(target):
                self.links.removed(new, target)
            if not is_dir:
                self.links.renamed(old, new, src.st)
            if is_dir:
                stack.invalidate(old, subtree=True)
                stack.invalidate(new, subtree=True)
            if stack.lower_positive(old):
                stack.whiteout(old)
        return 0

    # -- directories --------------------------------------------------------------------------------
    def opendir(self, path: str) -> int:
        here = self.stat(path, None)[1]
        up = self.stat(path.rpartition("/")[0] or "/", None)[1] if path != "/" else here
        entries = [(".", stat.S_IFDIR, here), ("..", stat.S_IFDIR, up)] + self.stack.listdir(path)
        with self._dir_lock:
            self._dir_seq += 1
            self._dirs[self._dir_seq] = entries
            return self._dir_seq

    def listing(self, fh: int) -> list[tuple[str, int, int]]:
        """(name, file type bits, st_ino) of the directory opened as `fh`, . and .. first."""
        return self._dirs.get(fh, [])

    def readdir(self, path: str | None, fh: int) -> list:
        return [(name, {"st_mode": kind, "st_ino": ino}, 0) for name, kind, ino in self.listing(fh)]

    def releasedir(self, path: str | None, fh: int) -> int:
        self._dirs.pop(fh, None)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        return 0

    # -- lifecycle ----------------------------------------------------------------------------------
    def init_with_config(self, conn, config) -> None:
        if self.on_init is not None:
            self.on_init(conn, config)

    def destroy(self, path: str) -> None:
        for fh in list(self._dirs):
            self._dirs.pop(fh, None)
