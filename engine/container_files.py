"""A container's files: `cp` in both directions, `diff` and `export`.

Everything inside the container is hostile: the image and the running container can plant symlinks
anywhere and swap them while we copy. So a container path never becomes a host path string that the kernel
resolves. It is walked component by component from an fd of the rootfs, each directory opened O_NOFOLLOW,
symlinks read and applied by hand (absolute ones restart at the rootfs, `..` stops there), and files are
then read or created relative to their parent's fd (O_NOFOLLOW, O_EXCL). Below a destination no symlink is
followed at all: an entry whose parent is a symlink is refused.

One tree walker (`_tree`) feeds both the tar writer (copy_out, export) and the materializer (copy_to_host,
copy_from_host); copy_in feeds the materializer from the tar reader. Not layer_export's walker: that one
turns 0:0 devices and opaque xattrs into OCI whiteouts and has neither a single-entry start nor exclusions.
Owners follow Docker: files copied into a container belong to its root, files copied out to the caller,
the source's numeric owners only with `preserve_owner` (`cp -a`). A file whose owner changes loses its
setuid/setgid bits, so a copy never turns someone's setuid program into root's.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pinnace.errors import InvalidArgument, LayerError, NotFound, PinnaceError, StorageError
from pinnace.storage import tar_reader as tr
from pinnace.storage.compression import open_decompressed

log = logging.getLogger("pinnace")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a regular file swapped for a FIFO by the running container must not hang the copy
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40  # the kernel's limit
_CHUNK = 1 << 20
_PRIVATE_XATTRS = ("trusted.", "user.overlay.")  # overlay metadata (trusted.overlay.* too) never travels
_SETID = stat.S_ISUID | stat.S_ISGID
_RUNTIME_DIRS = ("proc", "sys", "dev")  # mount points of the runtime: exported empty


# -- errors ----------------------------------------------------------------------------------------------
def _describe(e: OSError) -> str:
    text = e.strerror or str(e)
    return f"{text}: {e.filename}" if e.filename is not None else text


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    try:
        yield
    except LayerError as e:  # the tar reader's complaints about the stream
        raise InvalidArgument(f"{what}: {e}") from None
    except PinnaceError:
        raise
    except FileNotFoundError as e:
        raise NotFound(f"{what}: {_describe(e)}") from None
    except OSError as e:
        raise StorageError(f"{what}: {_describe(e)}") from None
    except (ValueError, OverflowError) as e:
        raise InvalidArgument(f"{what}: {e}") from None


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


@contextlib.contextmanager
def _open_dir(path: str | os.PathLike, what: str) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise StorageError(f"{what} {os.fspath(path)} is not available: {e.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


# -- resolving container paths ---------------------------------------------------------------------------
def _resolve(root_fd: int, path: str, follow_last: bool) -> tuple[list[str], int]:
    """Components of `path` below the root with every symlink applied inside it, and a new fd of the
    directory holding the last one (the root itself when there are none: then use the name "."); -1 when a
    parent is missing or not a directory. Missing components are kept lexically."""
    pending = path.split("/")[::-1]  # a stack: the next component is at the end
    parts: list[str] = []
    fds: list[int] = []  # fds[i]: directory parts[:i + 1] opened O_NOFOLLOW, -1 when not opened
    links = 0
    try:
        while pending:
            comp = pending.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if parts:  # never above the root
                    parts.pop()
                    _close(fds.pop())
                continue
            parent = fds[-1] if fds else root_fd
            st = None
            if parent >= 0:
                try:
                    st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    pass
            # anything after the name ("x/", "x/.") means it is used as a directory: follow it, as the kernel does
            if st is not None and stat.S_ISLNK(st.st_mode) and (pending or follow_last):
                links += 1
                if links > _MAX_LINKS:
                    raise InvalidArgument(f"too many levels of symbolic links in {path}")
                target = os.readlink(comp, dir_fd=parent)
                if target.startswith("/"):
                    for fd in fds:
                        _close(fd)
                    parts.clear()
                    fds.clear()
                pending.extend(target.split("/")[::-1])
                continue
            parts.append(comp)
            fds.append(os.open(comp, _DIR, dir_fd=parent) if st is not None and pending
                       and stat.S_ISDIR(st.st_mode) else -1)
        holder = fds[-2] if len(fds) > 1 else root_fd
        return parts, (os.dup(holder) if holder >= 0 else -1)
    finally:
        for fd in fds:
            _close(fd)


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path of the container path `path`, resolved as if `root` were `/`: absolute symlinks
    restart at `root`, `..` never climbs above it. The result need not exist."""
    with _open_dir(root, "container root filesystem") as root_fd, _errors(f"cannot resolve {path}"):
        parts, parent = _resolve(root_fd, path, follow_last)
        _close(parent)
    return Path(root, *parts)


