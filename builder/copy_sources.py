"""The sources of a COPY/ADD as builder/copier.py takes them (`CopyItem`): build-context sources
(`context_items`), paths inside another stage's or image's rootfs (`resolve_from_rootfs`, COPY --from) and
downloads (`fetch_url`, ADD http(s)://…).

`resolve_from_rootfs` follows the context's rules (builder/context_tree.py) inside a rootfs that is not ours:
a source path is resolved as if that rootfs were `/` (absolute symlinks restart at it, `..` stops there), so
a link can never lead a copy out of it; wildcards are Go's filepath.Match per component, and a wildcard match
is descended only when it is a real directory.

`fetch_url` is BuildKit's HTTP source as the Dockerfile frontend uses it: the file is named after the last
element of the URL's path ("__unnamed__" when there is none; Content-Disposition is not consulted), mode
0600, mtime from Last-Modified when the server sends one; `--checksum=sha256:…` is checked before anything
is kept. HTTP(S)_PROXY / NO_PROXY from the environment are honoured; redirects are followed.
"""
from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import posixpath
import re
import stat
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import urllib3

from pinnace.builder.context_tree import ContextFiles, Entry, Source
from pinnace.builder.ignore import clean, glob_regex, has_wildcards
from pinnace.errors import DigestMismatch, InvalidArgument, NotFound, PinnaceError
from pinnace.storage.rootfs_paths import DIR_FLAGS, close_fd, open_dir, resolve_at, translated_errors

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CopyItem:
    """One source of a COPY/ADD, already resolved by the caller."""

    kind: str  # "path" (a host path: the build context, or another stage's/image's rootfs), "heredoc", "url"
    host_path: str | None  # "path"/"url": where the (symlink-resolved) source is on the host
    name: str  # the name it gets inside a destination directory
    is_dir: bool
    data: bytes | None = None  # "heredoc": the file's content
    url: str | None = None  # "url": where it came from (messages)
    keep_owner: bool = False  # keep the source's owners (COPY --from); else 0:0 unless --chown
    digest: str | None = None  # "url": sha256 of the download, "sha256:<hex>" (fetch_url sets it)


def context_items(ctx: ContextFiles, sources: list[Source]) -> tuple[list[CopyItem],
                                                                     Callable[[CopyItem], Iterable[Entry]]]:
    """CopyItems for `ctx.resolve_sources(...)` and the `walk` for copy_into that lists them with the
    context's ignore rules applied."""
    by_item: dict[CopyItem, Source] = {}
    items = []
    for src in sources:
        item = CopyItem("path", src.host_path, src.name, src.is_dir)
        by_item.setdefault(item, src)
        items.append(item)
    return items, lambda item: ctx.walk(by_item[item])


