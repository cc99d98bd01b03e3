"""Paths below a root that is not ours (an image, a running container's filesystem), resolved without
letting the kernel follow their symlinks: component by component from an fd of the root, each directory
opened O_NOFOLLOW, symlinks read and applied by hand (absolute ones restart at the root, `..` stops there).
Plus the one-line error translation that the tree copiers share.
"""
from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from pinnace.errors import InvalidArgument, LayerError, NotFound, PinnaceError, StorageError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC  # a directory, never through a symlink
_MAX_LINKS = 40  # the kernel's limit


# -- errors ----------------------------------------------------------------------------------------------
def _describe(e: OSError) -> str:
    text = e.strerror or str(e)
    return f"{text}: {e.filename}" if e.filename is not None else text


@contextlib.contextmanager
def translated_errors(what: str) -> Iterator[None]:
    """OSError and the tar reader's errors as pinnace errors whose message starts with `what`."""
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


def close_fd(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


@contextlib.contextmanager
def open_dir(path: str | os.PathLike, what: str) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise StorageError(f"{what} {os.fspath(path)} is not available: {e.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


# -- resolving paths below a root ------------------------------------------------------------------------
def resolve_at(root_fd: int, path: str, follow_last: bool) -> tuple[list[str], int]:
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
                    close_fd(fds.pop())
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
                        close_fd(fd)
                    parts.clear()
                    fds.clear()
                pending.extend(target.split("/")[::-1])
                continue
            parts.append(comp)
            fds.append(os.open(comp, DIR_FLAGS, dir_fd=parent) if st is not None and pending
                       and stat.S_ISDIR(st.st_mode) else -1)
        holder = fds[-2] if len(fds) > 1 else root_fd
        return parts, (os.dup(holder) if holder >= 0 else -1)
    finally:
        for fd in fds:
            close_fd(fd)


def resolve_in_root(root: Path, path: str, *, follow_last: bool = True) -> Path:
    """The host path of the container path `path`, resolved as if `root` were `/`: absolute symlinks
    restart at `root`, `..` never climbs above it. The result need not exist."""
    with open_dir(root, "container root filesystem") as root_fd, translated_errors(f"cannot resolve {path}"):
        parts, parent = resolve_at(root_fd, path, follow_last)
        close_fd(parent)
    return Path(root, *parts)


def find_in_root(root: str, path: str) -> str | None:
    """resolve_in_root for a lookup: the host path of `path` below `root` as a string, None when it does
    not exist or its symlinks loop."""
    with open_dir(root, "container root filesystem") as root_fd, translated_errors(f"cannot resolve {path}"):
        try:
            parts, parent = resolve_at(root_fd, path, True)
        except InvalidArgument:  # too many levels of symbolic links
            return None
        try:
            if parent < 0:
                return None
            os.stat(parts[-1] if parts else ".", dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            close_fd(parent)
    return os.path.join(root, *parts)
