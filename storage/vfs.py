"""The `vfs` storage driver: each container gets a full copy of its image's layers, and what it changed is
computed by comparing trees, written as an overlay upper directory, so that commit, build, `diff` and
`export` treat vfs containers exactly like overlay ones (engine/layer_commit.py turns that into a layer).

`materialize` copies what overlayfs would show of the layers (storage/vfs_copy.py reads the stack by
overlay's rules and copies entries; regular files are cloned where the filesystem can). `changes` is the
"naive diff" (containers/storage and Docker call it that): it walks the container's rootfs and the layers'
merged view side by side and compares each entry's type, mode, owner, size, mtime (in nanoseconds),
symlink target, device number and xattrs. Content is NOT read: a regular file of the same size and mtime
counts as unchanged, as in containers/storage; a program that rewrites a file and restores its mtime
hides that change. Unlike Docker, a directory whose mtime alone changed is recorded (overlay would have
copied it up too, and the round trip through the upper then shows the same tree).
"""
from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator

from pinnace.errors import StorageError
from pinnace.storage.vfs_copy import (DIR_FLAGS, FICLONE, Copier, CopyReport, Item, close_all, listing,
                                      open_merged, open_roots, xattrs)

__all__ = ["CopyReport", "changes", "materialize", "reflink_supported"]


def reflink_supported(path: str) -> bool:
    """Whether the filesystem holding the directory `path` clones file extents (FICLONE: btrfs, xfs)."""
    fds: list[int] = []
    try:
        for _ in range(2):
            fds.append(os.open(path, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600))
        os.write(fds[0], b"reflink probe")
        fcntl.ioctl(fds[1], FICLONE, fds[0])
        return True
    except OSError:
        return False
    finally:
        close_all(fds)


def materialize(layers: list[str], target: str, *, xattr_prefix: str) -> CopyReport:
    """Copy what overlayfs would show of `layers` (lowest first, the store's unpacked form) into the empty
    directory `target`: whiteouts and opaque directories applied, each visible entry copied once with its
    owner, mode, xattrs (overlay's own excepted) and times; symlinks, devices (where the kernel allows) and
    hard links (names sharing an inode in a layer share one in the copy) kept. The root directory takes
    the top layer's metadata. The report says how file data was copied."""
    where = target
    # per directory being copied: its layer copies, its copy, the names left, its path, its stat
    frames: list[tuple[list[int], int, Iterator[tuple[str, Item | None]], str, os.stat_result]] = []
    try:
        dst_root = os.open(target, DIR_FLAGS)
        try:
            c = Copier(dst_root, xattr_prefix)
            roots = open_roots(layers, xattr_prefix)
            if not roots:
                return c.report()
            frames.append((roots, dst_root, iter(()), "", os.fstat(roots[0])))
            frames[0] = (roots, dst_root, iter(listing(roots).items()), "", frames[0][4])
            while frames:
                srcs, dfd, items, path, st = frames[-1]
                nxt = next(items, None)
                if nxt is None:
                    frames.pop()
                    try:
                        if frames:
                            c.finish_dir(dfd, st)  # children first: their creation changed its mtime
                        else:
                            c.set_root(dfd, srcs[0])
                    finally:
                        close_all(srcs)
                        if dfd != dst_root:
                            os.close(dfd)
                    continue
                name, item = nxt
                if item is None:  # whited out
                    continue
                where = f"{target}/{path}{name}"
                if not stat.S_ISDIR(item.st.st_mode):
                    c.copy(item.pfd, name, item.st, dfd, path + name)
                    continue
                fds = open_merged(item.dirs, name, xattr_prefix)
                try:
                    child = c.directory(fds[0], item.st, dfd, name)
                except BaseException:
                    close_all(fds)
                    raise
                frames.append((fds, child, iter(listing(fds).items()), f"{path}{name}/", item.st))
            return c.report()
        finally:
            for srcs, dfd, *_ in frames:
                close_all(srcs)
                if dfd != dst_root:
                    os.close(dfd)
            os.close(dst_root)
    except OSError as e:
        raise StorageError(f"cannot copy the image's layers to {where}: {e.strerror or e}") from None


