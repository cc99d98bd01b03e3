"""The build context: its files, the Dockerfile and the ignore rules (`open_context`).

Sources (Docker's `build PATH | -`, plus Podman's local archives): a directory is used in place; a tar file
(plain, gzip, zstd, bzip2, xz; found by its magic) and a tar on stdin are extracted into a private temp dir
by storage/tree_copy, which refuses `..`, absolute names and writing through symlinks; anything else on stdin
is a Dockerfile and the build has no context (`docker build - < Dockerfile`).

The Dockerfile: `-f -` reads stdin; a relative `-f` is looked up from the working directory first (Docker)
and then in the context (Podman); an absolute one may lie outside the context. Without `-f`: `Dockerfile`,
then `Containerfile`. The ignore file: `<dockerfile>.dockerignore` next to the Dockerfile (BuildKit's
per-Dockerfile file), else `.containerignore` (Podman) or `.dockerignore` at the context root. The Dockerfile
and the ignore file are read whatever the rules say; COPY/ADD only see what the rules let through.
What COPY/ADD see (sources, walks, checksums) is builder/context_tree.py.
"""
from __future__ import annotations

import bz2
import io
import logging
import lzma
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass, field
from typing import BinaryIO

from pinnace.builder.context_tree import ContextFiles, Entry, FileDigests, Source
from pinnace.builder.ignore import IgnoreRules
from pinnace.errors import InvalidArgument, NotFound, StorageError
from pinnace.storage.rootfs_paths import find_in_root, open_dir, translated_errors
from pinnace.storage.tree_copy import extract_tar

log = logging.getLogger("pinnace")

DEFAULT_NAMES = ("Dockerfile", "Containerfile")
__all__ = ["BuildContext", "Entry", "FileDigests", "Source", "open_context"]


