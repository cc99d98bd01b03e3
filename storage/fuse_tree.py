"""The layer stack behind the FUSE overlay (storage/fuse_overlay.py): lookups through the layers, merged
directory listings, copy-up, whiteouts and the per-mount inode numbers, in the kernel overlayfs on-disk
form (a whiteout is a 0:0 character device, an opaque directory carries `<prefix>opaque` = "y").

Paths are the mount's absolute paths ("/", "/etc/passwd"). Layer index 0 is the upper directory, 1.. the
lower layers from the top down. Every path is resolved one component at a time with lstat, and a layer
takes part below a component only where that component is a real directory in it: a symlink in a lower
layer (`/lib -> usr/lib`, or an absolute one) is never followed on the host side. The resolved directory
layers are cached per path (`_dirs`); every change of the namespace goes through this class, under
`lock`, and invalidates the entries it affects (a generation counter keeps a lookup that raced with an
invalidation from storing a stale entry).

Inode numbers: when a layer lives on the upper's filesystem its real st_ino is used (unique there);
layers on other filesystems get numbers from a per-mount map, allocated from 2**56 up. A copy-up keeps
the number the file had below (`_alias`: upper (dev, ino) → the number it had), so st_ino stays the same
for the lifetime of the mount, and hard links made through the mount share the upper inode and so the
number. Like overlayfs without `index`, copying up one name of a file hard-linked in a lower layer breaks
that link.
"""
from __future__ import annotations

import errno
import os
import stat
import threading

_WORK_PREFIX = "#fuse-overlay-"
_FOREIGN_INO_BASE = 1 << 56
_MAX_CACHED_DIRS = 200_000
S_IFMT = 0o170000


def _err(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path)


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


class Entry:
    """One resolved name: the topmost layer that has it, its lstat there, and for a directory the layers
    that merge into it (topmost first)."""

    __slots__ = ("layer", "real", "st", "layers")

    def __init__(self, layer: int, real: str, st: os.stat_result, layers: tuple[int, ...] | None):
        self.layer, self.real, self.st, self.layers = layer, real, st, layers


