"""COPY and ADD into a layer: the executor mounts the image-so-far at `rootfs` and `copy_into` writes the
step's files through that merged view, with BuildKit's rules (sources: builder/copy_sources.py).

Destination: relative to the WORKDIR; it is a directory when it ends with "/" (or is "." / ends with "/.", as
BuildKit normalizes them); more than one source needs such a destination (Docker's message). A directory
source copies its contents into the destination (created 0755 when missing); a file goes to `dest/NAME`
when the destination is a directory or an existing one, else to `dest`. Missing parents are created 0755
and owned by the --chown user (0:0 without), as BuildKit's MkdirAll; existing directories keep their
owner and mode, except directories merged below the destination, which take the source's (BuildKit).
Owners: 0:0 for the build context, heredocs and URLs; kept for `COPY --from` (`CopyItem.keep_owner`) and tar
members; the --chown ids when given. Modes, mtimes, symlinks (as links) and hard links within one source are
kept; --chmod (octal, or symbolic like `u=rwX,go=rX`) replaces the permission bits of what is copied, never
of directories created on the way. ADD extracts a local tar (plain, gzip, bzip2, xz, zstd; found by
content: the first member must parse) into the destination as a directory; `unpack=False` copies it, and a
URL is extracted only with `unpack=True`; --chown then overrides the members' owners, --chmod does not apply.

Nothing is written through a symlink that leads out of the rootfs: the destination is resolved inside it
component by component (absolute links restart at the rootfs, `..` stops there, as a chroot would), then
every directory is opened O_NOFOLLOW from the rootfs's fd and entries are created by storage/tree_copy's
materializer, which never follows a symlink below its directory.
"""
from __future__ import annotations

import bz2
import contextlib
import errno
import lzma
import os
import posixpath
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator

from pinnace.builder.context_tree import Entry
from pinnace.builder.copy_sources import CopyItem, context_items, fetch_url, resolve_from_rootfs
from pinnace.builder.ignore import IgnoreRules, clean
from pinnace.errors import DigestMismatch, InvalidArgument
from pinnace.runtime.users import MAX_ID, parse_group, parse_passwd
from pinnace.storage import tar_reader as tr
from pinnace.storage.compression import open_decompressed
from pinnace.storage.rootfs_paths import DIR_FLAGS, close_fd, open_dir, resolve_at, translated_errors
from pinnace.storage.tree_copy import Node, materialize, walk_tree

__all__ = ["CopyItem", "context_items", "copy_into", "fetch_url", "parse_chmod", "resolve_chown",
           "resolve_from_rootfs"]

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20
_MULTI = "When using {} with more than one source file, the destination must be a directory and end with a /"


# -- --chown and --chmod ---------------------------------------------------------------------------------
def _read_in_root(root_fd: int, path: str, limit: int = 1 << 20) -> list[str]:
    """Lines of a file inside the rootfs (symlinks resolved inside it); [] when it is missing."""
    parts, parent = resolve_at(root_fd, path, True)
    try:
        if parent < 0 or not parts:
            return []
        fd = os.open(parts[-1], _READ, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    finally:
        close_fd(parent)
    with open(fd, "rb") as f:
        return f.read(limit).decode("utf-8", "replace").splitlines()


def _number(text: str) -> int | None:
    return int(text) if text.isdecimal() and int(text) <= MAX_ID else None


def resolve_chown(rootfs: str, spec: str) -> tuple[int, int]:
    """(uid, gid) of `--chown=user[:group]` against the rootfs's /etc/passwd and /etc/group (BuildKit: a
    name takes its primary group from passwd, a number gets the same number as gid; numbers need no files)."""
    user, sep, group = spec.partition(":")
    uid = gid = _number(user)
    with open_dir(rootfs, "root filesystem") as root_fd, translated_errors(f"cannot resolve --chown={spec}"):
        if uid is None:
            entry = next((p for p in parse_passwd(_read_in_root(root_fd, "/etc/passwd")) if p.name == user), None)
            if entry is None or not user:
                raise InvalidArgument(f"unable to find user {user}: no matching entries in passwd file")
            uid, gid = entry.uid, entry.gid
        if sep:
            gid = _number(group)
            if gid is None:
                found = [g for g in parse_group(_read_in_root(root_fd, "/etc/group")) if g.name == group]
                if not found or not group:
                    raise InvalidArgument(f"unable to find group {group}: no matching entries in group file")
                gid = found[0].gid
    return uid, gid


_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[rwxXst]*|[ugo]))+)")
_SHIFT = {"u": 6, "g": 3, "o": 0}


