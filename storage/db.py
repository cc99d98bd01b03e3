"""The metadata database (SQLite in WAL mode): images, their names and digests, layers, blobs.

WAL lets readers (`images`, `ps`) run while a writer commits; every write is one short
`BEGIN IMMEDIATE` transaction, so concurrent CLI processes serialise on the database, never corrupt it.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Iterator

from pinnace.errors import StorageError

SCHEMA_VERSION = 3  # 2: volumes, 3: container records (migrations are additive: the script only creates what is missing)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,               -- config digest (Docker's image ID)
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    created TEXT,                      -- from the config, RFC 3339
    architecture TEXT, os TEXT, variant TEXT,
    size INTEGER NOT NULL,             -- sum of uncompressed layer sizes
    added REAL NOT NULL                -- when it arrived in this store (unix time)
);
CREATE TABLE IF NOT EXISTS image_names (
    name TEXT PRIMARY KEY,             -- canonical 'registry/repo:tag'
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS image_digests (
    repo_digest TEXT NOT NULL,         -- 'registry/repo@sha256:…' (manifest or index digest)
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (repo_digest, image_id)
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    diff_id TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE TABLE IF NOT EXISTS image_blobs (    -- every blob an image needs for save/push (manifest, config, index)
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    PRIMARY KEY (image_id, digest)
);
CREATE TABLE IF NOT EXISTS layers (
    diff_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,             -- bytes of the uncompressed tar
    files INTEGER NOT NULL,
    lost_owners INTEGER NOT NULL DEFAULT 0,
    skipped_devices INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY,
    driver TEXT NOT NULL,
    created TEXT NOT NULL,              -- RFC 3339
    labels TEXT NOT NULL,               -- JSON object
    options TEXT NOT NULL               -- JSON object
);
CREATE TABLE IF NOT EXISTS container_volumes (  -- filled by the container engine (issue 3); rm/prune check it
    container_id TEXT NOT NULL,
    volume TEXT NOT NULL,
    PRIMARY KEY (container_id, volume)
);
CREATE TABLE IF NOT EXISTS containers (     -- filled by the container engine (issue 3); images check it
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    image_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS container_records (  -- the immutable part of a container (JSON); state lives in state.json
    id TEXT PRIMARY KEY REFERENCES containers(id) ON DELETE CASCADE,
    created REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS image_layers_diff ON image_layers(diff_id);
CREATE INDEX IF NOT EXISTS image_blobs_digest ON image_blobs(digest);
CREATE INDEX IF NOT EXISTS image_names_image ON image_names(image_id);
"""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


class Database:
    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = path
        # One connection serves every thread of a command (parallel layer downloads record their layers):
        # a connection is not safe for concurrent use, so each statement and transaction holds this lock.
        self._lock = threading.RLock()
        # Opening can fail with SQLITE_BUSY without the busy handler ever running: while the last
        # connection of another process checkpoints and deletes the WAL on close, or while a new database
        # is switched to WAL. Those windows are milliseconds long, so the open is retried for a while.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.conn = self._connect(path, readonly)
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise StorageError(f"cannot open database {path}: {exc}") from None
                time.sleep(0.02)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open database {path}: {exc}") from None

    def _connect(self, path: Path, readonly: bool) -> sqlite3.Connection:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60,
                                   isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                # WAL + NORMAL: commits do not fsync; the database stays consistent after any crash, and
                # at worst the last transactions before a power cut are lost (objects are fsynced apart)
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.row_factory = sqlite3.Row
            if not readonly:
                self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StorageError(f"database {self.path} was written by a newer pinnace (schema {version})")
        # One script in one IMMEDIATE transaction: concurrent first runs serialise, and CREATE IF NOT EXISTS
        # makes the loser's run a no-op.
        conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA};PRAGMA user_version={SCHEMA_VERSION};COMMIT;")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; IMMEDIATE takes the write lock up front, so two writers never deadlock."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"database {self.path} is busy or broken: {exc}") from None
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        try:
            with self._lock:
                return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"database {self.path}: {exc}") from None

    def close(self) -> None:
        self.conn.close()
