"""save / load / import: images to and from docker-archive and oci-archive tarballs, and plain rootfs tars.

`save` copies the stored blobs, so an oci-archive keeps the manifest digest and both formats keep the
image ID. `load` and `import` go through the same ingest path as `pull` (digests checked, nothing half).
"""
from __future__ import annotations

import io
import json
import tarfile
import time
from typing import BinaryIO

from pinnace.engine.commit import record_image
from pinnace.engine.contract import ImageImportOptions, ImageLoadReport, ImageSaveOptions
from pinnace.engine.ingest import ingest_layer
from pinnace.engine.resolve import canonical_name, resolve_image
from pinnace.engine.store import Store
from pinnace.errors import DigestMismatch, InvalidArgument, PinnaceError
from pinnace.registry.manifest import (ImageIndex, ImageManifest, layer_compression, parse_config, parse_manifest,
                                       select_platform, sha256_digest)
from pinnace.registry.platform import host_platform
from pinnace.storage.compression import HashingReader, open_decompressed

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_EPOCH = 946684800  # fixed mtime for archive metadata entries: same image, same archive bytes


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _EPOCH, 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = tarfile.DIRTYPE, _EPOCH, 0o755
    tar.addfile(info)


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


# -- save --------------------------------------------------------------------------------------------------
def save_images(store: Store, opts: ImageSaveOptions, out: BinaryIO) -> None:
    if opts.format not in ("docker-archive", "oci-archive"):
        raise InvalidArgument(f"unsupported archive format {opts.format!r} (docker-archive, oci-archive)")
    chosen: list[tuple[str, list[str]]] = []
    for text in opts.images:
        iid, matched = resolve_image(store.images, text)
        rec = store.images.get(iid)
        names = [matched] if matched else list(rec.names)
        chosen.append((iid, names))
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if opts.format == "oci-archive":
            _save_oci(store, chosen, tar)
        else:
            _save_docker(store, chosen, tar)


def _save_oci(store: Store, chosen: list[tuple[str, list[str]]], tar: tarfile.TarFile) -> None:
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    _add_dir(tar, "blobs/")
    _add_dir(tar, "blobs/sha256/")
    written: set[str] = set()
    descriptors = []
    for iid, names in chosen:
        rec = store.images.get(iid)
        for digest in [rec.manifest_digest, rec.id, *(l.blob_digest for l in rec.layers)]:
            if digest in written:
                continue
            written.add(digest)
            path = store.blobs.path(digest)
            info = tar.gettarinfo(str(path), arcname=f"blobs/sha256/{digest[7:]}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = _EPOCH
            with store.blobs.open(digest) as f:
                tar.addfile(info, f)
        desc = {"mediaType": rec.manifest_media_type, "digest": rec.manifest_digest,
                "size": store.blobs.size(rec.manifest_digest)}
        for name in names or [None]:
            d = dict(desc)
            if name:
                d["annotations"] = {REF_NAME: name, CONTAINERD_NAME: name}
            descriptors.append(d)
    _add_bytes(tar, "index.json", _canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                   "manifests": descriptors}))


def _save_docker(store: Store, chosen: list[tuple[str, list[str]]], tar: tarfile.TarFile) -> None:
    manifest_json, repositories, written = [], {}, set()
    for iid, names in chosen:
        rec = store.images.get(iid)
        config_name = f"{iid[7:]}.json"
        if config_name not in written:
            _add_bytes(tar, config_name, store.blobs.read(iid))
            written.add(config_name)
        layer_paths, parent = [], ""
        sizes = {l.diff_id: l.size for l in store.layers.all()}
        for layer in rec.layers:
            lid = layer.diff_id[7:]
            if lid not in written:
                written.add(lid)
                _add_dir(tar, f"{lid}/")
                _add_bytes(tar, f"{lid}/VERSION", b"1.0")
                _add_bytes(tar, f"{lid}/json", _canonical_json({"id": lid, **({"parent": parent} if parent else {})}))
                info = tarfile.TarInfo(f"{lid}/layer.tar")
                info.size, info.mtime, info.mode = sizes[layer.diff_id], _EPOCH, 0o644
                with store.blobs.open(layer.blob_digest) as blob:
                    tar.addfile(info, open_decompressed(blob, layer_compression(layer.media_type)))
            layer_paths.append(f"{lid}/layer.tar")
            parent = lid
        manifest_json.append({"Config": config_name, "RepoTags": names, "Layers": layer_paths})
        for name in names:
            repo, _, tag = name.rpartition(":")
            repositories.setdefault(repo, {})[tag] = parent
    _add_bytes(tar, "manifest.json", _canonical_json(manifest_json))
    _add_bytes(tar, "repositories", _canonical_json(repositories))