class LayerStack:
    def __init__(self, lowers: list[str], upper: str, work: str, xattr_prefix: str = "user.overlay."):
        # index 0 = upper, then the lowers topmost first (the caller lists them lowest first)
        self.roots = [os.path.abspath(upper)] + [os.path.abspath(p) for p in reversed(lowers)]
        self.work = os.path.abspath(work)
        self.upper_prefix = self.roots[0] + "/"
        self.prefix = xattr_prefix
        self.opaque_key = xattr_prefix + "opaque"
        self.escaped = xattr_prefix + "overlay."
        self.lock = threading.RLock()
        self._dirs: dict[str, tuple[int, ...]] = {}
        self._gen = 0
        self._tmp = 0
        self.devs = [os.lstat(r).st_dev for r in self.roots]
        self._dev0 = self.devs[0]
        self._foreign: dict[tuple[int, int], int] = {}
        self._alias: dict[tuple[int, int], int] = {}
        if os.lstat(self.work).st_dev != self._dev0:
            raise _err(errno.EXDEV, self.work)
        self._dirs["/"] = self._root_layers()

    def _root_layers(self) -> tuple[int, ...]:
        layers = []
        for i, root in enumerate(self.roots):
            layers.append(i)
            if i and self._opaque(root):  # an opaque lower root hides what is below it
                break
        return tuple(layers)

    # -- inode numbers ------------------------------------------------------------------------------
    def ino(self, dev: int, ino: int) -> int:
        key = (dev, ino)
        alias = self._alias.get(key)
        if alias is not None:
            return alias
        if dev == self._dev0:
            return ino
        got = self._foreign.get(key)
        if got is None:
            with self.lock:
                got = self._foreign.setdefault(key, _FOREIGN_INO_BASE + len(self._foreign))
        return got

    def forget_inode(self, st: os.stat_result) -> None:
        """The upper inode `st` lost its last name: its number may be reused by the filesystem."""
        if st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode):
            self._alias.pop((st.st_dev, st.st_ino), None)

    # -- lookups ------------------------------------------------------------------------------------
    def _opaque(self, real: str) -> bool:
        try:
            return os.getxattr(real, self.opaque_key, follow_symlinks=False) == b"y"
        except OSError:
            return False

    def _lookup_in(self, players: tuple[int, ...], path: str) -> Entry | None:
        """The entry `path` in a directory merged from `players`, or None (absent or whited out)."""
        top: Entry | None = None
        dirs: list[int] = []
        last = players[-1]
        for i in players:
            real = self.roots[i] + path
            try:
                st = os.lstat(real)
            except (FileNotFoundError, NotADirectoryError):
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                if top is None:
                    top = Entry(i, real, st, None)
                dirs.append(i)
                if i != last and self._opaque(real):
                    break
            elif top is not None:  # a whiteout or a non-directory below a directory ends the merge
                break
            elif stat.S_ISCHR(mode) and st.st_rdev == 0:
                return None
            else:
                return Entry(i, real, st, None)
        if top is not None:
            top.layers = tuple(dirs)
        return top

    def dir_layers(self, path: str) -> tuple[int, ...]:
        """The layers merging into directory `path` (ENOENT, ENOTDIR otherwise)."""
        got = self._dirs.get(path)
        if got is not None:
            return got
        gen = self._gen
        parts = path.split("/")
        # the deepest cached ancestor, then down one component at a time
        n = len(parts) - 1
        while n > 1 and "/".join(parts[:n]) not in self._dirs:
            n -= 1
        cur = "/".join(parts[:n]) or "/"
        layers = self._dirs.get(cur)
        if layers is None:  # invalidated meanwhile: start at the root
            n, cur, layers = 1, "/", self._dirs["/"]
        if len(self._dirs) > _MAX_CACHED_DIRS:  # bounded: start over (the root is re-added below)
            with self.lock:
                self._gen += 1
                self._dirs = {"/": self._dirs["/"]}
        for k in range(n, len(parts)):
            cur = "/".join(parts[:k + 1])
            ent = self._lookup_in(layers, cur)
            if ent is None:
                raise _err(errno.ENOENT, path)
            if ent.layers is None:
                raise _err(errno.ENOTDIR, path)
            layers = ent.layers
            if gen == self._gen:
                self._dirs[cur] = layers
        return layers

    def lookup(self, path: str) -> Entry:
        if path == "/":
            layers = self.dir_layers("/")
            real = self.roots[layers[0]]
            return Entry(layers[0], real, os.lstat(real), layers)
        parent = path.rpartition("/")[0] or "/"
        ent = self._lookup_in(self.dir_layers(parent), path)
        if ent is None:
            raise _err(errno.ENOENT, path)
        return ent

    def lookup_or_none(self, path: str) -> Entry | None:
        try:
            return self.lookup(path)
        except FileNotFoundError:
            return None

    def lower_positive(self, path: str) -> bool:
        """Whether a lower layer shows `path` below the upper: removing it in the upper needs a whiteout."""
        parent = path.rpartition("/")[0] or "/"
        for i in self.dir_layers(parent):
            if i == 0:
                continue
            try:
                st = os.lstat(self.roots[i] + path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            return not is_whiteout(st)
        return False

    def invalidate(self, path: str, subtree: bool = False) -> None:
        self._gen += 1
        self._dirs.pop(path, None)
        if subtree:
            prefix = path + "/"
            for key in [k for k in self._dirs if k.startswith(prefix)]:
                self._dirs.pop(key, None)

    # -- listings -----------------------------------------------------------------------------------
    def listdir(self, path: str) -> list[tuple[str, int, int]]:
        """The merged entries of directory `path` as (name, file type bits, st_ino), without . and .."""
        layers = self.dir_layers(path)
        seen: dict[str, tuple[str, int, int]] = {}
        hidden: set[str] = set()
        for i in layers:
            dev = self.devs[i]
            with os.scandir(self.roots[i] + path) as it:
                for e in it:
                    name = e.name
                    if name in seen or name in hidden:
                        continue
                    if e.is_dir(follow_symlinks=False):
                        kind = stat.S_IFDIR
                    elif e.is_file(follow_symlinks=False):
                        kind = stat.S_IFREG
                    elif e.is_symlink():
                        kind = stat.S_IFLNK
                    else:
                        st = e.stat(follow_symlinks=False)
                        if is_whiteout(st):
                            hidden.add(name)
                            continue
                        kind = stat.S_IFMT(st.st_mode)
                    seen[name] = (name, kind, self.ino(dev, e.inode()))
        return list(seen.values())

    def is_empty(self, path: str) -> bool:
        return not self.listdir(path)

    # -- upper-side changes -------------------------------------------------------------------------
    def upper(self, path: str) -> str:
        return self.roots[0] + path

    def _work_name(self) -> str:
        with self.lock:
            self._tmp += 1
            return os.path.join(self.work, f"{_WORK_PREFIX}{os.getpid()}-{self._tmp}")

    def copy_meta(self, src: str, st: os.stat_result, dst: str | int) -> None:
        """Owner, mode, xattrs (but overlay's own) and times of `src` onto `dst` (a path, never followed,
        or an fd)."""
        link = stat.S_ISLNK(st.st_mode)
        if isinstance(dst, int):
            os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
        else:
            os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
            if not link:
                os.chmod(dst, stat.S_IMODE(st.st_mode))
        try:
            names = os.listxattr(src, follow_symlinks=False)
        except OSError:
            names = []
        for key in names:
            if self.is_private_xattr(key):
                continue
            try:  # after chown too, which drops security.capability
                value = os.getxattr(src, key, follow_symlinks=False)
                if isinstance(dst, int):
                    os.setxattr(dst, key, value)
                else:
                    os.setxattr(dst, key, value, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
        if isinstance(dst, int):
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        else:
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    @staticmethod
    def _copy_data(src_fd: int, dst_fd: int, size: int) -> None:
        """Only the data extents (SEEK_DATA/SEEK_HOLE): a sparse file stays sparse."""
        pos = 0
        while pos < size:
            try:
                start = os.lseek(src_fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = min(os.lseek(src_fd, start, os.SEEK_HOLE), size)
            if end <= start:
                break
            off = start
            while off < end:
                try:
                    n = os.copy_file_range(src_fd, dst_fd, end - off, off, off)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    n = os.pwrite(dst_fd, os.pread(src_fd, min(end - off, 1 << 20), off), off)
                if n == 0:  # the source shrank
                    break
                off += n
            pos = end
        os.ftruncate(dst_fd, size)

    def copy_up(self, path: str, data: bool = True) -> str:
        """Make `path` exist in the upper layer (its parents first, each with its metadata) and return
        its upper path. `data=False` for a file about to be truncated to zero."""
        with self.lock:
            ent = self.lookup(path)
            if ent.layer == 0:
                return ent.real
            if path != "/":
                self.ensure_upper_dir(path.rpartition("/")[0] or "/")
            dst, st, src = self.upper(path), ent.st, ent.real
            tmp = self._work_name()
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                os.mkdir(tmp, 0o700)
                self.copy_meta(src, st, tmp)
            elif stat.S_ISREG(mode):
                fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                    try:
                        if data:
                            self._copy_data(fin, fout, st.st_size)
                        self.copy_meta(src, st, fout)
                    finally:
                        os.close(fout)
                finally:
                    os.close(fin)
            elif stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), tmp)
                self.copy_meta(src, st, tmp)
            else:
                os.mknod(tmp, stat.S_IFMT(mode) | 0o600, st.st_rdev)
                self.copy_meta(src, st, tmp)
            try:
                os.rename(tmp, dst)
            except OSError:
                self._remove_tmp(tmp)
                raise
            new = os.lstat(dst)
            self._alias[(new.st_dev, new.st_ino)] = self.ino(st.st_dev, st.st_ino)
            if stat.S_ISDIR(mode):
                self.invalidate(path)
            return dst

    def ensure_upper_dir(self, path: str) -> str:
        """Copy up directory `path` and its parents if they live only below."""
        layers = self.dir_layers(path)
        if layers[0] == 0:
            return self.upper(path)
        return self.copy_up(path)

    def _remove_tmp(self, tmp: str) -> None:
        try:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.unlink(tmp)
        except OSError:
            pass

    def whiteout(self, path: str) -> None:
        os.mknod(self.upper(path), stat.S_IFCHR, 0)

    def clear_whiteout(self, path: str) -> bool:
        """Remove a whiteout at `path` in the upper, if there is one (before creating the name there)."""
        real = self.upper(path)
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return False
        if is_whiteout(st):
            os.unlink(real)
            return True
        raise _err(errno.EEXIST, path)

    def clear_upper_dir(self, real: str) -> None:
        """Empty an upper directory that the merged view shows as empty: only whiteouts can be in it."""
        with os.scandir(real) as it:
            names = [e.name for e in it]
        for name in names:
            st = os.lstat(os.path.join(real, name))
            if not is_whiteout(st):
                raise _err(errno.ENOTEMPTY, real)
            os.unlink(os.path.join(real, name))

    def set_opaque(self, real: str) -> None:
        os.setxattr(real, self.opaque_key, b"y", follow_symlinks=False)

    def is_private_xattr(self, name: str) -> bool:
        """The overlay's own attributes (opaque, …); `<prefix>overlay.*` are escaped ones of the layer's
        content (a nested overlay's), which the mount shows as `<prefix>*`, as overlayfs does."""
        return name.startswith(self.prefix) and not name.startswith(self.escaped)

    def stored_xattr(self, name: str) -> str:
        """The name in the layers of the xattr `name` given through the mount."""
        return self.escaped + name[len(self.prefix):] if name.startswith(self.prefix) else name

    def shown_xattrs(self, names: list[str]) -> list[str]:
        n, e = len(self.escaped), self.escaped
        return [self.prefix + k[n:] if k.startswith(e) else k for k in names if not self.is_private_xattr(k)]

    def clean_work(self) -> None:
        """Leftovers of an earlier daemon that died in the middle of a copy-up."""
        try:
            names = os.listdir(self.work)
        except OSError:
            return
        for name in names:
            if name.startswith(_WORK_PREFIX):
                self._remove_tmp(os.path.join(self.work, name))
