"""Container records: the immutable part of each container in SQLite, its directory under the store.

The database gives what must be atomic across concurrent CLIs — unique names, the image and volumes a
container uses — and the creation-time record (JSON: command, options, mounts). What changes while a
container lives (status, pids, exit code) is `state.json` in the container's directory
(runtime/ctrstate.py), written by the CLI and the supervisor, which never loads SQLite while it waits.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from pinnace.errors import Conflict, InvalidArgument, NotFound
from pinnace.storage.db import Database
from pinnace.storage.layout import StoreLayout

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")  # Docker's rule
_ADJECTIVES = ("agile", "bold", "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen",
               "lucid", "merry", "nimble", "proud", "quick", "quiet", "sharp", "steady", "sunny", "swift", "tidy",
               "vivid", "witty", "zen")
_NOUNS = ("albatross", "anchor", "beacon", "brig", "buoy", "compass", "cutter", "dinghy", "harbor", "keel",
          "ketch", "lantern", "mast", "pinnace", "rudder", "schooner", "sextant", "sloop", "tide", "yawl")


@dataclass(frozen=True)
class ContainerRecord:
    id: str
    name: str
    image_id: str
    created: float
    record: dict       # what `create` decided: image name, command, options, mounts, volumes

    def dir(self, layout: StoreLayout) -> Path:
        return layout.containers_dir / self.id


class ContainerStore:
    def __init__(self, layout: StoreLayout, db: Database):
        self.layout = layout
        self.db = db

    @staticmethod
    def check_name(name: str) -> None:
        if not _NAME.match(name) or len(name) > 253:
            raise InvalidArgument(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")

    def _free_name(self, c) -> str:  # noqa: ANN001 - sqlite3.Connection in a transaction
        while True:
            name = f"{random.choice(_ADJECTIVES)}_{random.choice(_NOUNS)}"
            if random.random() < 0.5 or c.execute("SELECT 1 FROM containers WHERE name=?", (name,)).fetchone():
                name = f"{name}_{random.randint(1, 999)}"
            if not c.execute("SELECT 1 FROM containers WHERE name=?", (name,)).fetchone():
                return name

    def add(self, cid: str, name: str | None, image_id: str, record: dict, volumes: list[str]) -> ContainerRecord:
        """Record a new container; its name is reserved atomically (two `run --name x` at once: one wins)."""
        if name is not None:
            self.check_name(name)
        created = time.time()
        with self.db.transaction() as c:
            if name is None:
                name = self._free_name(c)
            row = c.execute("SELECT id FROM containers WHERE name=?", (name,)).fetchone()
            if row:
                raise Conflict(f'the container name "{name}" is already in use by {row[0]}: remove (or rename) '
                               "that container to be able to reuse that name")
            record = {**record, "Name": name}
            c.execute("INSERT INTO containers (id, name, image_id) VALUES (?,?,?)", (cid, name, image_id))
            c.execute("INSERT INTO container_records VALUES (?,?,?)", (cid, created, json.dumps(record)))
            c.executemany("INSERT OR IGNORE INTO container_volumes VALUES (?,?)", [(cid, v) for v in volumes])
        return ContainerRecord(cid, name, image_id, created, record)

    def _from_row(self, row) -> ContainerRecord:  # noqa: ANN001
        return ContainerRecord(row["id"], row["name"], row["image_id"], row["created"], json.loads(row["record"]))

    _SELECT = ("SELECT c.id, c.name, c.image_id, r.created, r.record FROM containers c "
               "JOIN container_records r ON r.id = c.id")

    def get(self, text: str) -> ContainerRecord:
        """By full id, name, or unique id prefix (Docker's order)."""
        rows = self.db.query(self._SELECT + " WHERE c.id=? OR c.name=?", (text, text))
        if not rows and re.fullmatch(r"[0-9a-f]{1,63}", text):
            rows = self.db.query(self._SELECT + " WHERE c.id LIKE ?", (text + "%",))
            if len(rows) > 1:
                raise InvalidArgument(f"container id prefix {text} is ambiguous ({len(rows)} containers)")
        if not rows:
            raise NotFound(f"no such container {text}")
        by_id = [r for r in rows if r["id"] == text]
        return self._from_row(by_id[0] if by_id else rows[0])

    def list(self) -> list[ContainerRecord]:
        return [self._from_row(r) for r in self.db.query(self._SELECT + " ORDER BY r.created DESC")]

    def volumes(self, cid: str) -> list[str]:
        return [r[0] for r in self.db.query("SELECT volume FROM container_volumes WHERE container_id=?", (cid,))]

    def rename(self, cid: str, new: str) -> None:
        self.check_name(new)
        with self.db.transaction() as c:
            row = c.execute("SELECT id FROM containers WHERE name=?", (new,)).fetchone()
            if row:
                raise Conflict(f'the container name "{new}" is already in use by {row[0]}')
            c.execute("UPDATE containers SET name=? WHERE id=?", (new, cid))
            rec = json.loads(c.execute("SELECT record FROM container_records WHERE id=?", (cid,)).fetchone()[0])
            rec["Name"] = new
            c.execute("UPDATE container_records SET record=? WHERE id=?", (json.dumps(rec), cid))

    def forget(self, cid: str) -> None:
        """Drop the records (the directory goes after: a crash in between leaves an unlisted directory that
        `system check --repair` removes, never a record without its files)."""
        with self.db.transaction() as c:
            c.execute("DELETE FROM container_volumes WHERE container_id=?", (cid,))
            c.execute("DELETE FROM container_records WHERE id=?", (cid,))
            c.execute("DELETE FROM containers WHERE id=?", (cid,))


def new_container_id() -> str:
    return os.urandom(32).hex()
