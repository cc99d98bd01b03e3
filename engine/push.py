"""`push`: a local image to a registry, as an OCI or Docker schema 2 manifest with gzip or zstd layers.

Which blob each layer becomes is push_layers.py's job. Here: options and destination, where blobs can
be mounted from, the manifest (the stored one, byte for byte, when nothing changed: a pulled image
pushed unchanged keeps its digest), and the order of the upload: the config's HEAD first (a registry
that wants credentials says so before anything is compressed), layers up to three at a time, the
config, the manifest by tag. The repo digest is recorded on the image afterwards, as Docker does.
"""
from __future__ import annotations

import io
import json
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from pinnace.engine.contract import ImagePushOptions, ImagePushReport, ProgressCallback, ProgressEvent, ProgressKind
from pinnace.engine.push_layers import PreparedLayer, attach_blobs, cached_blob, prepare_layer
from pinnace.engine.resolve import resolve_image
from pinnace.engine.store import Store
from pinnace.errors import AuthenticationError, InvalidArgument, RegistryError
from pinnace.registry.manifest import (DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP,
                                       OCI_LAYER_ZSTD, OCI_MANIFEST, layer_compression, sha256_digest)
from pinnace.registry.push import EXISTS, MOUNTED, UPLOADED, BlobPush, PushClient
from pinnace.registry.reference import Reference, parse_reference
from pinnace.storage.images import ImageRecord, LayerRef

FORMATS = {"oci": OCI_MANIFEST, "v2s2": DOCKER_MANIFEST}
COMPRESSIONS = ("gzip", "zstd")
PARALLEL_BLOBS = 3  # as pull: enough to overlap round trips, few enough not to thrash a small registry
# Other containers/image transports a Podman user may type: named so the error can say what is supported.
_TRANSPORTS = ("oci:", "oci-archive:", "docker-archive:", "dir:", "containers-storage:", "docker-daemon:")
_LAYER_TYPES = {(OCI_MANIFEST, "gzip"): OCI_LAYER_GZIP, (OCI_MANIFEST, "zstd"): OCI_LAYER_ZSTD,
                (DOCKER_MANIFEST, "gzip"): DOCKER_LAYER_GZIP}


# -- options -------------------------------------------------------------------------------------------
def destination(image: str, dest: str | None, matched: str | None) -> Reference:
    """Where to push: DESTINATION (`docker://` allowed), else the name the image was found by."""
    if dest is None:
        if matched is None:
            raise InvalidArgument(f"{image} names an image by ID or digest: give a DESTINATION to push it to")
        return parse_reference(matched)
    text = dest.removeprefix("docker://")
    if text.startswith(_TRANSPORTS):
        raise InvalidArgument(f"unsupported destination {dest!r}: only registries (docker://) are supported")
    ref = parse_reference(text)
    if ref.digest:
        raise InvalidArgument(f"cannot push to a digest reference {dest!r}: give a tag")
    return ref


def _check_options(opts: ImagePushOptions) -> tuple[str | None, str | None]:
    fmt = opts.format.lower() if opts.format else None
    if fmt is not None and fmt not in FORMATS:
        raise InvalidArgument(f"unsupported manifest format {opts.format!r} (oci, v2s2)")
    compression = opts.compression.lower() if opts.compression else None
    if compression is not None and compression not in COMPRESSIONS:
        raise InvalidArgument(f"unsupported compression format {opts.compression!r} (gzip, zstd)")
    if fmt == "v2s2" and compression == "zstd":
        raise InvalidArgument("zstd compression needs --format oci: Docker schema 2 manifests have no zstd layers")
    return fmt, compression


def target_compression(layer: LayerRef, manifest_type: str, wanted: str | None) -> str:
    """The compression a layer is pushed with: the one asked for, else the stored one when the format
    can carry it, else gzip (uncompressed layers from commit, zstd layers in a Docker manifest)."""
    if wanted:
        return wanted
    stored = layer_compression(layer.media_type)
    return stored if stored and (manifest_type, stored) in _LAYER_TYPES else "gzip"


def _repositories(rec: ImageRecord, registry: str) -> list[str]:
    """Repositories of `registry` the image's names point at, then those it was pulled from or pushed to
    (repo digests). Names first: a name the user still holds is usually where the image came from, while
    the repo digests (sorted by name) include every past push destination, some maybe deleted since, and
    only the first few candidates are tried (MAX_MOUNT_SOURCES)."""
    out = []
    for text in (*(n.rsplit(":", 1)[0] for n in rec.names), *(d.split("@", 1)[0] for d in rec.digests)):
        try:
            ref = parse_reference(text, default_tag=None)
        except InvalidArgument:
            continue
        if ref.registry == registry:
            out.append(ref.repository)
    return list(dict.fromkeys(out))


