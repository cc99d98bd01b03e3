"""Listing images: the one implementation behind `images`, for the typer CLI, the fast path and the API.

Deliberately light (os and sqlite3 only, plain slotted records instead of dataclasses): `pinnace images`
runs it on every call and must answer faster than `podman images` (~20 ms).
"""
from __future__ import annotations

import os
import sqlite3
import time

from pinnace.errors import InvalidArgument, StorageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

FILTER_KEYS = ("reference", "dangling", "label", "id", "digest")


class ImageSummary:
    """One row of the image list (one per name; a nameless image gets one row)."""

    __slots__ = ("id", "repository", "tag", "digest", "created", "size", "names", "repo_digests", "labels",
                 "containers")

    def __init__(self, id: str, repository: str, tag: str, digest: str, created: str | None, size: int,  # noqa: A002
                 names: tuple[str, ...], repo_digests: tuple[str, ...], labels: dict[str, str], containers: int):
        self.id, self.repository, self.tag, self.digest = id, repository, tag, digest
        self.created, self.size, self.names, self.repo_digests = created, size, names, repo_digests
        self.labels, self.containers = labels, containers

    def __repr__(self) -> str:
        return f"ImageSummary({self.repository}:{self.tag} {self.id[7:19]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageSummary) and all(getattr(self, a) == getattr(other, a) for a in self.__slots__)


def split_name(name: str) -> tuple[str, str]:
    """'docker.io/library/busybox:latest' → ('docker.io/library/busybox', 'latest')."""
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "<none>"
    return repo, tag


def _familiar(name: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def reference_matches(pattern: str, name: str) -> bool:
    """Docker's reference filter: the pattern may match the full name, its repository, or the short forms."""
    import fnmatch
    repo, _ = split_name(name)
    return any(fnmatch.fnmatchcase(c, pattern) for c in (name, repo, _familiar(name), _familiar(repo)))


def parse_filters(filters: tuple[str, ...] | list[str], keys: tuple[str, ...] = FILTER_KEYS,
                  what: str = "image") -> list[tuple[str, str]]:
    """`--filter KEY=VALUE` arguments as (key, value) pairs; an unknown key is an error naming the known ones."""
    parsed = []
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in keys:
            raise InvalidArgument(f"invalid {what} filter {f!r} (supported: {'=, '.join(keys)}=)")
        parsed.append((key, value))
    return parsed


def image_labels(root: str, image_id: str) -> dict[str, str]:
    import json
    try:
        with open(os.path.join(root, "blobs", "sha256", image_id[7:]), "rb") as f:
            return (json.load(f).get("config") or {}).get("Labels") or {}
    except (OSError, ValueError):
        return {}


def _matches(key: str, value: str, image_id: str, names: list[str], manifest_digest: str, digests: list[str],
             labels: dict[str, str]) -> bool:
    if key == "reference":
        return any(reference_matches(value, n) for n in names)
    if key == "dangling":
        # like Podman: an image pulled by digest has a name (repo@digest), so it is not dangling
        return (not names and not digests) == (value.lower() in ("true", "1"))
    if key == "id":
        return image_id[7:].startswith(value.removeprefix("sha256:"))
    if key == "digest":
        return manifest_digest == value or any(d.endswith("@" + value) for d in digests)
    k, sep, v = value.partition("=")
    return k in labels and (not sep or labels[k] == v)


def read_store(root: str, read: "Callable[[sqlite3.Connection], list]") -> list:
    """`read(conn)` on a read-only connection to the store's database (the light listings' way in: no
    Database class); [] for a store that does not exist yet or has no such table yet."""
    db_path = os.path.join(root, "state.db")
    if not os.path.exists(db_path):
        return []
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=60)
            try:
                conn.execute("PRAGMA busy_timeout=60000")
                return read(conn)
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            # a writer's close (WAL checkpoint and delete) can answer SQLITE_BUSY without the busy handler:
            # a window of milliseconds, so retry (as storage/db.Database does)
            text = str(exc)
            if ("locked" in text or "busy" in text) and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            if "no such table" in text:
                return []  # created but never written to, or written by an older pinnace
            raise StorageError(f"cannot read {db_path}: {exc}") from None
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read {db_path}: {exc}") from None


def list_images(root: str, filters: tuple[str, ...] | list[str] = ()) -> list[ImageSummary]:
    """Rows for `images`, newest first. `root` is the store root; a store that does not exist is empty."""
    parsed = parse_filters(filters)
    names: dict[str, list[str]] = {}
    digests: dict[str, list[str]] = {}
    users: dict[str, int] = {}

    def read(conn: sqlite3.Connection) -> list:
        for name, iid in conn.execute("SELECT name, image_id FROM image_names ORDER BY name"):
            names.setdefault(iid, []).append(name)
        for rd, iid in conn.execute("SELECT repo_digest, image_id FROM image_digests ORDER BY repo_digest"):
            digests.setdefault(iid, []).append(rd)
        for iid, n in conn.execute("SELECT image_id, COUNT(*) FROM containers GROUP BY image_id"):
            users[iid] = n
        return conn.execute("SELECT id, manifest_digest, created, size FROM images ORDER BY added DESC").fetchall()
    images = read_store(root, read)
    need_labels = any(k == "label" for k, _ in parsed)
    patterns = [v for k, v in parsed if k == "reference"]
    rows: list[ImageSummary] = []
    for iid, manifest_digest, created, size in images:
        inames, idigests = names.get(iid, []), digests.get(iid, [])
        labels = image_labels(root, iid) if need_labels else {}
        if not all(_matches(k, v, iid, inames, manifest_digest, idigests, labels) for k, v in parsed):
            continue
        common = (manifest_digest, created, size, tuple(inames), tuple(idigests), labels, users.get(iid, 0))
        # like Docker, a reference filter also picks which of an image's names are listed
        shown = [n for n in inames if all(reference_matches(p, n) for p in patterns)]
        if not inames:
            # like Podman: an untagged image still shows the repository it came from
            repo = idigests[0].split("@")[0] if idigests else "<none>"
            rows.append(ImageSummary(iid, repo, "<none>", *common))
        for name in shown:
            rows.append(ImageSummary(iid, *split_name(name), *common))
    return rows