# -- load --------------------------------------------------------------------------------------------------
def load_images(store: Store, archive: BinaryIO) -> ImageLoadReport:
    """`archive` must be seekable (the CLI spools stdin to a file first)."""
    store.open_for_write()
    try:
        tar = tarfile.open(fileobj=archive, mode="r:*")
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # tarfile's messages span lines
        raise InvalidArgument(f"not a valid image archive: {reason}") from None
    with tar, store.gc_lock(shared=True):
        if "oci-layout" in members or "index.json" in members:
            return _load_oci(store, tar, members)
        if "manifest.json" in members:
            return _load_docker(store, tar, members)
    raise InvalidArgument("not an image archive: neither oci-layout/index.json nor manifest.json found")


def _member_bytes(tar: tarfile.TarFile, members: dict, name: str, limit: int = 64 << 20) -> bytes:
    m = members.get(name)
    if m is None or not m.isfile():
        raise InvalidArgument(f"image archive is missing {name}")
    if m.size > limit:
        raise InvalidArgument(f"image archive entry {name} is too large ({m.size} bytes)")
    return tar.extractfile(m).read()


def _blob_member(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _verified_blob(tar: tarfile.TarFile, members: dict, digest: str) -> bytes:
    data = _member_bytes(tar, members, _blob_member(digest))
    if sha256_digest(data) != digest:
        raise DigestMismatch(f"archive blob {digest}: content hashes to {sha256_digest(data)}")
    return data


def _json(data: bytes, what: str) -> object:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"image archive: {what} is not valid JSON: {exc}") from None


def _ingest_layers(store: Store, tar: tarfile.TarFile, members: dict, manifest: ImageManifest, config: dict,
                   paths: list[str] | None = None) -> None:
    for i, (desc, diff_id) in enumerate(zip(manifest.layers, config["rootfs"]["diff_ids"])):
        member = members.get(paths[i] if paths else _blob_member(desc.digest))
        if member is None or not member.isfile():
            raise InvalidArgument(f"image archive is missing layer {desc.digest}")
        ingest_layer(store, diff_id=diff_id, blob_digest=desc.digest, compression=layer_compression(desc.media_type),
                     open_source=lambda m=member: tar.extractfile(m))


def _load_oci(store: Store, tar: tarfile.TarFile, members: dict) -> ImageLoadReport:
    index = _json(_member_bytes(tar, members, "index.json"), "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise InvalidArgument("image archive: index.json has no manifests list")
    ids, names = [], []
    for desc in index["manifests"]:
        if not isinstance(desc, dict) or not isinstance(desc.get("digest"), str):
            raise InvalidArgument("image archive: index.json lists a manifest that is not a descriptor")
        digest = desc["digest"]
        raw = _verified_blob(tar, members, digest)
        parsed = parse_manifest(raw, desc.get("mediaType"))
        if isinstance(parsed, ImageIndex):
            child = select_platform(parsed, host_platform())
            raw = _verified_blob(tar, members, child.digest)
            parsed = parse_manifest(raw, child.media_type)
        config_raw = _verified_blob(tar, members, parsed.config.digest)
        config = parse_config(config_raw)
        _ingest_layers(store, tar, members, parsed, config)
        annotations = desc.get("annotations") or {}
        name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
        image_names = ()
        if name:
            try:
                image_names = (canonical_name(name),)
            except PinnaceError:
                image_names = ()  # a bare tag such as "latest" names no repository
        record_image(store, manifest=parsed, manifest_raw=raw, config=config, config_raw=config_raw,
                     names=image_names)
        ids.append(parsed.config.digest)
        names.extend(image_names)
    return ImageLoadReport(tuple(dict.fromkeys(ids)), tuple(names))


def _load_docker(store: Store, tar: tarfile.TarFile, members: dict) -> ImageLoadReport:
    entries = _json(_member_bytes(tar, members, "manifest.json"), "manifest.json")
    if not isinstance(entries, list):
        raise InvalidArgument("image archive: manifest.json is not a list")
    ids, names = [], []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers", []), list) or not isinstance(entry.get("RepoTags") or [], list):
            raise InvalidArgument("image archive: manifest.json entries must be objects with Config, Layers, RepoTags")
        config_raw = _member_bytes(tar, members, entry["Config"])
        config = parse_config(config_raw)
        layer_paths = entry.get("Layers") or []
        if len(layer_paths) != len(config["rootfs"]["diff_ids"]):
            raise InvalidArgument("image archive: manifest.json and the config disagree on the number of layers")
        layers = []
        for path, diff_id in zip(layer_paths, config["rootfs"]["diff_ids"]):
            member = members.get(path)
            if member is None or not member.isfile():
                raise InvalidArgument(f"image archive is missing {path}")
            f = tar.extractfile(member)
            head = f.read(4)
            if head[:2] == b"\x1f\x8b" or head == b"\x28\xb5\x2f\xfd":
                f.seek(0)
                digest = _hash_stream(f)
                media = OCI_LAYER_GZIP if head[:2] == b"\x1f\x8b" else OCI_LAYER_ZSTD
            else:
                digest, media = diff_id, OCI_LAYER_TAR  # an uncompressed layer's blob digest is its diff-id
            layers.append({"mediaType": media, "digest": digest, "size": member.size})
        config_digest = sha256_digest(config_raw)
        manifest_raw = _canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                        "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                                                   "size": len(config_raw)},
                                        "layers": layers})
        manifest = parse_manifest(manifest_raw, OCI_MANIFEST)
        _ingest_layers(store, tar, members, manifest, config, layer_paths)
        image_names = tuple(canonical_name(t) for t in entry.get("RepoTags") or ())
        record_image(store, manifest=manifest, manifest_raw=manifest_raw, config=config, config_raw=config_raw,
                     names=image_names)
        ids.append(config_digest)
        names.extend(image_names)
    return ImageLoadReport(tuple(dict.fromkeys(ids)), tuple(names))


