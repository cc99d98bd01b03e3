"""A container's files: `cp` in both directions, `diff` and `export`, with Docker's rules.

Everything inside the container is hostile (symlinks planted anywhere, swapped while we copy): the paths are
resolved, walked, written and extracted by storage/rootfs_paths and storage/tree_copy, which never let
the kernel resolve a container path. This module holds what Docker's commands mean: which trailing "/" and "/." matter, where a
copy lands, who owns it, what `diff` reports. Owners follow Docker: files copied into a container belong to
its root, files copied out to the caller, the source's numeric owners only with `preserve_owner` (`cp -a`).
"""
from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pinnace.errors import InvalidArgument, NotFound
from pinnace.storage.rootfs_paths import DIR_FLAGS, close_fd, open_dir, resolve_at, translated_errors
from pinnace.storage.rootfs_paths import resolve_in_root  # noqa: F401 - part of this module's API
from pinnace.storage.tree_copy import extract_tar, materialize, walk_tree, write_tar

_RUNTIME_DIRS = ("proc", "sys", "dev")  # mount points of the runtime: exported empty


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
    parts, parent = resolve_at(root_fd, spec.text, follow_link)
    name = parts[-1] if parts else "."
    try:
        if parent < 0:
            raise FileNotFoundError
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        close_fd(parent)
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
            return os.open(name, DIR_FLAGS, dir_fd=parent), ("" if spec.contents else spec.base)
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
    with open_dir(rootfs, "container root filesystem") as root_fd, \
            translated_errors(f"cannot copy {src} from the container"):
        parent, name, _ = _locate(root_fd, spec, follow_link)
        try:
            write_tar(walk_tree(parent, name, "" if spec.contents else spec.base), out)
        finally:
            os.close(parent)


def copy_to_host(rootfs: Path, src: str, dest: str | os.PathLike, *, follow_link: bool = False,
                 preserve_owner: bool = False) -> None:
    """`cp CTR:SRC DEST`. Pass DEST as the user typed it: a trailing "/" matters. Files written belong to
    the caller, or keep the container's numeric owners with `preserve_owner`."""
    spec, dest = _spec(src, host=False), os.fspath(dest)
    with open_dir(rootfs, "container root filesystem") as root_fd, translated_errors(f"cannot copy {src} to {dest}"):
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
                nodes = walk_tree(parent, name, arcname)
                materialize(nodes, dfd, "keep" if preserve_owner else "caller", dest)
            finally:
                os.close(dfd)
        finally:
            os.close(parent)


def copy_from_host(rootfs: Path, src: str | os.PathLike, dest: str, *, follow_link: bool = False,
                   preserve_owner: bool = False) -> None:
    """`cp SRC CTR:DEST`: Docker's rules reversed. New files belong to the container's root (0:0), or keep
    the numeric owners seen here with `preserve_owner`; modes and mtimes are kept."""
    spec = _spec(os.fspath(src), host=True)
    with open_dir(rootfs, "container root filesystem") as root_fd, \
            translated_errors(f"cannot copy {spec.text} to {dest} in the container"):
        parent, name, st = _locate_host(spec, follow_link)
        try:
            parts, dparent = resolve_at(root_fd, dest, True)
            if dparent < 0:
                raise NotFound(f"no such directory in the container: the parent of {dest}")
            dname = parts[-1] if parts else "."
            try:
                exists = os.stat(dname, dir_fd=dparent, follow_symlinks=False)
            except FileNotFoundError:
                exists = None
            dfd, arcname = _target(dparent, dname, exists, spec, stat.S_ISDIR(st.st_mode), dest)
            try:
                materialize(walk_tree(parent, name, arcname), dfd, "keep" if preserve_owner else "root", dest)
            finally:
                os.close(dfd)
        finally:
            os.close(parent)


def copy_in(rootfs: Path, dest: str, tar_stream: BinaryIO, *, preserve_owner: bool = False) -> None:
    """`cp - CTR:DEST`: extract a tar (plain, gzip or zstd) into the existing directory DEST. Members that would
    land outside DEST (`..`, absolute names, a path through a symlink, hardlinks likewise) are refused with
    InvalidArgument. Owners become 0:0 like Docker's, or stay the archive's with `preserve_owner`."""
    with open_dir(rootfs, "container root filesystem") as root_fd, \
            translated_errors(f"cannot extract the archive into {dest} in the container"):
        parts, parent = resolve_at(root_fd, dest, True)
        name = parts[-1] if parts else "."
        try:
            if parent < 0:
                raise FileNotFoundError
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            close_fd(parent)
            raise NotFound(f"no such directory in the container: {dest}") from None
        try:
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"not a directory in the container: {dest}")
            dfd = os.open(name, DIR_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            extract_tar(tar_stream, dfd, "keep" if preserve_owner else "root", dest)
        finally:
            os.close(dfd)


def diff_upper(upper: Path, lower_exists: Callable[[str], bool],
               xattr_prefix: str = "user.overlay.") -> list[tuple[str, str]]:
    """Docker `diff` from the overlay upper dir: ("A"|"C"|"D", "/path") sorted by path. A whiteout (0:0
    char device, or an entry with the `<prefix>whiteout` xattr) is D; an entry the image has
    (`lower_exists("/path")`) is C, else A; below an opaque directory everything is A."""
    out: list[tuple[str, str]] = []
    with open_dir(upper, "container layer") as root_fd, translated_errors(f"cannot read the container layer {upper}"):
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
                        fds.append(os.open(name, DIR_FLAGS, dir_fd=dfd))
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
    with open_dir(rootfs, "container root filesystem") as root_fd, \
            translated_errors("cannot export the container's filesystem"):
        write_tar(walk_tree(root_fd, ".", "", skip=_RUNTIME_DIRS), out)