def mount_sources(store: Store, rec: ImageRecord, dest: Reference) -> dict[str, list[str]]:
    """Blob digest → repositories of the destination registry that may hold it, learnt from every
    local image (a committed image's base layer is mountable from where the base was pulled)."""
    images = {img.id: img for img in store.images.list()}
    repos = {iid: _repositories(img, dest.registry) for iid, img in images.items()}
    pairs = [(iid, d) for iid, img in images.items() for d in (iid, *(l.blob_digest for l in img.layers))]
    pairs += [(r[0], r[1]) for r in store.db.query("SELECT image_id, digest FROM image_blobs")]
    sources: dict[str, list[str]] = {}
    for iid, digest in sorted(pairs, key=lambda p: p[0] != rec.id):  # this image's own repositories first
        sources.setdefault(digest, []).extend(r for r in repos.get(iid, ()) if r != dest.repository)
    return {d: list(dict.fromkeys(r)) for d, r in sources.items() if r}


def make_client(ref: Reference, tls_verify: bool | None, credentials: tuple[str, str] | None) -> PushClient:
    from pinnace.registry.config import load_registries_config
    config = load_registries_config()
    if config.is_blocked(ref.registry):
        raise RegistryError(f"{ref.registry} is blocked in {config.path or 'registries.conf'}")
    return PushClient(ref.registry, tls_verify=tls_verify, credentials=credentials, config=config)


# -- manifests -------------------------------------------------------------------------------------------
def build_manifest(rec: ImageRecord, stored_raw: bytes, manifest_type: str, config_raw: bytes,
                   layers: list[PreparedLayer]) -> bytes:
    """The stored manifest itself when nothing changed (its digest survives), else a new one."""
    config_digest = sha256_digest(config_raw)
    unchanged = (manifest_type == rec.manifest_media_type and config_digest == rec.id
                 and [l.digest for l in layers] == [l.blob_digest for l in rec.layers])
    if unchanged:
        return stored_raw
    try:
        stored = json.loads(stored_raw)
        stored_layers = {d["digest"]: d for d in stored.get("layers", []) if isinstance(d, dict) and "digest" in d}
    except (ValueError, AttributeError, TypeError):
        stored, stored_layers = {}, {}
    oci = manifest_type == OCI_MANIFEST
    descriptors = []
    for layer in layers:
        media = _LAYER_TYPES[(manifest_type, layer.compression)]
        old = stored_layers.get(layer.digest)
        if oci and rec.manifest_media_type == OCI_MANIFEST and old and old.get("mediaType") == media:
            descriptors.append(old)  # unchanged blob: keep its annotations
        else:
            descriptors.append({"mediaType": media, "digest": layer.digest, "size": layer.size})
    doc: dict = {"schemaVersion": 2, "mediaType": manifest_type,
                 "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "digest": config_digest,
                            "size": len(config_raw)},
                 "layers": descriptors}
    if oci and rec.manifest_media_type == OCI_MANIFEST and isinstance(stored.get("annotations"), dict):
        doc["annotations"] = stored["annotations"]
    return json.dumps(doc, separators=(",", ":")).encode()


def _config_for(config_raw: bytes, layers: list[PreparedLayer], rec: ImageRecord) -> bytes:
    """The config to push: the stored one, unless a re-exported layer hashed differently."""
    if all(p.diff_id == l.diff_id for p, l in zip(layers, rec.layers)):
        return config_raw
    config = json.loads(config_raw)
    config["rootfs"]["diff_ids"] = [p.diff_id for p in layers]
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


# -- push ------------------------------------------------------------------------------------------------
def push_image(store: Store, opts: ImagePushOptions, progress: ProgressCallback) -> ImagePushReport:
    fmt, compression = _check_options(opts)
    iid, matched = resolve_image(store.images, opts.image)
    rec = store.images.get(iid)
    dest = destination(opts.image, opts.destination, matched)
    manifest_type = FORMATS[fmt] if fmt else (rec.manifest_media_type if rec.manifest_media_type in
                                              (OCI_MANIFEST, DOCKER_MANIFEST) else OCI_MANIFEST)
    stored_raw, config_raw = store.blobs.read(rec.manifest_digest), store.blobs.read(rec.id)
    targets = [target_compression(l, manifest_type, compression) for l in rec.layers]
    store.layout.create_dirs()
    if any(not store.blobs.has(l.blob_digest) and cached_blob(store, l.diff_id, t) is None
           for l, t in zip(rec.layers, targets)):
        store.join_userns()  # a layer will be read from its directory (files of any mapped id); before threads
    from pinnace.registry.auth import load_credentials
    credentials = opts.credentials or load_credentials(dest.name)
    progress(ProgressEvent(ProgressKind.RESOLVED, id=rec.manifest_digest, total=len(rec.layers), message=str(dest)))
    with store.gc_lock(shared=True):
        try:
            with make_client(dest, opts.tls_verify, credentials) as client:
                return _push(store, client, rec, dest, manifest_type, stored_raw, config_raw, targets, progress)
        except AuthenticationError as exc:
            if credentials is None and "unauthorized" in str(exc):
                raise AuthenticationError(f"{dest.registry}: authentication required: run `pinnace login "
                                          f"{dest.registry}` (or give --creds)") from None
            raise


