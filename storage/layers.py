"""Unpacked layers, one directory per diff-id, shared by every image that uses the layer.

A layer is filled in a partial directory under the layer's lock and renamed into place, then recorded
in the database: a reader that finds the row finds a complete directory. Leftovers of a killed process
are removed by the next process that takes the same lock.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from pinnace.storage.db import Database
from pinnace.storage.layout import StoreLayout
from pinnace.storage.locks import FileLock


@dataclass(frozen=True)
class LayerFill:
    """What filling a layer directory produced (from the tar apply)."""
    size: int               # bytes of the uncompressed tar
    files: int
    lost_owners: int = 0
    skipped_devices: int = 0


@dataclass(frozen=True)
class LayerRecord:
    diff_id: str
    size: int
    files: int
    lost_owners: int
    skipped_devices: int
    created: float


def remove_tree(path: Path) -> None:
    """rmtree that also copes with read-only directories inside images (e.g. 0555 /proc)."""
    def onerror(func, p, exc_info):  # noqa: ANN001 - shutil's callback signature
        parent = os.path.dirname(p)
        try:
            os.chmod(parent, 0o700)
            func(p)
        except FileNotFoundError:
            pass
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        try:
            import shutil  # here: shutil pulls in bz2 and lzma, ~5 ms the container cleanup path does not need
            shutil.rmtree(path, onerror=onerror)
        except RecursionError:
            # a hostile layer can nest deeper than Python's recursion limit; rm(1) walks iteratively
            import subprocess
            subprocess.run(["rm", "-rf", "--", str(path)], check=False)


class LayerStore:
    def __init__(self, layout: StoreLayout, db: Database):
        self.layout = layout
        self.db = db

    def lock(self, diff_id: str) -> FileLock:
        return FileLock(self.layout.lock_path("layer", diff_id.split(":", 1)[-1]))

    def get(self, diff_id: str) -> LayerRecord | None:
        rows = self.db.query("SELECT * FROM layers WHERE diff_id=?", (diff_id,))
        if not rows or not self.layout.layer_path(diff_id).is_dir():
            return None
        return _record(rows[0])

    def all(self) -> list[LayerRecord]:
        return [_record(r) for r in self.db.query("SELECT * FROM layers")]

    def create(self, diff_id: str, fill: Callable[[Path], LayerFill]) -> LayerRecord:
        """Fill and publish a layer. The caller holds `lock(diff_id)`."""
        final = self.layout.layer_path(diff_id)
        self.clean_partials(diff_id)
        tmp = self.layout.partial_name(final)
        tmp.mkdir(mode=0o755)
        try:
            result = fill(tmp)
        except BaseException:
            remove_tree(tmp)
            raise
        if final.exists():  # a directory without a row: an earlier run died between rename and insert
            remove_tree(final)
        os.rename(tmp, final)
        record = LayerRecord(diff_id, result.size, result.files, result.lost_owners, result.skipped_devices, time.time())
        with self.db.transaction() as c:
            c.execute("INSERT OR REPLACE INTO layers VALUES (?,?,?,?,?,?)",
                      (diff_id, record.size, record.files, record.lost_owners, record.skipped_devices, record.created))
        return record

    def clean_partials(self, diff_id: str) -> int:
        final = self.layout.layer_path(diff_id)
        n = 0
        for p in final.parent.glob(final.name + ".partial-*"):
            remove_tree(p)
            n += 1
        return n

    def remove(self, diff_id: str) -> None:
        """Forget first, then delete: a crash in between leaves an unlisted directory, never a listed hole."""
        with self.lock(diff_id):
            with self.db.transaction() as c:
                c.execute("DELETE FROM layers WHERE diff_id=?", (diff_id,))
            remove_tree(self.layout.layer_path(diff_id))


def _record(row) -> LayerRecord:  # noqa: ANN001 - sqlite3.Row
    return LayerRecord(row["diff_id"], row["size"], row["files"], row["lost_owners"],
                       row["skipped_devices"], row["created"])