def _special(who: str) -> int:
    """The setuid/setgid/sticky bits that belong to the classes in `who`."""
    return (0o4000 if "u" in who else 0) | (0o2000 if "g" in who else 0) | (0o1000 if "o" in who else 0)


def parse_chmod(spec: str) -> Callable[[int, bool], int]:
    """`--chmod` as a function (mode, is_dir) -> mode. Octal replaces the permission bits (special bits
    stay the source's, as BuildKit's copier does); symbolic is chmod(1)'s syntax with no umask."""
    if re.fullmatch(r"[0-7]{1,4}", spec):
        perm = int(spec, 8) & 0o777
        return lambda mode, is_dir: (mode & ~0o777) | perm
    clauses = [_CLAUSE.fullmatch(c) for c in spec.split(",")]
    if not spec or not all(clauses):
        raise InvalidArgument(f"invalid --chmod={spec}: expected an octal mode or chmod's symbolic form")

    def apply(mode: int, is_dir: bool) -> int:
        for m in clauses:
            who = m[1].replace("a", "ugo") or "ugo"
            for op, perms in re.findall(r"([-+=])([ugo]|[rwxXst]*)", m[2]):
                if perms in _SHIFT:  # copy another class's bits
                    rwx = (mode >> _SHIFT[perms]) & 7
                    special = 0
                else:
                    rwx = sum(b for c, b in (("r", 4), ("w", 2), ("x", 1)) if c in perms)
                    if "X" in perms and (is_dir or mode & 0o111):
                        rwx |= 1
                    special = _special(who) & ((0o6000 if "s" in perms else 0) | (0o1000 if "t" in perms else 0))
                bits = sum(rwx << _SHIFT[w] for w in set(who)) | special
                if op == "+":
                    mode |= bits
                elif op == "-":
                    mode &= ~bits
                else:
                    mode = (mode & ~(sum(7 << _SHIFT[w] for w in set(who)) | _special(who))) | bits
        return mode

    return apply


# -- the destination ---------------------------------------------------------------------------------------
def _set_owner(fd: int, ids: tuple[int, int]) -> None:
    try:
        os.fchown(fd, *ids)
    except OSError as e:  # an id this namespace does not map, or no privilege: the entry stays ours
        if e.errno not in (errno.EPERM, errno.EINVAL):
            raise


def _open_dirs(root_fd: int, parts: list[str], ids: tuple[int, int] | None, dest: str) -> int:
    """fd of the directory `parts` below the rootfs, each component opened O_NOFOLLOW; missing ones are
    created 0755 owned by `ids` (None: FileNotFoundError instead)."""
    fd = os.dup(root_fd)
    for i, comp in enumerate(parts):
        try:
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if ids is None:
                    raise
                os.mkdir(comp, 0o755, dir_fd=fd)
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                _set_owner(nfd, ids)
                os.fchmod(nfd, 0o755)  # not the umask's
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                where = "/" + "/".join(parts[:i + 1])
                raise InvalidArgument(f"cannot copy to {dest}: {where} is not a directory") from None
            raise
        os.close(fd)
        fd = nfd
    return fd


def _is_dir(root_fd: int, parts: list[str]) -> bool:
    holder = -1
    try:
        holder = _open_dirs(root_fd, parts[:-1], None, "")
        return not parts or stat.S_ISDIR(os.stat(parts[-1], dir_fd=holder, follow_symlinks=False).st_mode)
    except (FileNotFoundError, InvalidArgument):
        return False
    finally:
        close_fd(holder)


# -- sources as tree_copy nodes ------------------------------------------------------------------------------
def _copy_fd(src: int, dst: int) -> None:
    try:
        while os.copy_file_range(src, dst, _CHUNK):  # in the kernel, reflinks where the filesystem can
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
            raise
    while data := os.read(src, _CHUNK):
        _write_all(dst, data)


