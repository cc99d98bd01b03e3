"""Turning an overlay upper directory into a stored layer, and layers + config into a stored image.

Shared by `commit` and `build` (RUN, COPY, ADD, WORKDIR steps). An overlay upper directory is already in
the store's layer form (whiteouts as 0:0 character devices, opaque directories as an xattr), so it is
exported once as a tar — hashed: that is the diff-id, and kept as the layer's uncompressed blob for
`save`/`push` — and then *renamed* into the layer store instead of being unpacked again. Blobs are not
compressed here: push compresses (and caches) what it sends, as Podman does.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pinnace.engine.store import Store
from pinnace.storage.layers import LayerFill

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def commit_layer(store: Store, upper: Path, *, keep: bool = False) -> str:
    """Store the (unmounted) upper directory as a layer; returns its diff-id. `upper` is consumed (moved
    into the store, or deleted when the store already has an identical layer) unless `keep` (`commit` of a
    container that goes on using it: the layer is unpacked from the tar instead). Caller holds the gc
    lock."""
    from pinnace.storage.layer_export import export_layer
    from pinnace.storage.layers import remove_tree
    writer = store.blobs.writer()
    try:
        export_layer(upper, writer, store.overlay_xattr_prefix)
        size = writer.size
        diff_id = writer.commit()
    finally:
        writer.abort()
    if keep:
        from pinnace.engine.ingest import ingest_layer
        ingest_layer(store, diff_id=diff_id, blob_digest=diff_id, compression=None,
                     open_source=lambda: store.blobs.open(diff_id))
        return diff_id
    with store.layers.lock(diff_id):
        if store.layers.get(diff_id) is not None:
            remove_tree(upper)
            return diff_id

        def adopt(tmp: Path) -> LayerFill:
            files = sum(len(d) + len(f) for _, d, f in os.walk(upper))
            os.rmdir(tmp)
            os.rename(upper, tmp)
            return LayerFill(size=size, files=files, lost_owners=0, skipped_devices=0)
        store.layers.create(diff_id, adopt)
    return diff_id


def record_built_image(store: Store, config: dict, names: tuple[str, ...] = ()) -> str:
    """Record an image whose layers (config["rootfs"]["diff_ids"]) are in the store with uncompressed
    blobs (their blob digest is their diff-id). Returns the image id."""
    from pinnace.engine.commit import record_image
    from pinnace.registry.manifest import parse_manifest, sha256_digest
    config_raw = canonical_json(config)
    layers = []
    for diff_id in config["rootfs"]["diff_ids"]:
        ref = _layer_ref(store, diff_id)
        layers.append({"mediaType": ref[1], "digest": ref[0], "size": store.blobs.size(ref[0])})
    manifest_raw = canonical_json({"schemaVersion": 2, "mediaType": MANIFEST,
                                   "config": {"mediaType": CONFIG, "digest": sha256_digest(config_raw),
                                              "size": len(config_raw)},
                                   "layers": layers})
    manifest = parse_manifest(manifest_raw, MANIFEST)
    record_image(store, manifest=manifest, manifest_raw=manifest_raw, config=config, config_raw=config_raw,
                 names=names)
    return manifest.config.digest


def _layer_ref(store: Store, diff_id: str) -> tuple[str, str]:
    """(blob digest, media type) of a layer: the blob an existing image has for it (pulled layers keep
    their compressed blob), else its uncompressed tar, exported now if no blob exists (a layer whose
    blob was garbage-collected with the image that brought it)."""
    rows = store.db.query("SELECT blob_digest, media_type FROM image_layers WHERE diff_id=? LIMIT 1", (diff_id,))
    if rows and store.blobs.path(rows[0][0]).exists():
        return rows[0][0], rows[0][1]
    if not store.blobs.path(diff_id).exists():
        from pinnace.storage.layer_export import export_layer
        writer = store.blobs.writer(diff_id)
        try:
            export_layer(store.layout.layer_path(diff_id), writer, store.overlay_xattr_prefix)
            writer.commit()
        finally:
            writer.abort()
    return diff_id, LAYER_TAR


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