@dataclass(frozen=True)
class _Spec:
    """A copy path as the user wrote it: Docker gives the trailing "/." and "/" a meaning."""

    text: str
    base: str  # the name a copy gets ("" for the root: then its contents are copied)
    contents: bool  # "DIR/.": the directory's contents, not the directory
    must_be_dir: bool  # "DIR/" or "DIR/."


def _spec(text: str, host: bool) -> _Spec:
    norm = os.path.abspath(text) if host else posixpath.normpath("/" + text)
    contents = text == "." or text.endswith("/.")
    return _Spec(text, posixpath.basename(norm), contents, contents or text.endswith("/"))


def _locate(root_fd: int, spec: _Spec, follow_link: bool) -> tuple[int, str, os.stat_result]:
    """(parent fd, name, lstat) of a copy source in the container; the caller closes the fd."""
    parts, parent = _resolve(root_fd, spec.text, follow_link)
    name = parts[-1] if parts else "."
    try:
        if parent < 0:
            raise FileNotFoundError
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        _close(parent)
        raise NotFound(f"no such file or directory in the container: {spec.text}") from None
    if spec.must_be_dir and not stat.S_ISDIR(st.st_mode):
        os.close(parent)
        raise InvalidArgument(f"not a directory in the container: {spec.text}")
    return parent, name, st


def _locate_host(spec: _Spec, follow_link: bool) -> tuple[int, str, os.stat_result]:
    path = os.path.realpath(spec.text) if follow_link or spec.must_be_dir else os.path.abspath(spec.text)
    head, name = os.path.split(path)
    try:
        parent = os.open(head or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"no such file or directory: {spec.text}") from None
    try:
        st = os.stat(name or ".", dir_fd=parent, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        os.close(parent)
        raise NotFound(f"no such file or directory: {spec.text}") from None
    if spec.must_be_dir and not stat.S_ISDIR(st.st_mode):
        os.close(parent)
        raise InvalidArgument(f"not a directory: {spec.text}")
    return parent, name or ".", st


# -- walking a tree ------------------------------------------------------------------------------------
@dataclass
class _Node:
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


def _node(dfd: int, name: str, path: str, st: os.stat_result, inodes: dict) -> _Node | None:
    mode = st.st_mode
    node = _Node(path, tr.DIRECTORY, stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns)
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


def _tree(parent_fd: int, name: str, arcname: str, skip: tuple[str, ...] = ()) -> Iterator[_Node]:
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
            fds.append(os.open(name, _DIR, dir_fd=parent_fd))
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
                _close(node.fd)
            if node.kind == tr.DIRECTORY and path not in skip:
                try:
                    fds.append(os.open(child, _DIR, dir_fd=dfd))
                except FileNotFoundError:
                    continue
                stack.append((fds[-1], iter(sorted(os.listdir(fds[-1]))), path + "/"))
    finally:
        for fd in fds:
            os.close(fd)


def _write_tar(nodes: Iterator[_Node], out: BinaryIO) -> None:
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
                    fd = os.open(comp, _DIR, dir_fd=pfd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=pfd)
                    fd = os.open(comp, _DIR, dir_fd=pfd)
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

    def _own(self, n: _Node, **where) -> int:
        """Set the owner; the mode to apply (setuid/setgid dropped when the owner is not the source's)."""
        ids = (n.uid, n.gid) if self.owner == "keep" else (0, 0) if self.owner == "root" else None
        if ids is not None and not self._set_owner(ids, **where):
            ids = None
        same = (ids or self.me) == (n.uid, n.gid)
        return n.mode if same or n.kind == tr.DIRECTORY else n.mode & ~_SETID

    @staticmethod
    def _set_xattrs(n: _Node, target: int | str) -> None:
        for key, value in n.xattrs.items():
            # overlay's and trusted.* could forge overlay metadata; security.* other than file capabilities
            # are the host's business
            if key.startswith(_PRIVATE_XATTRS) or (key.startswith("security.") and key != "security.capability"):
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=isinstance(target, int))
            except OSError:
                pass  # the destination filesystem or namespace refuses it: the copy goes on without

    def add(self, n: _Node) -> None:
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
            fd = os.open(name, _DIR, dir_fd=pfd)
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

    def _special(self, n: _Node, pfd: int, name: str, key: str) -> None:
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


def _materialize(nodes: Iterator[_Node], dest_fd: int, owner: str, where: str) -> None:
    m = _Materializer(dest_fd, owner, where)
    try:
        with contextlib.closing(nodes):
            for n in nodes:
                m.add(n)
        m.finish()
    finally:
        m.close()


