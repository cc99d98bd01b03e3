"""Image records: the config digest is the image ID; names (tags) and repo digests point at it."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from pinnace.storage.db import Database


@dataclass(frozen=True)
class LayerRef:
    diff_id: str
    blob_digest: str
    media_type: str


@dataclass(frozen=True)
class ImageRecord:
    id: str
    manifest_digest: str
    manifest_media_type: str
    created: str | None
    architecture: str | None
    os: str | None
    variant: str | None
    size: int
    layers: tuple[LayerRef, ...]
    names: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    added: float = field(default_factory=time.time)


class ImageStore:
    def __init__(self, db: Database):
        self.db = db

    # -- reading ---------------------------------------------------------------------------------
    def list(self) -> list[ImageRecord]:
        names, digests, layers = {}, {}, {}
        for r in self.db.query("SELECT name, image_id FROM image_names ORDER BY name"):
            names.setdefault(r["image_id"], []).append(r["name"])
        for r in self.db.query("SELECT repo_digest, image_id FROM image_digests ORDER BY repo_digest"):
            digests.setdefault(r["image_id"], []).append(r["repo_digest"])
        for r in self.db.query("SELECT * FROM image_layers ORDER BY image_id, position"):
            layers.setdefault(r["image_id"], []).append(LayerRef(r["diff_id"], r["blob_digest"], r["media_type"]))
        return [_record(r, names, digests, layers)
                for r in self.db.query("SELECT * FROM images ORDER BY added DESC")]

    def get(self, image_id: str) -> ImageRecord | None:
        rows = self.db.query("SELECT * FROM images WHERE id=?", (image_id,))
        if not rows:
            return None
        names = {image_id: [r[0] for r in self.db.query(
            "SELECT name FROM image_names WHERE image_id=? ORDER BY name", (image_id,))]}
        digests = {image_id: [r[0] for r in self.db.query(
            "SELECT repo_digest FROM image_digests WHERE image_id=? ORDER BY repo_digest", (image_id,))]}
        layers = {image_id: [LayerRef(r["diff_id"], r["blob_digest"], r["media_type"]) for r in self.db.query(
            "SELECT * FROM image_layers WHERE image_id=? ORDER BY position", (image_id,))]}
        return _record(rows[0], names, digests, layers)

    def id_by_name(self, name: str) -> str | None:
        rows = self.db.query("SELECT image_id FROM image_names WHERE name=?", (name,))
        return rows[0][0] if rows else None

    def id_by_repo_digest(self, repo_digest: str) -> str | None:
        rows = self.db.query("SELECT image_id FROM image_digests WHERE repo_digest=?", (repo_digest,))
        return rows[0][0] if rows else None

    def ids_by_digest(self, digest: str) -> list[str]:
        """Images whose manifest (or a recorded index) has this digest, in any repository."""
        rows = self.db.query("SELECT DISTINCT image_id FROM image_digests WHERE repo_digest LIKE ?", (f"%@{digest}",))
        rows += self.db.query("SELECT id FROM images WHERE manifest_digest=?", (digest,))
        return sorted({r[0] for r in rows})

    def ids_with_prefix(self, prefix: str) -> list[str]:
        return [r[0] for r in self.db.query("SELECT id FROM images WHERE id LIKE ?", (f"sha256:{prefix}%",))]

    def users(self, image_id: str) -> list[str]:
        """Names of containers created from the image."""
        return [r[0] for r in self.db.query("SELECT name FROM containers WHERE image_id=?", (image_id,))]

    def referenced_layers(self) -> set[str]:
        return {r[0] for r in self.db.query("SELECT DISTINCT diff_id FROM image_layers")}

    def referenced_blobs(self) -> set[str]:
        rows = self.db.query("SELECT digest FROM image_blobs UNION SELECT blob_digest FROM image_layers")
        return {r[0] for r in rows}

    def blobs_of(self, image_id: str) -> list[str]:
        return [r[0] for r in self.db.query("SELECT digest FROM image_blobs WHERE image_id=?", (image_id,))]

    # -- writing ---------------------------------------------------------------------------------
    def add(self, rec: ImageRecord, blobs: list[str]) -> None:
        """Record a complete image (all layers and blobs already in the store) in one transaction.
        Names move to this image from whatever image held them before (as `docker tag` does)."""
        with self.db.transaction() as c:
            c.execute("INSERT OR IGNORE INTO images VALUES (?,?,?,?,?,?,?,?,?)",
                      (rec.id, rec.manifest_digest, rec.manifest_media_type, rec.created, rec.architecture,
                       rec.os, rec.variant, rec.size, rec.added))
            if c.execute("SELECT COUNT(*) FROM image_layers WHERE image_id=?", (rec.id,)).fetchone()[0] == 0:
                c.executemany("INSERT INTO image_layers VALUES (?,?,?,?,?)",
                              [(rec.id, i, l.diff_id, l.blob_digest, l.media_type) for i, l in enumerate(rec.layers)])
            c.executemany("INSERT OR IGNORE INTO image_blobs VALUES (?,?)", [(rec.id, d) for d in blobs])
            c.executemany("INSERT OR REPLACE INTO image_names VALUES (?,?)", [(n, rec.id) for n in rec.names])
            c.executemany("INSERT OR IGNORE INTO image_digests VALUES (?,?)", [(d, rec.id) for d in rec.digests])

    def add_name(self, image_id: str, name: str) -> None:
        with self.db.transaction() as c:
            c.execute("INSERT OR REPLACE INTO image_names VALUES (?,?)", (name, image_id))

    def remove_name(self, name: str) -> bool:
        with self.db.transaction() as c:
            return c.execute("DELETE FROM image_names WHERE name=?", (name,)).rowcount > 0

    def remove_names(self, image_id: str) -> list[str]:
        """Remove every name, repo digests included (as `podman untag` does): the image becomes dangling."""
        with self.db.transaction() as c:
            names = [r[0] for r in c.execute("SELECT name FROM image_names WHERE image_id=?", (image_id,))]
            c.execute("DELETE FROM image_names WHERE image_id=?", (image_id,))
            c.execute("DELETE FROM image_digests WHERE image_id=?", (image_id,))
            return names

    def delete(self, image_id: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM images WHERE id=?", (image_id,))


def _record(r, names: dict, digests: dict, layers: dict) -> ImageRecord:  # noqa: ANN001 - sqlite3.Row
    iid = r["id"]
    return ImageRecord(
        id=iid, manifest_digest=r["manifest_digest"], manifest_media_type=r["manifest_media_type"],
        created=r["created"], architecture=r["architecture"], os=r["os"], variant=r["variant"], size=r["size"],
        layers=tuple(layers.get(iid, ())), names=tuple(names.get(iid, ())), digests=tuple(digests.get(iid, ())),
        added=r["added"])
