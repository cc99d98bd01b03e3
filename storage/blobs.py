"""Content-addressed blobs (manifests, configs, compressed layers), stored by sha256 digest.

A blob is written to a partial file beside its final name, hashed as it is written, fsynced and renamed
into place only when its digest is the one promised: a reader never sees a half or wrong blob.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Iterator

from pinnace.errors import DigestMismatch, StorageError
from pinnace.storage.layout import StoreLayout, digest_hex


class BlobWriter:
    """File-like sink for one blob; `commit()` verifies the digest and publishes it, `abort()` drops it."""

    def __init__(self, layout: StoreLayout, digest: str | None):
        self.layout = layout
        self.expected = digest
        layout.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_path = layout.tmp_dir / f"blob-{os.getpid()}-{os.urandom(6).hex()}"
        self._file = open(self.tmp_path, "wb")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self) -> str:
        """Publish the blob under its digest (the expected one, which must match)."""
        digest = self.digest
        if self.expected and digest != self.expected:
            self.abort()
            raise DigestMismatch(f"blob {self.expected}: content hashes to {digest}")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self.layout.blob_path(digest)
        os.replace(self.tmp_path, final)  # same content under the same name: replacing is harmless
        return digest

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass


class BlobStore:
    def __init__(self, layout: StoreLayout):
        self.layout = layout

    def path(self, digest: str) -> Path:
        return self.layout.blob_path(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"blob {digest} is missing from the store (run `pinnace system check --repair`)") from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise StorageError(f"blob {digest} is missing from the store (run `pinnace system check --repair`)") from None

    def writer(self, digest: str | None = None) -> BlobWriter:
        return BlobWriter(self.layout, digest)

    def put(self, data: bytes, digest: str | None = None) -> str:
        w = self.writer(digest)
        w.write(data)
        return w.commit()

    def ingest_file(self, src: BinaryIO, digest: str | None = None) -> str:
        w = self.writer(digest)
        try:
            shutil.copyfileobj(src, w, 1 << 20)
        except BaseException:
            w.abort()
            raise
        return w.commit()

    def remove(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def all(self) -> Iterator[str]:
        try:
            names = os.listdir(self.layout.blobs_dir)
        except FileNotFoundError:
            return
        for name in names:
            try:
                digest_hex("sha256:" + name)
            except Exception:
                continue
            yield "sha256:" + name

    def verify(self, digest: str) -> bool:
        h = hashlib.sha256()
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        return "sha256:" + h.hexdigest() == digest
