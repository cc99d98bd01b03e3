"""The files of a build context as COPY/ADD see them: source resolution, walking, checksums.

Sources (`resolve_sources`) follow the old builder's rules and messages: a path that climbs out of the
context, or a symlink that leads out of it when the source argument is followed (every component, the last
one too), is refused; an absolute symlink is followed only when it points inside the context root on the
host. Wildcards are Go's filepath.Match per component. Ignored files are invisible, as if absent.

`checksum` is the cache key of the files a step reads: names, types, modes (setuid too), the owner they will
have in the image, link targets and contents; never times. File digests are memoized per (path, dev, inode,
size, mtime, ctime) in a `FileDigests` a caller may share between contexts, so an unchanged tree is read once.
"""
from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from pinnace.builder.ignore import IgnoreRules, clean, glob_regex, has_wildcards
from pinnace.errors import InvalidArgument, NotFound
from pinnace.storage.rootfs_paths import translated_errors

_MAX_LINKS = 40


@dataclass(frozen=True)
class Source:
    """One COPY/ADD source after wildcard expansion."""

    arg: str  # the source as written in the instruction
    path: str  # as matched, relative to the context root ("" is the root): the destination name is its basename
    real: str  # `path` with its symlinks followed (the last one too), relative to the context root
    host_path: str  # where `real` is on the host
    is_dir: bool

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]


@dataclass(frozen=True)
class Entry:
    """One visible entry of a source: `path` is relative to the source ("" for the source itself)."""

    path: str
    host_path: str
    stat: os.stat_result