def _entry_nodes(entries: Iterable[Entry], top: str) -> Iterator[Node]:
    """Nodes of a walk over the build context (its .dockerignore already applied); `top` names the source
    itself ("" for a directory: only its contents are copied)."""
    inodes: dict[tuple[int, int], str] = {}
    for e in entries:
        name, st = e.path or top, e.stat
        if not name:
            continue
        node = Node(name, tr.DIRECTORY, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFREG:
            first = inodes.setdefault((st.st_dev, st.st_ino), name) if st.st_nlink > 1 else name
            if first != name:
                node.kind, node.linkname = tr.HARDLINK, first
            else:
                fd = os.open(e.host_path, _READ)
                node.kind, node.size, node.fd = tr.REGULAR, os.fstat(fd).st_size, fd
                node.fill = lambda out, fd=fd: _copy_fd(fd, out)
        elif fmt == stat.S_IFLNK:
            node.kind, node.linkname = tr.SYMLINK, os.readlink(e.host_path)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
            node.kind = {stat.S_IFCHR: tr.CHARDEV, stat.S_IFBLK: tr.BLOCKDEV, stat.S_IFIFO: tr.FIFO}[fmt]
            node.devmajor, node.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif fmt != stat.S_IFDIR:
            continue  # sockets are never copied
        try:
            yield node
        finally:
            close_fd(node.fd)


def _item_nodes(item: CopyItem, top: str, walk: Callable[[CopyItem], Iterable[Entry]] | None) -> Iterator[Node]:
    """The nodes of one source; `top` names the source itself ("" for a directory: its contents only)."""
    if item.kind == "heredoc":
        data = item.data or b""
        yield Node(top, tr.REGULAR, 0o644, 0, 0, time.time_ns(), len(data), fill=lambda out: _write_all(out, data))
    elif walk is not None and item.kind == "path" and not item.keep_owner:  # the build context's own walk
        yield from _entry_nodes(walk(item), top)
    else:  # a tree we do not trust (another stage's rootfs) or a download: walked by fds, nothing followed
        parent, base = os.path.split(item.host_path.rstrip("/") or "/")
        with open_dir(parent or "/", "copy source") as pfd:
            yield from walk_tree(pfd, base or ".", top)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _adjusted(nodes: Iterator[Node], ids: tuple[int, int] | None, chmod: Callable[[int, bool], int] | None,
              exclude: IgnoreRules | None) -> Iterator[Node]:
    """The nodes with the step's owners and modes; --exclude'd ones (paths relative to the source) left out."""
    with contextlib.closing(nodes):
        for n in nodes:
            if exclude and (exclude.ignored(n.name, True) if n.kind == tr.DIRECTORY else exclude.excluded(n.name)):
                continue
            if ids is not None:
                n.uid, n.gid = ids
            if chmod is not None and n.kind not in (tr.SYMLINK, tr.HARDLINK):
                n.mode = chmod(n.mode, n.kind == tr.DIRECTORY)
            yield n


# -- archives ----------------------------------------------------------------------------------------------
def _decompressed(f, kind: str):
    f.seek(0)
    if kind == "bzip2":
        return bz2.BZ2File(f)
    if kind == "xz":
        return lzma.LZMAFile(f)
    return open_decompressed(f, "auto")  # gzip, zstd or a plain tar


def _archive_kind(fd: int) -> str | None:
    """"gzip"/"zstd"/"bzip2"/"xz"/"tar" when the regular file `fd` holds a tar whose first header parses
    (BuildKit's test, by content only), else None."""
    f = open(fd, "rb", closefd=False)
    head = f.read(6)
    kind = "bzip2" if head.startswith(b"BZh") else "xz" if head.startswith(b"\xfd7zXZ\x00") else \
        "gzip" if head.startswith(b"\x1f\x8b") else "zstd" if head.startswith(b"\x28\xb5\x2f\xfd") else "tar"
    try:
        stream, block = _decompressed(f, kind), b""
        while len(block) < 512 and (more := stream.read(512 - len(block))):  # raw streams return short reads
            block += more
    except Exception:  # noqa: BLE001 - any decoder complaint means "not an archive": the file is copied
        return None
    if len(block) < 512 or block == bytes(512):
        return None
    try:
        want = int(block[148:156].replace(b"\0", b" ").strip() or b"x", 8)
    except ValueError:
        return None
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 256
    return kind if want in (unsigned, signed) else None


def _extract(fd: int, kind: str, dest_fd: int, ids: tuple[int, int] | None, where: str) -> None:
    """Members below `dest_fd` (a leading "/" dropped as BuildKit does; `..` out of it refused)."""
    with open(os.dup(fd), "rb") as f:
        source = tr.Source(_decompressed(f, kind))

        def nodes() -> Iterator[Node]:
            for e in tr.entries(source):
                link = e.linkname.lstrip("/") if e.type == tr.HARDLINK else e.linkname
                yield Node(e.name.lstrip("/") or ".", e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.realsize, link,
                           e.devmajor, e.devminor, e.xattrs, fill=lambda out, e=e: tr.copy_data(source, e, out))

        try:
            materialize(_adjusted(nodes(), ids, None, None), dest_fd, "keep", where)
        except (EOFError, lzma.LZMAError) as e:  # the decoders' complaints about a broken stream
            raise InvalidArgument(f"cannot extract into {where}: {e}") from None
        except OSError as e:
            if e.errno is not None:
                raise
            raise InvalidArgument(f"cannot extract into {where}: {e}") from None  # bz2's "Invalid data stream"


# -- copy_into -----------------------------------------------------------------------------------------------
def copy_into(rootfs: str, items: list[CopyItem], dest: str, *, workdir: str, instruction: str = "COPY",
              chown: str | None = None, chmod: str | None = None, unpack: bool | None = None,
              checksum: str | None = None, wildcard: bool = False,
              walk: Callable[[CopyItem], Iterable[Entry]] | None = None,
              exclude: Iterable[str] = ()) -> list[str]:
    """Write `items` at `dest` inside `rootfs` (see the module doc); the image paths written, one per item.
    `walk(item)` lists a "path" item's entries (the build context's walk, .dockerignore applied: see
    context_items); without it the host tree is walked as it is, by fds. `wildcard`: the sources came from
    patterns, so no item at all is no error (BuildKit copies nothing). `checksum` (ADD --checksum) is checked
    against URL items' digests. `exclude` (--exclude) patterns match paths relative to each source, and a
    source's own name."""
    if not items:
        if wildcard:
            return []
        raise InvalidArgument(f"{instruction} failed: no source files were specified")
    dest = dest or "."
    as_dir = dest.endswith(("/", "/.", "/..")) or dest in (".", "..")
    if len(items) > 1 and not as_dir:
        raise InvalidArgument(_MULTI.format(instruction))
    if checksum is not None:
        _check_digests(items, checksum, instruction)
    ids = resolve_chown(rootfs, chown) if chown else None
    mode_fn = parse_chmod(chmod) if chmod else None
    rules = IgnoreRules.parse("\n".join(exclude), "--exclude") if exclude else None
    written: list[str] = []
    with open_dir(rootfs, "root filesystem") as root_fd, translated_errors(f"{instruction} failed"):
        parts, holder = resolve_at(root_fd, clean(posixpath.join("/", workdir or "/", dest)), True)
        close_fd(holder)
        dest_is_dir = as_dir or _is_dir(root_fd, parts)
        for item in items:
            if rules and rules.excluded(item.name):
                continue
            target = _copy_item(root_fd, item, parts, dest_is_dir, dest, instruction, ids, mode_fn, unpack,
                                rules, walk)
            if target not in written:
                written.append(target)
    return written


def _check_digests(items: list[CopyItem], checksum: str, instruction: str) -> None:
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise InvalidArgument(f"{instruction} --checksum={checksum}: expected sha256:<64 hex digits>")
    for item in items:
        if item.kind != "url":
            raise InvalidArgument(f"{instruction} --checksum is only supported for HTTP(S) sources, not {item.name}")
        if item.digest != checksum:
            raise DigestMismatch(f"{instruction} failed: {item.url} has digest {item.digest}, expected {checksum}")


def _copy_item(root_fd: int, item: CopyItem, parts: list[str], dest_is_dir: bool, dest: str, instruction: str,
               ids: tuple[int, int] | None, mode_fn: Callable[[int, bool], int] | None, unpack: bool | None,
               rules: IgnoreRules | None, walk) -> str:
    """Copy one source; its path in the image."""
    created = ids or (0, 0)  # directories made on the way: the --chown user, else root (BuildKit's MkdirAll)
    image = "/" + "/".join(parts)
    if instruction == "ADD" and not item.is_dir and (unpack or (unpack is None and item.kind == "path")):
        fd = os.open(item.host_path, _READ)
        try:
            kind = _archive_kind(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
            if kind is not None:
                dfd = _open_dirs(root_fd, parts, created, dest)
                try:
                    _extract(fd, kind, dfd, ids, f"{instruction} destination {image}")
                finally:
                    os.close(dfd)
                return image
        finally:
            os.close(fd)
    if item.is_dir:
        dir_parts, name, target = parts, "", image
    elif dest_is_dir:
        dir_parts, name, target = parts, item.name, posixpath.join(image, item.name)
    else:
        dir_parts, name, target = parts[:-1], parts[-1], image
    if not item.is_dir and ("/" in name or name in ("", ".", "..")):
        raise InvalidArgument(f"{instruction} failed: cannot name a file {name!r} in {image}")
    owner = ids if ids is not None else None if item.keep_owner and item.kind == "path" else (0, 0)
    dfd = _open_dirs(root_fd, dir_parts, created, dest)
    try:
        nodes = _adjusted(_item_nodes(item, name, walk), owner, mode_fn, rules if item.is_dir else None)
        materialize(nodes, dfd, "keep", f"{instruction} destination {'/' + '/'.join(dir_parts)}")
    finally:
        os.close(dfd)
    return target