class _Dir:
    """A directory of the rootfs being compared: its fd, the fds of the layer copies it is compared with,
    its copy in the upper directory (-1 until something below needs it), its path ("a/b/") and stat."""

    __slots__ = ("rfd", "lfds", "ufd", "path", "st", "entries", "lower")

    def __init__(self, rfd: int, lfds: list[int], ufd: int, path: str):
        self.rfd, self.lfds, self.ufd, self.path = rfd, lfds, ufd, path
        self.st = os.fstat(rfd)
        self.entries: Iterator[os.DirEntry] = iter(())
        self.lower: dict[str, Item | None] = {}


class _Differ:
    def __init__(self, rroot: int, uroot: int, prefix: str):
        self.rroot, self.prefix = rroot, prefix
        self.dev = os.fstat(rroot).st_dev
        self.c = Copier(uroot, prefix)
        self.stack: list[_Dir] = []
        self.shared: dict[tuple[int, int], list[str]] = {}  # rootfs inodes with several names: the names
        self.whiteouts = self.opaque = 0
        self.where = ""

    def _upper(self) -> int:
        """The current directory's copy in the upper directory, made (with its parents) on first need."""
        stack = self.stack
        i = len(stack) - 1
        while stack[i].ufd < 0:
            i -= 1
        for d, parent in zip(stack[i + 1:], stack[i:]):
            d.ufd = self.c.directory(d.rfd, d.st, parent.ufd, d.path.rstrip("/").rsplit("/", 1)[-1])
        return stack[-1].ufd

    def _mark_opaque(self, fd: int) -> None:
        os.setxattr(fd, self.prefix + "opaque", b"y")
        self.opaque += 1

    def _enter(self, rfd: int, lfds: list[int], path: str, ufd: int = -1) -> None:
        d = _Dir(rfd, lfds, ufd, path)
        self.stack.append(d)
        with os.scandir(rfd) as it:
            entries = list(it)
        lower = listing(lfds) if lfds else {}
        visible = [name for name, item in lower.items() if item is not None]
        if visible:
            present = {e.name for e in entries}
            gone = [name for name in visible if name not in present]
            if len(gone) == len(visible):  # nothing of the layers' directory is left: opaque, no whiteouts
                self._mark_opaque(self._upper())
                lower = {}
            elif gone:
                ufd = self._upper()
                for name in gone:
                    os.mknod(name, stat.S_IFCHR, 0, dir_fd=ufd)
                self.whiteouts += len(gone)
        d.entries, d.lower = iter(entries), lower

    def _leave(self) -> None:
        d = self.stack.pop()
        close_all(d.lfds)
        if not self.stack:  # the root's fds are the caller's, its metadata is set last
            return
        try:
            if d.ufd >= 0:
                self.c.finish_dir(d.ufd, d.st)
        finally:
            if d.ufd >= 0:
                os.close(d.ufd)
            os.close(d.rfd)

    def _differs(self, rfd: int, lpfd: int, name: str, st: os.stat_result, lst: os.stat_result) -> bool:
        if (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) != (lst.st_mode, lst.st_uid, lst.st_gid,
                                                                  lst.st_mtime_ns):
            return True
        kind = stat.S_IFMT(st.st_mode)
        if kind != stat.S_IFDIR and st.st_size != lst.st_size:
            return True
        if kind == stat.S_IFLNK and os.readlink(name, dir_fd=rfd) != os.readlink(name, dir_fd=lpfd):
            return True
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and st.st_rdev != lst.st_rdev:
            return True
        return (xattrs(f"/proc/self/fd/{rfd}/{name}", self.prefix)
                != xattrs(f"/proc/self/fd/{lpfd}/{name}", self.prefix))

    def run(self, lroots: list[int]) -> None:
        self._enter(self.rroot, lroots, "", self.c.root)
        while self.stack:
            d = self.stack[-1]
            e = next(d.entries, None)
            if e is None:
                self._leave()
                continue
            self.where = d.path + e.name
            try:
                self._entry(d, e)
            except FileNotFoundError:  # removed by the running container while we looked
                continue

    def _entry(self, d: _Dir, e: os.DirEntry) -> None:
        name, path = e.name, d.path + e.name
        st = e.stat(follow_symlinks=False)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and st.st_dev != self.dev:
            return  # something mounted on the rootfs here (not the container's own mounts): not its content
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            self.shared.setdefault((st.st_dev, st.st_ino), []).append(path)
        low = d.lower.get(name)
        if low is not None and stat.S_IFMT(low.st.st_mode) == stat.S_IFMT(st.st_mode):
            changed = self._differs(d.rfd, low.pfd, name, st, low.st)
            if not is_dir:
                if changed:
                    self.c.copy(d.rfd, name, st, self._upper(), path)
                return
            rfd = os.open(name, DIR_FLAGS, dir_fd=d.rfd)
            try:
                lfds = open_merged(low.dirs, name, self.prefix)
            except BaseException:
                os.close(rfd)
                raise
            self._enter(rfd, lfds, path + "/")
            if changed:
                self._upper()
            return
        # new, or its type changed
        if not is_dir:
            self.c.copy(d.rfd, name, st, self._upper(), path)
            return
        ufd = self._upper()
        rfd = os.open(name, DIR_FLAGS, dir_fd=d.rfd)
        try:
            child = self.c.directory(rfd, os.fstat(rfd), ufd, name)
        except BaseException:
            os.close(rfd)
            raise
        if low is not None:  # over a non-directory of the layers: show nothing below (overlay does the same)
            self._mark_opaque(child)
        self._enter(rfd, [], path + "/", child)

    def link_shared(self) -> None:
        """A new name for an unchanged file of the layers (`ln /etc/a /etc/b`) was copied; give the upper
        the unchanged names too, linked to it, so they still share an inode seen through the layers."""
        for key, names in self.shared.items():
            first = self.c.links.get(key)
            for path in names if first is not None else ():
                if path not in self.c.linked:
                    self.where = path
                    self._link(first, path)

    def _link(self, first: str, path: str) -> None:
        *parents, name = path.split("/")
        fds: list[tuple[int, int, os.stat_result]] = []  # rootfs dir, upper dir, rootfs stat
        rfd, ufd = self.rroot, self.c.root
        try:
            for comp in parents:
                rfd = os.open(comp, DIR_FLAGS, dir_fd=rfd)
                fds.append((rfd, -1, os.fstat(rfd)))
                try:
                    ufd = os.open(comp, DIR_FLAGS, dir_fd=ufd)
                except FileNotFoundError:
                    ufd = self.c.directory(rfd, fds[-1][2], ufd, comp)
                fds[-1] = (rfd, ufd, fds[-1][2])
            os.link(first, name, src_dir_fd=self.c.root, dst_dir_fd=ufd, follow_symlinks=False)
            self.c.linked.add(path)
        finally:
            for rfd, ufd, st in reversed(fds):
                if ufd >= 0:
                    self.c.finish_dir(ufd, st)
                    os.close(ufd)
                os.close(rfd)