def _hash_stream(f: BinaryIO) -> str:
    h = HashingReader(f)
    while h.read(1 << 20):
        pass
    f.seek(0)
    return h.digest()


# -- import ------------------------------------------------------------------------------------------------
def import_tarball(store: Store, opts: ImageImportOptions, source: BinaryIO) -> str:
    """A root filesystem tarball (maybe compressed) becomes a one-layer image. Returns the image ID."""
    from pinnace.engine.changes import apply_changes
    if opts.reference:
        canonical_name(opts.reference)  # a bad name fails before the input is read
    apply_changes({}, opts.changes)      # and so does a bad --change
    store.open_for_write()
    with store.gc_lock(shared=True):
        return _import_locked(store, opts, source, apply_changes)


def _import_locked(store: Store, opts: ImageImportOptions, source: BinaryIO, apply_changes) -> str:  # noqa: ANN001
    writer = store.blobs.writer()
    try:
        while chunk := source.read(1 << 20):
            writer.write(chunk)
        blob_digest = writer.commit()
    finally:
        writer.abort()
    try:
        return _import_blob(store, opts, blob_digest, apply_changes)
    except BaseException:
        if blob_digest not in store.images.referenced_blobs():
            store.blobs.remove(blob_digest)  # not a tarball (or interrupted): keep no copy of the input
        raise


def _import_blob(store: Store, opts: ImageImportOptions, blob_digest: str, apply_changes) -> str:  # noqa: ANN001
    with store.blobs.open(blob_digest) as f:
        head = f.read(4)
        compression = "gzip" if head[:2] == b"\x1f\x8b" else "zstd" if head == b"\x28\xb5\x2f\xfd" else None
        f.seek(0)
        diff = HashingReader(open_decompressed(f, compression))
        while diff.read(1 << 20):
            pass
        diff_id = diff.digest()
    media = {None: OCI_LAYER_TAR, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}[compression]
    platform = host_platform()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config: dict = {"architecture": platform.architecture, "os": platform.os, "created": now,
                    "config": apply_changes({}, opts.changes),
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                    "history": [{"created": now, "created_by": f"pinnace import {opts.source}",
                                 **({"comment": opts.message} if opts.message else {})}]}
    if platform.variant:
        config["variant"] = platform.variant
    config_raw = _canonical_json(config)
    manifest_raw = _canonical_json({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                    "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config_raw),
                                               "size": len(config_raw)},
                                    "layers": [{"mediaType": media, "digest": blob_digest,
                                                "size": store.blobs.size(blob_digest)}]})
    manifest = parse_manifest(manifest_raw, OCI_MANIFEST)
    names = (canonical_name(opts.reference),) if opts.reference else ()
    ingest_layer(store, diff_id=diff_id, blob_digest=blob_digest, compression=compression,
                 open_source=lambda: store.blobs.open(blob_digest))
    record_image(store, manifest=manifest, manifest_raw=manifest_raw, config=config, config_raw=config_raw,
                 names=names)
    return manifest.config.digest