class FileDigests:
    """sha256 of regular files, memoized by identity and change markers (not by content: that is the point)."""

    def __init__(self) -> None:
        self._memo: dict[tuple, str] = {}

    def file(self, host_path: str, st: os.stat_result) -> str:
        key = (host_path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        digest = self._memo.get(key)
        if digest is None:
            fd = os.open(host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb", buffering=0) as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            self._memo[key] = digest
        return digest


class ContextFiles:
    """COPY/ADD's view of the directory `root` under `rules` (a mixin: BuildContext has the attributes)."""

    root: str
    rules: IgnoreRules
    digests: FileDigests

    def ignored(self, path: str, is_dir: bool) -> bool:
        return self.rules.ignored(path, is_dir)

    # -- COPY/ADD sources ---------------------------------------------------------------------------------
    def resolve_sources(self, patterns: list[str], instruction: str = "COPY") -> list[Source]:
        """The sources of one COPY/ADD, wildcards expanded (sorted per pattern). Errors: InvalidArgument for
        a path outside the context, NotFound for a missing (or ignored) plain source, InvalidArgument when
        nothing at all matched."""
        out: list[Source] = []
        with translated_errors(f"{instruction} failed"):
            for arg in patterns:
                rel = clean(arg.lstrip("/"))
                if rel == ".." or rel.startswith("../"):
                    raise InvalidArgument(f"{instruction} failed: forbidden path outside the build context: {arg}")
                rel = "" if rel == "." else rel
                if not has_wildcards(rel):
                    src = self._source(arg, rel, instruction)
                    if src is None:
                        raise NotFound(f"{instruction} failed: file not found in build context or excluded by "
                                       f".dockerignore: {arg}: no such file or directory")
                    out.append(src)
                    continue
                for cand in self._expand(rel, arg, instruction):
                    if (src := self._source(arg, cand, instruction)) is not None:
                        out.append(src)
        if not out:
            raise InvalidArgument(f"{instruction} failed: no source files were specified")
        return out

    def _expand(self, rel: str, arg: str, instruction: str) -> list[str]:
        """Paths matching the glob `rel`, one Go filepath.Match per component, ignored entries left out."""
        prefixes = [""]
        comps = rel.split("/")
        for i, comp in enumerate(comps):
            found: list[str] = []
            literal = not has_wildcards(comp) and "\\" not in comp
            rx = None if literal else glob_regex(comp)
            for prefix in prefixes:
                if literal:
                    found.append(f"{prefix}/{comp}" if prefix else comp)
                    continue
                try:
                    with os.scandir(os.path.join(self.root, prefix)) as it:
                        names = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for name, is_dir in names:
                    path = f"{prefix}/{name}" if prefix else name
                    if rx.fullmatch(name) and not self.rules.ignored(path, is_dir):
                        found.append(path)
            if i == len(comps) - 1:
                return found
            # the next component lists these directories. A literal one is part of the argument: its
            # symlinks are followed (BuildKit); a wildcard match is descended only when it is a real
            # directory, as the walkers of both Docker builders do
            prefixes = []
            for path in found:
                real = self._follow(path, arg, instruction) if literal else path
                if real is not None and os.path.isdir(host := os.path.join(self.root, real)) \
                        and (literal or not os.path.islink(host)):
                    prefixes.append(real)
        return []

    def _follow(self, path: str, arg: str, instruction: str) -> str | None:
        """`path` (clean, relative) with every symlink applied, None when something on the way is missing
        or ignored; InvalidArgument when it leads out of the context."""
        pending = path.split("/")[::-1] if path else []
        parts: list[str] = []
        links, via = 0, ""
        while pending:
            comp = pending.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if not parts:
                    raise InvalidArgument(f"{instruction} failed: forbidden path outside the build context: {arg}{via}")
                parts.pop()
                continue
            here = "/".join(parts + [comp])
            host = os.path.join(self.root, here)
            try:
                st = os.lstat(host)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not stat.S_ISLNK(st.st_mode):
                parts.append(comp)
                continue
            if self.rules.ignored(here, False):
                return None
            links += 1
            if links > _MAX_LINKS:
                raise InvalidArgument(f"{instruction} failed: too many levels of symbolic links: {arg}")
            target = os.readlink(host)
            via = f" ({here} is a symlink to {target})"
            if target.startswith("/"):
                target = clean(target)
                if target != self.root and not target.startswith(self.root.rstrip("/") + "/"):
                    raise InvalidArgument(f"{instruction} failed: forbidden path outside the build context: {arg}{via}")
                parts, target = [], target[len(self.root):]
            pending.extend(target.split("/")[::-1])
        return "/".join(parts)

    def _source(self, arg: str, path: str, instruction: str) -> Source | None:
        real = self._follow(path, arg, instruction)
        if real is None:
            return None
        host = os.path.join(self.root, real) if real else self.root
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if real and self.rules.ignored(real, is_dir):
            return None
        if real and is_dir and self.rules.excluded(real) and next(self._below(real, host), None) is None:
            return None  # excluded, walked for exceptions, but nothing inside came back
        return Source(arg, path, real, host, is_dir)

    # -- walking and hashing ------------------------------------------------------------------------------
    def walk(self, source: Source) -> Iterator[Entry]:
        """The source itself (path "") and, for a directory, every visible entry below it: sorted, parents
        first, no symlink followed. Directories excluded but walked for exceptions come only with content."""
        yield Entry("", source.host_path, os.lstat(source.host_path))
        if source.is_dir:
            cut = len(source.real) + 1 if source.real else 0
            for ctx_path, host, st in self._below(source.real, source.host_path):
                yield Entry(ctx_path[cut:], host, st)

    def _below(self, rel: str, host: str) -> Iterator[tuple[str, str, os.stat_result]]:
        try:
            with os.scandir(host) as it:
                names = sorted(e.name for e in it)
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            path, child = (f"{rel}/{name}" if rel else name), os.path.join(host, name)
            try:
                st = os.lstat(child)
            except FileNotFoundError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if self.rules and self.rules.ignored(path, is_dir):
                continue
            if not is_dir:
                yield path, child, st
            elif self.rules and self.rules.excluded(path):
                inner = self._below(path, child)
                first = next(inner, None)
                if first is not None:
                    yield path, child, st
                    yield first
                    yield from inner
            else:
                yield path, child, st
                yield from self._below(path, child)

    def checksum(self, sources: list[Source], chown: tuple[int, int] | None = None) -> str:
        """sha256 over what a COPY/ADD of `sources` reads; `chown` is the (uid, gid) the files get in the
        image (None: 0:0, as Docker's COPY without --chown). Equal trees give equal sums whatever their
        mtimes or owners on the host."""
        uid, gid = chown if chown is not None else (0, 0)
        h = hashlib.sha256(f"pinnace-context-v1\0{uid}:{gid}\0".encode())
        with translated_errors("cannot read the build context"):
            for src in sources:
                h.update(f"S\0{src.name}\0".encode("utf-8", "surrogateescape"))
                for e in self.walk(src):
                    mode = e.stat.st_mode
                    if stat.S_ISREG(mode):
                        kind, data = "f", self.digests.file(e.host_path, e.stat)
                    elif stat.S_ISDIR(mode):
                        kind, data = "d", ""
                    elif stat.S_ISLNK(mode):
                        kind, data = "l", os.readlink(e.host_path)
                    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                        kind = "c" if stat.S_ISCHR(mode) else "b"
                        data = f"{os.major(e.stat.st_rdev)},{os.minor(e.stat.st_rdev)}"
                    elif stat.S_ISFIFO(mode):
                        kind, data = "p", ""
                    else:
                        continue  # sockets are never copied
                    # no field can hold a NUL, so NUL-terminated fields cannot run into each other
                    h.update(f"{kind}\0{e.path}\0{stat.S_IMODE(mode):o}\0{data}\0".encode("utf-8", "surrogateescape"))
        return "sha256:" + h.hexdigest()