# -- COPY --from ----------------------------------------------------------------------------------------------
def _listing(root_fd: int, prefix: str) -> list[tuple[str, bool]]:
    """(name, is a real directory) of the directory `prefix` inside the root, symlinks resolved inside it."""
    parts, holder = resolve_at(root_fd, prefix + "/" if prefix else "", True)
    try:
        if holder < 0:
            return []
        fd = os.open(parts[-1], DIR_FLAGS, dir_fd=holder) if parts else os.dup(holder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    finally:
        close_fd(holder)
    try:
        with os.scandir(fd) as it:
            return sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    finally:
        os.close(fd)


def _expand(root_fd: int, rel: str) -> list[str]:
    prefixes = [""]
    comps = rel.split("/")
    for i, comp in enumerate(comps):
        literal = not has_wildcards(comp) and "\\" not in comp
        rx = None if literal else glob_regex(comp)
        found: list[tuple[str, bool]] = []
        for prefix in prefixes:
            if literal:  # part of the argument: its symlinks are followed when the next level is listed
                found.append((f"{prefix}/{comp}" if prefix else comp, True))
                continue
            found += [(f"{prefix}/{name}" if prefix else name, is_dir)
                      for name, is_dir in _listing(root_fd, prefix) if rx.fullmatch(name)]
        if i == len(comps) - 1:
            return [path for path, _ in found]
        prefixes = [path for path, descend in found if descend]
    return []


def _item(root_fd: int, rootfs: str, path: str) -> CopyItem | None:
    parts, holder = resolve_at(root_fd, path, True)
    try:
        if holder < 0:
            return None
        st = os.stat(parts[-1] if parts else ".", dir_fd=holder, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    finally:
        close_fd(holder)
    return CopyItem("path", os.path.join(rootfs, *parts), path.rpartition("/")[2], stat.S_ISDIR(st.st_mode),
                    keep_owner=True)


def resolve_from_rootfs(rootfs: str, patterns: list[str], *, instruction: str = "COPY",
                        where: str = "the --from source") -> list[CopyItem]:
    """The sources of `COPY --from` inside `rootfs` (see the module doc), wildcards expanded and sorted per
    pattern; they keep their owners. NotFound for a missing plain path, InvalidArgument when nothing matched."""
    items: list[CopyItem] = []
    with open_dir(rootfs, where) as root_fd, translated_errors(f"{instruction} failed"):
        for arg in patterns:
            rel = clean("/" + arg).lstrip("/")  # `..` cannot climb above that root
            if not has_wildcards(rel):
                item = _item(root_fd, rootfs, rel)
                if item is None:
                    raise NotFound(f"{instruction} failed: {arg}: no such file or directory in {where}")
                items.append(item)
                continue
            items += [item for cand in _expand(root_fd, rel) if (item := _item(root_fd, rootfs, cand))]
    if not items:
        raise InvalidArgument(f"{instruction} failed: no source files were specified")
    return items


# -- ADD http(s)://… ---------------------------------------------------------------------------------------------
def _pool(url: str, timeout: float) -> urllib3.PoolManager:
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme)
    limits = urllib3.Timeout(connect=min(timeout, 30.0), read=timeout)
    if proxy and not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies):
        return urllib3.ProxyManager(proxy, timeout=limits, retries=False)
    return urllib3.PoolManager(timeout=limits, retries=False)


def url_file_name(url: str) -> str:
    """BuildKit's name for a download: the URL path's last element, "__unnamed__" when it has none."""
    base = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path).rstrip("/"))
    return base if base not in ("", ".", "..") else "__unnamed__"


def _http_time(value: str | None) -> float | None:
    """An HTTP date as a timestamp; None when absent or unparsable (the download's own time is kept)."""
    try:
        when = email.utils.parsedate_to_datetime(value) if value else None
    except (ValueError, TypeError):
        return None
    return when.timestamp() if when is not None and when.tzinfo is not None else None


def fetch_url(url: str, dest_dir: str, *, checksum: str | None = None, timeout: float = 300.0) -> CopyItem:
    """Download `url` into a new file below `dest_dir` (see the module doc). The caller removes the file."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise InvalidArgument(f"ADD failed: unsupported URL {url}: only http and https are supported")
    if checksum is not None and not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise InvalidArgument(f"ADD --checksum={checksum}: expected sha256:<64 hex digits>")
    try:
        resp = _pool(url, timeout).request("GET", url, preload_content=False, redirect=True,
                                           retries=urllib3.Retry(total=10, connect=2, read=0, status=0,
                                                                 redirect=10, raise_on_redirect=True))
    except urllib3.exceptions.HTTPError as e:
        reason = getattr(e, "reason", None) or e
        raise PinnaceError(f"ADD failed: cannot download {url}: {reason}") from None
    path = None
    try:
        if resp.status >= 400:
            error = NotFound if resp.status in (404, 410) else InvalidArgument
            raise error(f"ADD failed: cannot download {url}: HTTP {resp.status} {resp.reason or ''}".rstrip())
        fd, path = tempfile.mkstemp(prefix="add-", dir=dest_dir)
        digest = hashlib.sha256()
        with open(fd, "wb") as f:
            for chunk in resp.stream(_CHUNK):
                digest.update(chunk)
                f.write(chunk)
            os.fchmod(f.fileno(), 0o600)
        got = "sha256:" + digest.hexdigest()
        if checksum is not None and got != checksum:
            raise DigestMismatch(f"ADD failed: {url} has digest {got}, expected {checksum}")
        when = _http_time(resp.headers.get("Last-Modified"))
        if when is not None:
            os.utime(path, (when, when))
        item = CopyItem("url", path, url_file_name(url), False, url=url, digest=got)
        path = None
        return item
    except urllib3.exceptions.HTTPError as e:
        raise PinnaceError(f"ADD failed: download of {url} broke off: {e}") from None
    except OSError as e:
        raise PinnaceError(f"ADD failed: cannot store the download of {url}: {e.strerror or e}") from None
    finally:
        resp.release_conn()
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
