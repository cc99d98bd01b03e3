"""The one path by which layer content enters the store (pull, load, import).

A compressed layer stream is read exactly once: its bytes go to the blob file (hashed: the blob digest)
and through the decompressor (hashed: the diff-id) into the tar applier, which writes a partial layer
directory. Only when both digests match is anything published, so a lying registry, a truncated
download or a killed process never leaves a layer or blob that looks complete.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import BinaryIO, Callable

from pinnace.engine.store import Store
from pinnace.errors import DigestMismatch
from pinnace.storage.blobs import BlobWriter
from pinnace.storage.compression import HashingReader, open_decompressed
from pinnace.storage.layer_apply import apply_layer
from pinnace.storage.layers import LayerFill, LayerRecord
from pinnace.storage.readahead import ReadAhead

CHUNK = 1 << 20
log = logging.getLogger("pinnace")


class TeeReader:
    """Reads from `source`, copying every byte to `sink` (a blob writer) and reporting progress."""

    def __init__(self, source: BinaryIO, sink: BlobWriter | None, progress: Callable[[int], None] | None):
        self.source, self.sink, self.progress = source, sink, progress
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        if data:
            if self.sink is not None:
                self.sink.write(data)
            self.bytes_read += len(data)
            if self.progress is not None:
                self.progress(self.bytes_read)
        return data

    def readinto(self, buf) -> int:  # noqa: ANN001 - any writable buffer
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


@dataclass(frozen=True)
class IngestResult:
    layer: LayerRecord
    reused: bool


def ingest_layer(store: Store, *, diff_id: str, blob_digest: str, compression: str | None,
                 open_source: Callable[[], BinaryIO], progress: Callable[[int], None] | None = None) -> IngestResult:
    """Make sure layer `diff_id` and blob `blob_digest` are in the store, reading `open_source()` at most once.

    The caller holds the store's gc lock (shared). Concurrent callers for the same layer serialise on the
    layer lock; the second finds the work done."""
    with store.layers.lock(diff_id):
        layer = store.layers.get(diff_id)
        have_blob = store.blobs.has(blob_digest)
        if layer is not None and have_blob:
            return IngestResult(layer, True)
        sink = None if have_blob else store.blobs.writer(blob_digest)
        try:
            with open_source() as source:
                tee = TeeReader(source, sink, progress)
                if layer is not None:  # layer present (from an image with other compression): fetch the blob only
                    tee.drain()
                    if sink is not None:
                        sink.commit()
                    return IngestResult(layer, True)

                def fill(dest) -> LayerFill:  # noqa: ANN001 - Path
                    tar = HashingReader(open_decompressed(tee, compression))
                    # download, blob write, decompression and both hashes run in a second thread; this one
                    # creates the files. At the end of the tar, the producer also drains the compressed
                    # stream, where the blob digest is checked.
                    with ReadAhead(tar, after_eof=tee.drain) as ahead:
                        report = apply_layer(ahead, dest, xattr_prefix=store.overlay_xattr_prefix)
                        ahead.finish()  # padding after the end-of-archive blocks is part of the diff-id
                    if tar.digest() != diff_id:
                        raise DigestMismatch(f"layer {blob_digest}: uncompressed content hashes to {tar.digest()}, "
                                             f"the image config says {diff_id}")
                    if sink is not None:
                        sink.commit()
                    if report.skipped_devices:
                        log.warning("layer %s: skipped %d device node(s) that an unprivileged user cannot create: %s",
                                    diff_id[:19], len(report.skipped_devices), ", ".join(report.skipped_devices[:5]))
                    if report.lost_owners:  # recorded in the layer row; the user was warned once per store
                        log.info("layer %s: %d file(s) owned by unmapped ids now belong to root", diff_id[:19],
                                 report.lost_owners)
                    return LayerFill(size=tar.bytes_read, files=report.files, lost_owners=report.lost_owners,
                                     skipped_devices=len(report.skipped_devices))

                layer = store.layers.create(diff_id, fill)
                return IngestResult(layer, False)
        finally:
            if sink is not None:
                sink.abort()  # no-op after a commit (the temp file has been renamed away)
