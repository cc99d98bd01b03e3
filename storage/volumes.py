"""Named volumes (driver `local`): a directory per volume under the store, and its record.

A volume's `_data` directory is what containers mount; it belongs to the user namespace's root, so
files containers write there keep their in-container owners (issue 3 mounts them and copies image
content up into new volumes).
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

from pinnace.errors import Conflict, InvalidArgument, NotFound
from pinnace.storage.db import Database
from pinnace.storage.layers import remove_tree
from pinnace.storage.layout import StoreLayout

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # Docker's and Podman's rule


@dataclass(frozen=True)
class VolumeRecord:
    """A named volume as `volume inspect` shows it."""

    name: str
    driver: str
    created: str
    labels: dict[str, str]
    options: dict[str, str]
    mountpoint: str


class VolumeStore:
    def __init__(self, layout: StoreLayout, db: Database):
        self.layout = layout
        self.db = db

    def data_dir(self, name: str) -> str:
        return str(self.layout.volumes_dir / name / "_data")

    def _record(self, row) -> VolumeRecord:  # noqa: ANN001 - sqlite3.Row
        return VolumeRecord(row["name"], row["driver"], row["created"], json.loads(row["labels"]),
                            json.loads(row["options"]), self.data_dir(row["name"]))

    def create(self, name: str | None, *, labels: dict[str, str], options: dict[str, str],
               driver: str = "local") -> VolumeRecord:
        if driver != "local":
            raise InvalidArgument(f"unknown volume driver {driver!r} (only 'local')")
        if options:
            raise InvalidArgument(f"volume options are not supported yet: {', '.join(sorted(options))}")
        name = name or os.urandom(32).hex()  # an anonymous volume: 64 hex characters, as Docker names them
        if not _NAME.match(name):
            raise InvalidArgument(f"invalid volume name {name!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]+ (2 or more characters)")
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.db.transaction() as c:
            if c.execute("SELECT 1 FROM volumes WHERE name=?", (name,)).fetchone():
                raise Conflict(f"volume with name {name} already exists")
            c.execute("INSERT INTO volumes VALUES (?,?,?,?,?)",
                      (name, driver, created, json.dumps(labels, sort_keys=True), json.dumps(options)))
            os.makedirs(self.data_dir(name), mode=0o755, exist_ok=True)  # inside the transaction: no record without its directory
        return self.get(name)

    def get(self, name: str) -> VolumeRecord:
        rows = self.db.query("SELECT * FROM volumes WHERE name=?", (name,))
        if not rows:
            raise NotFound(f"no such volume {name}")
        return self._record(rows[0])

    def list(self) -> list[VolumeRecord]:
        return [self._record(r) for r in self.db.query("SELECT * FROM volumes ORDER BY name")]

    def users(self, name: str) -> list[str]:
        return [r[0] for r in self.db.query(
            "SELECT c.name FROM container_volumes v JOIN containers c ON c.id = v.container_id WHERE v.volume=?",
            (name,))]

    def remove(self, name: str, *, force: bool = False) -> None:
        self.get(name)
        users = self.users(name)
        if users and not force:
            raise Conflict(f"volume {name} is being used by container(s) {', '.join(users)}: "
                           "remove them first or use --force")
        with self.db.transaction() as c:  # forget first: a crash leaves an unlisted directory, never a hole
            c.execute("DELETE FROM volumes WHERE name=?", (name,))
            c.execute("DELETE FROM container_volumes WHERE volume=?", (name,))
        remove_tree(self.layout.volumes_dir / name)