def _target(parent: int, name: str, exists: os.stat_result | None, spec: _Spec, src_dir: bool,
            dest: str) -> tuple[int, str]:
    """Docker's destination rules: (fd of the directory to write into, the name the copy gets there,
    "" for a directory's contents). Takes over `parent`."""
    try:
        if exists is None:
            if dest.endswith("/") and not src_dir:
                raise InvalidArgument(f"destination directory {dest} does not exist")
            return os.dup(parent), name
        if stat.S_ISDIR(exists.st_mode):
            return os.open(name, _DIR, dir_fd=parent), ("" if spec.contents else spec.base)
        if src_dir:
            raise InvalidArgument(f"cannot copy a directory to the file {dest}")
        if dest.endswith("/"):
            raise InvalidArgument(f"destination {dest} is not a directory")
        return os.dup(parent), name
    finally:
        os.close(parent)


# -- the public operations -----------------------------------------------------------------------------
def copy_out(rootfs: Path, src: str, out: BinaryIO, *, follow_link: bool = False) -> None:
    """`cp CTR:SRC -`: SRC as a tar stream (a file: one member named by its basename; a directory: itself
    as the top member; "SRC/.": its contents). `follow_link` (-L) follows a symlink named by SRC."""
    spec = _spec(src, host=False)
    with _open_dir(rootfs, "container root filesystem") as root_fd, _errors(f"cannot copy {src} from the container"):
        parent, name, _ = _locate(root_fd, spec, follow_link)
        try:
            _write_tar(_tree(parent, name, "" if spec.contents else spec.base), out)
        finally:
            os.close(parent)