@dataclass
class BuildContext(ContextFiles):
    """An open build context (see the module doc and ContextFiles); close() it."""

    root: str  # a directory: the context (the user's own for a directory context, else a private temp dir)
    dockerfile_text: str
    dockerfile_name: str  # for messages: as given with -f, the default name found, or "Dockerfile" for stdin
    dockerfile_path: str | None  # on the host; None when it came from stdin
    kind: str  # "dir", "tar", "stdin-tar", or "none" (a bare Dockerfile on stdin)
    rules: IgnoreRules = field(default_factory=IgnoreRules)
    ignore_file: str | None = None  # the ignore file applied, on the host
    digests: FileDigests = field(default_factory=FileDigests)
    temp_dirs: list[str] = field(default_factory=list)

    def __enter__(self) -> BuildContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temp dirs this context made (never the user's directory)."""
        while self.temp_dirs:
            _remove_tree(self.temp_dirs.pop())


# -- opening a context ------------------------------------------------------------------------------------
class _Rewound(io.RawIOBase):
    """`head` (already read while sniffing) followed by the rest of `stream`."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _read_head(stream: BinaryIO, n: int = 512) -> bytes:
    head = b""
    while len(head) < n and (more := stream.read(n - len(head))):
        head += more
    return head


def _archive_kind(head: bytes) -> str | None:
    """"compressed" (gzip or zstd: extract_tar's own), "bzip2", "xz", "tar" (plain), or None (not an
    archive: a Dockerfile)."""
    if head.startswith((b"\x1f\x8b", b"\x28\xb5\x2f\xfd")):
        return "compressed"
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if len(head) < 512:
        return None
    if head == bytes(512) or head[257:262] == b"ustar":
        return "tar"
    try:  # a pre-POSIX (v7) header has no magic: its checksum tells
        chk = int(head[148:156].replace(b"\0", b" ").strip() or b"-1", 8)
    except ValueError:
        return None
    return "tar" if chk == sum(head[:148]) + 8 * 32 + sum(head[156:512]) else None


def _extract(stream: BinaryIO, kind: str, dest: str, what: str) -> None:
    if kind == "bzip2":
        stream = bz2.BZ2File(stream)
    elif kind == "xz":
        stream = lzma.LZMAFile(stream)
    with open_dir(dest, "build context directory") as fd, translated_errors(f"cannot extract {what}"):
        try:
            extract_tar(stream, fd, "keep", "the build context")
        except (EOFError, lzma.LZMAError) as e:  # bz2/lzma complaints about the stream
            raise InvalidArgument(f"cannot extract {what}: {e}") from None


def _remove_tree(path: str) -> None:
    if os.geteuid() != 0:  # directories from an archive may be read-only or unreadable: open them up first
        os.chmod(path, 0o700)
        for top, dirs, _ in os.walk(path):
            for d in dirs:
                if not os.path.islink(p := os.path.join(top, d)):
                    os.chmod(p, 0o700)
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("could not remove the build context copy %s", path)


def _read_dockerfile(path: str, name: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise InvalidArgument(f"the Dockerfile {name} is a directory") from None
    except OSError as e:
        raise NotFound(f"cannot read the Dockerfile {name}: {e.strerror}") from None
    return _decode(data, name)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"{name} is not UTF-8 text (byte {e.start})") from None


def open_context(source: str, dockerfile: str | None = None, stdin: BinaryIO | None = None,
                 workdir: str | None = None, *, ignorefile: str | None = None, tmpdir: str | None = None,
                 digests: FileDigests | None = None) -> BuildContext:
    """The context of `build SOURCE` with `-f DOCKERFILE` (see the module doc). `stdin` is read for "-"
    (default: sys.stdin's bytes); `workdir` is what relative paths are relative to (default: the cwd);
    `ignorefile` replaces the ignore-file lookup (Podman's --ignorefile); temp dirs go below `tmpdir`.
    The caller closes the context (it removes the temp dirs)."""
    if source == "-" and dockerfile == "-":
        raise InvalidArgument("cannot read both the build context and the Dockerfile from stdin")
    if stdin is None and "-" in (source, dockerfile):
        stdin = sys.stdin.buffer
    temp: list[str] = []
    try:
        with translated_errors("cannot open the build context"):
            return _open(source, dockerfile, getattr(stdin, "buffer", stdin), workdir or os.getcwd(),
                         ignorefile, tmpdir, digests or FileDigests(), temp)
    except BaseException:
        for d in temp:
            _remove_tree(d)
        raise


def _open(source: str, dockerfile: str | None, stdin: BinaryIO | None, workdir: str, ignorefile: str | None,
          tmpdir: str | None, digests: FileDigests, temp: list[str]) -> BuildContext:
    text = None
    if source == "-":
        head = _read_head(stdin)
        kind = _archive_kind(head)
        root = tempfile.mkdtemp(prefix="pinnace-context-", dir=tmpdir)
        temp.append(root)
        if kind is None:  # a bare Dockerfile: no context at all (-f means nothing then, as in Docker)
            text, name, ctx_kind = _decode(head + stdin.read(), "Dockerfile"), "Dockerfile", "none"
        else:
            _extract(io.BufferedReader(_Rewound(head, stdin)), kind, root, "the build context from stdin")
            ctx_kind = "stdin-tar"
    elif "://" in source or source.startswith("git@"):
        raise InvalidArgument(f"remote build contexts are not supported: {source}")
    else:
        path = os.path.join(workdir, source)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"build context {source}: no such file or directory") from None
        if stat.S_ISDIR(st.st_mode):
            root, ctx_kind = os.path.realpath(path), "dir"
        else:
            with open(path, "rb") as f:
                kind = _archive_kind(_read_head(f))
                if kind is None:
                    raise InvalidArgument(f"build context {source} is neither a directory nor a tar archive")
                f.seek(0)
                root = tempfile.mkdtemp(prefix="pinnace-context-", dir=tmpdir)
                temp.append(root)
                _extract(f, kind, root, f"the build context {source}")
            ctx_kind = "tar"
    df_path: str | None = None
    if text is None:
        if dockerfile == "-":
            text, name = _decode(stdin.read(), "Dockerfile"), "Dockerfile"
        else:
            df_path, name = _find_dockerfile(root, dockerfile, workdir, ctx_kind, source)
            text = _read_dockerfile(df_path, name)
    rules, ignore_path = _ignore_rules(root, df_path, ignorefile, workdir, ctx_kind)
    return BuildContext(root, text, name, df_path, ctx_kind, rules, ignore_path, digests, temp)


def _lookup(root: str, name: str, ctx_kind: str) -> str | None:
    """Host path of `name` in the context. The user's own directory is used as it is (a Dockerfile may be
    a symlink to anywhere, as with Docker); in an extracted archive symlinks are followed only inside it."""
    if ctx_kind == "dir":
        return os.path.join(root, name)
    return find_in_root(root, name)


def _find_dockerfile(root: str, dockerfile: str | None, workdir: str, ctx_kind: str,
                     source: str) -> tuple[str, str]:
    """(host path, display name) of the Dockerfile."""
    if dockerfile is None:
        for name in DEFAULT_NAMES:
            found = _lookup(root, name, ctx_kind)
            if found is not None and os.path.isfile(found):
                return found, name
        raise NotFound(f"cannot find a Dockerfile or Containerfile in the build context {source} (use -f)")
    if os.path.isabs(dockerfile):
        if not os.path.exists(dockerfile):
            raise NotFound(f"cannot find the Dockerfile {dockerfile}: no such file or directory")
        return dockerfile, dockerfile
    if ctx_kind == "dir":  # Docker: relative to the working directory; Podman also tries the context
        candidate = os.path.join(workdir, dockerfile)
        if os.path.exists(candidate):
            return candidate, dockerfile
    found = _lookup(root, dockerfile, ctx_kind)
    if found is None or not os.path.exists(found):
        raise NotFound(f"cannot find the Dockerfile {dockerfile}: no such file or directory")
    return found, dockerfile


def _ignore_rules(root: str, df_path: str | None, ignorefile: str | None, workdir: str,
                  ctx_kind: str) -> tuple[IgnoreRules, str | None]:
    if ignorefile is not None:
        path = os.path.join(workdir, ignorefile)
        if not os.path.isfile(path):
            raise NotFound(f"ignore file {ignorefile}: no such file")
        candidates: list[str | None] = [path]
    else:
        candidates = []
        if df_path is not None:
            inside = os.path.relpath(df_path, root)
            candidates.append(df_path + ".dockerignore" if ctx_kind == "dir" or inside.startswith("../")
                              else _lookup(root, inside + ".dockerignore", ctx_kind))
        candidates += [_lookup(root, ".containerignore", ctx_kind), _lookup(root, ".dockerignore", ctx_kind)]
    for path in candidates:
        if path is not None and os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError as e:
                raise StorageError(f"cannot read the ignore file {path}: {e.strerror}") from None
            return IgnoreRules.parse(text, os.path.basename(path)), path
    return IgnoreRules(), None