def _push(store: Store, client, rec: ImageRecord, dest: Reference, manifest_type: str,  # noqa: ANN001
          stored_raw: bytes, config_raw: bytes, targets: list[str], progress: ProgressCallback) -> ImagePushReport:
    # The first request: a registry that wants credentials says so before any layer is compressed.
    config_exists = client.blob_exists(dest.repository, rec.id, push=True)
    sources = mount_sources(store, rec, dest)

    def send(digest: str, size: int, open_blob: Callable) -> BlobPush:  # noqa: ANN401
        progress(ProgressEvent(ProgressKind.LAYER_START, id=digest, total=size))
        result = client.push_blob(dest.repository, digest, size, open_blob, mount_from=sources.get(digest, ()),
                                  progress=lambda n: progress(ProgressEvent(ProgressKind.LAYER_PROGRESS, id=digest,
                                                                            current=n, total=size)))
        if result.outcome == EXISTS:
            progress(ProgressEvent(ProgressKind.LAYER_EXISTS, id=digest, total=size, message="already exists"))
        elif result.outcome == MOUNTED:
            progress(ProgressEvent(ProgressKind.LAYER_EXISTS, id=digest, total=size,
                                   message=f"mounted from {dest.registry}/{result.source}"))
        else:
            progress(ProgressEvent(ProgressKind.LAYER_DONE, id=digest, current=size, total=size))
        return result

    def one_layer(i: int) -> tuple[PreparedLayer, BlobPush]:
        prepared = prepare_layer(store, rec.layers[i], targets[i])
        return prepared, send(prepared.digest, prepared.size, lambda: store.blobs.open(prepared.digest))

    results: list[tuple[PreparedLayer, BlobPush]] = []
    if len(rec.layers) <= 1:
        results = [one_layer(i) for i in range(len(rec.layers))]
    else:
        with ThreadPoolExecutor(PARALLEL_BLOBS) as pool:
            futures = [pool.submit(one_layer, i) for i in range(len(rec.layers))]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f in done and f.exception() is not None:
                    for other in futures:
                        other.cancel()  # what has not started does not start; the rest finish their blob
                    raise f.exception()
            results = [f.result() for f in futures]
    layers = [p for p, _ in results]
    new_blobs = [p.digest for p in layers if p.digest not in {l.blob_digest for l in rec.layers}]
    if new_blobs:
        attach_blobs(store, rec.id, new_blobs)  # as soon as they exist: a failed push still keeps its work

    push_config = _config_for(config_raw, layers, rec)
    config_digest = sha256_digest(push_config)
    if config_digest != rec.id:
        progress(ProgressEvent(ProgressKind.WARNING, id=config_digest, message=(
            "layers without a stored blob were exported from their directories and hash differently: the "
            f"pushed image has config {config_digest}, not {rec.id}")))
    config_result = client.push_blob(dest.repository, config_digest, len(push_config),
                                     lambda: io.BytesIO(push_config), mount_from=sources.get(config_digest, ()),
                                     exists=config_exists if config_digest == rec.id else None)
    progress(ProgressEvent(ProgressKind.WRITING, id=config_digest))
    manifest = build_manifest(rec, stored_raw, manifest_type, push_config, layers)
    digest = client.put_manifest(dest.repository, dest.tag or "latest", manifest, manifest_type)
    if push_config != config_raw:
        store.blobs.put(push_config)
        new_blobs.append(config_digest)
    if digest != rec.manifest_digest:
        store.blobs.put(manifest)  # the pushed manifest: inspect by the repo digest finds its bytes
        new_blobs.append(digest)
    attach_blobs(store, rec.id, new_blobs, f"{dest.name}@{digest}")
    outcomes = [r.outcome for _, r in results] + [config_result.outcome]
    return ImagePushReport(reference=str(dest.with_tag(dest.tag or "latest")), digest=digest,
                           media_type=manifest_type, blobs_uploaded=outcomes.count(UPLOADED),
                           blobs_mounted=outcomes.count(MOUNTED), blobs_skipped=outcomes.count(EXISTS),
                           layers_compressed=sum(p.compressed_now for p in layers))