def copy_to_host(rootfs: Path, src: str, dest: str | os.PathLike, *, follow_link: bool = False,
                 preserve_owner: bool = False) -> None:
    """`cp CTR:SRC DEST`. Pass DEST as the user typed it: a trailing "/" matters. Files written belong to
    the caller, or keep the container's numeric owners with `preserve_owner`."""
    spec, dest = _spec(src, host=False), os.fspath(dest)
    with _open_dir(rootfs, "container root filesystem") as root_fd, _errors(f"cannot copy {src} to {dest}"):
        parent, name, st = _locate(root_fd, spec, follow_link)
        try:
            try:  # the host side is the user's own: their symlinks are followed
                exists = os.stat(dest.rstrip("/") or "/")
                real = os.path.realpath(dest)
            except FileNotFoundError:
                exists, real = None, os.path.abspath(dest)
            head, base = os.path.split(real)
            try:
                dparent = os.open(head or "/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise NotFound(f"cannot copy {src} to {dest}: directory {head} does not exist") from None
            dfd, arcname = _target(dparent, base or ".", exists, spec, stat.S_ISDIR(st.st_mode), dest)
            try:
                nodes = _tree(parent, name, arcname)
                _materialize(nodes, dfd, "keep" if preserve_owner else "caller", dest)
            finally:
                os.close(dfd)
        finally:
            os.close(parent)


def copy_from_host(rootfs: Path, src: str | os.PathLike, dest: str, *, follow_link: bool = False,
                   preserve_owner: bool = False) -> None:
    """`cp SRC CTR:DEST`: Docker's rules reversed. New files belong to the container's root (0:0), or keep
    the numeric owners seen here with `preserve_owner`; modes and mtimes are kept."""
    spec = _spec(os.fspath(src), host=True)
    with _open_dir(rootfs, "container root filesystem") as root_fd, \
            _errors(f"cannot copy {spec.text} to {dest} in the container"):
        parent, name, st = _locate_host(spec, follow_link)
        try:
            parts, dparent = _resolve(root_fd, dest, True)
            if dparent < 0:
                raise NotFound(f"no such directory in the container: the parent of {dest}")
            dname = parts[-1] if parts else "."
            try:
                exists = os.stat(dname, dir_fd=dparent, follow_symlinks=False)
            except FileNotFoundError:
                exists = None
            dfd, arcname = _target(dparent, dname, exists, spec, stat.S_ISDIR(st.st_mode), dest)
            try:
                _materialize(_tree(parent, name, arcname), dfd, "keep" if preserve_owner else "root", dest)
            finally:
                os.close(dfd)
        finally:
            os.close(parent)


def copy_in(rootfs: Path, dest: str, tar_stream: BinaryIO, *, preserve_owner: bool = False) -> None:
    """`cp - CTR:DEST`: extract a tar (plain, gzip or zstd) into the existing directory DEST. Members that would
    land outside DEST (`..`, absolute names, a path through a symlink, hardlinks likewise) are refused with
    InvalidArgument. Owners become 0:0 like Docker's, or stay the archive's with `preserve_owner`."""
    with _open_dir(rootfs, "container root filesystem") as root_fd, \
            _errors(f"cannot extract the archive into {dest} in the container"):
        parts, parent = _resolve(root_fd, dest, True)
        name = parts[-1] if parts else "."
        try:
            if parent < 0:
                raise FileNotFoundError
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            _close(parent)
            raise NotFound(f"no such directory in the container: {dest}") from None
        try:
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"not a directory in the container: {dest}")
            dfd = os.open(name, _DIR, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            source = tr.Source(open_decompressed(tar_stream, "auto"))  # Docker's API takes gzip too

            def nodes() -> Iterator[_Node]:
                for e in tr.entries(source):
                    yield _Node(e.name, e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.realsize, e.linkname,
                                e.devmajor, e.devminor, e.xattrs,
                                fill=lambda fd, e=e: tr.copy_data(source, e, fd))

            _materialize(nodes(), dfd, "keep" if preserve_owner else "root", dest)
        finally:
            os.close(dfd)


def diff_upper(upper: Path, lower_exists: Callable[[str], bool],
               xattr_prefix: str = "user.overlay.") -> list[tuple[str, str]]:
    """Docker `diff` from the overlay upper dir: ("A"|"C"|"D", "/path") sorted by path. A whiteout (0:0
    char device, or an entry with the `<prefix>whiteout` xattr) is D; an entry the image has
    (`lower_exists("/path")`) is C, else A; below an opaque directory everything is A."""
    out: list[tuple[str, str]] = []
    with _open_dir(upper, "container layer") as root_fd, _errors(f"cannot read the container layer {upper}"):
        fds: list[int] = []
        stack = [(root_fd, iter(os.listdir(root_fd)), "", False)]
        try:
            while stack:
                dfd, names, prefix, hidden = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    if fds and dfd == fds[-1]:
                        os.close(fds.pop())
                    continue
                path = f"{prefix}/{name}"
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:  # removed by the running container meanwhile
                    continue
                if _is_whiteout(st, f"/proc/self/fd/{dfd}/{name}", xattr_prefix):
                    if not hidden:  # below an opaque directory a whiteout hides nothing
                        out.append(("D", path))
                    continue
                out.append(("A" if hidden or not lower_exists(path) else "C", path))
                if stat.S_ISDIR(st.st_mode):
                    try:
                        fds.append(os.open(name, _DIR, dir_fd=dfd))
                    except FileNotFoundError:
                        continue
                    opaque = _xattr(fds[-1], xattr_prefix + "opaque") == b"y"
                    stack.append((fds[-1], iter(os.listdir(fds[-1])), path, hidden or opaque))
        finally:
            for fd in fds:
                os.close(fd)
    return sorted(out, key=lambda change: change[1])


def lower_exists_in(layers: list[Path], xattr_prefix: str = "user.overlay.") -> Callable[[str], bool]:
    """`lower_exists` for diff_upper over the image's layer dirs (topmost first) with overlay's rules: a
    whiteout or a non-directory in a higher layer hides the path, an opaque directory hides the layers
    below it. No symlink is followed (an absolute one would name a host path)."""
    def exists(path: str) -> bool:
        parts = [p for p in path.split("/") if p]
        for layer in layers:
            cur, hidden_below = os.fspath(layer), False
            for i, comp in enumerate(parts):
                cur = f"{cur}/{comp}"
                try:
                    st = os.lstat(cur)
                except (FileNotFoundError, NotADirectoryError):
                    break
                if _is_whiteout(st, cur, xattr_prefix):
                    return False
                if i == len(parts) - 1:
                    return True
                if not stat.S_ISDIR(st.st_mode):
                    return False
                hidden_below = hidden_below or _xattr(cur, xattr_prefix + "opaque") == b"y"
            if hidden_below:
                return False
        return False
    return exists


def _is_whiteout(st: os.stat_result, path: str, prefix: str) -> bool:
    """overlay's whiteouts: a 0:0 character device, or an empty file (or a directory) with the whiteout xattr."""
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    marked = (stat.S_ISREG(st.st_mode) and st.st_size == 0) or stat.S_ISDIR(st.st_mode)
    return marked and _xattr(path, prefix + "whiteout") is not None


def _xattr(target: int | str, key: str) -> bytes | None:
    try:
        return os.getxattr(target, key, follow_symlinks=isinstance(target, int))
    except OSError:
        return None


def export_rootfs(rootfs: Path, out: BinaryIO) -> None:
    """`export`: the merged filesystem as a tar (numeric owners, xattrs but overlay's and trusted.*,
    hardlinks, device nodes, no sockets); /proc, /sys and /dev are exported as empty directories."""
    with _open_dir(rootfs, "container root filesystem") as root_fd, \
            _errors("cannot export the container's filesystem"):
        _write_tar(_tree(root_fd, ".", "", skip=_RUNTIME_DIRS), out)
