"""Recording a complete image: blobs for manifest and config, then one database transaction."""
from __future__ import annotations

from pinnace.engine.store import Store
from pinnace.registry.manifest import ImageManifest
from pinnace.storage.images import ImageRecord, LayerRef


def record_image(store: Store, *, manifest: ImageManifest, manifest_raw: bytes, config: dict, config_raw: bytes,
                 names: tuple[str, ...] = (), digests: tuple[str, ...] = (),
                 extra_blobs: tuple[tuple[str, bytes], ...] = ()) -> ImageRecord:
    """All layers must already be in the store (ingest_layer); the caller holds the gc lock shared."""
    blobs = [store.blobs.put(config_raw, manifest.config.digest), store.blobs.put(manifest_raw, manifest.digest)]
    blobs += [store.blobs.put(raw, digest) for digest, raw in extra_blobs]
    diff_ids = config["rootfs"]["diff_ids"]
    size = 0
    for d in diff_ids:
        layer = store.layers.get(d)
        size += layer.size if layer else 0
    record = ImageRecord(
        id=manifest.config.digest, manifest_digest=manifest.digest, manifest_media_type=manifest.media_type,
        created=config.get("created"), architecture=config.get("architecture"), os=config.get("os"),
        variant=config.get("variant"), size=size,
        layers=tuple(LayerRef(d, l.digest, l.media_type) for d, l in zip(diff_ids, manifest.layers)),
        names=names, digests=digests)
    store.images.add(record, blobs)
    return record