def changes(layers: list[str], rootfs: str, upper: str, *, xattr_prefix: str) -> CopyReport:
    """Write into the empty directory `upper` what an overlay upper directory over `layers` (lowest first)
    would hold for the container filesystem `rootfs`: new and changed entries (content, metadata, symlink
    target, type) with their parent directories, deleted names as 0:0 character-device whiteouts, a
    directory none of whose layer entries is left as one opaque directory. Names of one inode in the
    rootfs stay one inode in `upper`. The comparison rule is the naive diff's (module docstring)."""
    d = None
    try:
        rroot = os.open(rootfs, DIR_FLAGS)
        try:
            uroot = os.open(upper, DIR_FLAGS)
            try:
                d = _Differ(rroot, uroot, xattr_prefix)
                try:
                    d.run(open_roots(layers, xattr_prefix))
                finally:
                    for level in d.stack:
                        close_all(level.lfds)
                        if level.rfd != rroot:
                            os.close(level.rfd)
                        if level.ufd not in (-1, uroot):
                            os.close(level.ufd)
                d.link_shared()
                d.c.set_root(uroot, rroot)
                return d.c.report(d.whiteouts, d.opaque)
            finally:
                os.close(uroot)
        finally:
            os.close(rroot)
    except OSError as e:
        where = f"{rootfs}/{d.where}" if d is not None else rootfs
        raise StorageError(f"cannot compute the changes of {where}: {e.strerror or e}") from None
