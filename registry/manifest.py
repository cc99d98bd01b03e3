"""Manifests, indexes and image configs: media types, parsing with validation, platform selection.

Everything that comes from a registry is untrusted: shapes, digests and sizes are checked here so the
engine can rely on them (a bad document raises RegistryError "malformed …", never KeyError/TypeError).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from pinnace.errors import NotFound, RegistryError, UnsupportedMediaType
from pinnace.registry.platform import Platform
from pinnace.registry.reference import DIGEST_RE

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"  # uncompressed; rare but seen
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_ACCEPT: tuple[str, ...] = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# Content types a registry (or a static file server) may send that say nothing about the document.
GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream", "binary/octet-stream"})

_LAYER_COMPRESSION: dict[str, str | None] = {
    OCI_LAYER: None, OCI_LAYER_NONDIST: None, DOCKER_LAYER: None,
    OCI_LAYER_GZIP: "gzip", OCI_LAYER_NONDIST_GZIP: "gzip", DOCKER_LAYER_GZIP: "gzip", DOCKER_LAYER_FOREIGN: "gzip",
    OCI_LAYER_ZSTD: "zstd", OCI_LAYER_NONDIST_ZSTD: "zstd",
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict | None = None
    annotations: dict | None = None
    urls: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The descriptor as OCI JSON (for writing manifests/indexes back out)."""
        out: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = self.platform
        if self.annotations:
            out["annotations"] = self.annotations
        if self.urls:
            out["urls"] = list(self.urls)
        return out


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)
    digest: str


@dataclass(frozen=True)
class ImageIndex:
    media_type: str
    manifests: tuple[Descriptor, ...]
    raw: bytes = field(repr=False)
    digest: str


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _bare(media_type: str | None) -> str:
    """`application/json; charset=utf-8` → `application/json`."""
    return (media_type or "").split(";", 1)[0].strip().lower()


def _descriptor(obj: object, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise RegistryError(f"malformed manifest {where}: descriptor is not an object")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise RegistryError(f"malformed manifest {where}: descriptor without mediaType")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise RegistryError(f"malformed manifest {where}: invalid descriptor digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"malformed manifest {where}: invalid size {size!r} for {digest}")
    platform = obj.get("platform")
    if platform is not None and not (isinstance(platform, dict) and isinstance(platform.get("os"), str)
                                     and isinstance(platform.get("architecture"), str)):
        raise RegistryError(f"malformed manifest {where}: invalid platform for {digest}")
    annotations = obj.get("annotations")
    if annotations is not None and not (isinstance(annotations, dict)
                                        and all(isinstance(v, str) for v in annotations.values())):
        raise RegistryError(f"malformed manifest {where}: invalid annotations for {digest}")
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise RegistryError(f"malformed manifest {where}: invalid urls for {digest}")
    return Descriptor(media_type, digest, size, platform, annotations, tuple(urls))


def _sniff_media_type(doc: dict) -> str | None:
    """The media type of a document that does not declare one (allowed by OCI for old documents)."""
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return None


def _json_object(data: bytes, what: str) -> tuple[str, dict]:
    """(digest, parsed object) of a JSON document, or RegistryError("malformed <what> …")."""
    digest = sha256_digest(data)
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(f"malformed {what} {digest}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"malformed {what} {digest}: not a JSON object")
    return digest, doc


def parse_manifest(data: bytes, media_type: str | None) -> ImageManifest | ImageIndex:
    """Parse and validate an image manifest or index; `media_type` is the Content-Type it came with.

    Raises UnsupportedMediaType (schema 1, unknown types) or RegistryError("malformed manifest …").
    """
    digest, doc = _json_object(data, "manifest")
    header_type, body_type = _bare(media_type), doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise RegistryError(f"malformed manifest {digest}: mediaType is not a string")
    if header_type in SCHEMA1_TYPES or body_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise UnsupportedMediaType(f"schema 1 manifests are not supported ({digest}); the image must be re-pushed with a current tool")
    kind = (body_type or _sniff_media_type(doc)) if header_type in GENERIC_TYPES else header_type
    if kind not in IMAGE_MANIFEST_TYPES and kind not in INDEX_TYPES:
        raise UnsupportedMediaType(f"unsupported manifest media type {kind or 'unknown'!r} ({digest})")
    if body_type and body_type != kind:
        raise RegistryError(f"malformed manifest {digest}: served as {header_type} but declares {body_type}")
    if doc.get("schemaVersion") != 2:
        raise RegistryError(f"malformed manifest {digest}: schemaVersion {doc.get('schemaVersion')!r}, expected 2")
    if kind in INDEX_TYPES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise RegistryError(f"malformed manifest {digest}: index without a manifests list")
        return ImageIndex(kind, tuple(_descriptor(m, digest) for m in manifests), data, digest)
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise RegistryError(f"malformed manifest {digest}: no layers list")
    if "config" not in doc:
        raise RegistryError(f"malformed manifest {digest}: no config descriptor")
    return ImageManifest(kind, _descriptor(doc["config"], digest), tuple(_descriptor(x, digest) for x in layers),
                         data, digest)


def layer_compression(media_type: str) -> str | None:
    """`"gzip"`, `"zstd"` or None (plain tar) for a layer media type; UnsupportedMediaType otherwise."""
    try:
        return _LAYER_COMPRESSION[_bare(media_type)]
    except KeyError:
        raise UnsupportedMediaType(f"unsupported layer media type {media_type!r}") from None


def _platform_text(platform: dict | None) -> str:
    if not platform:
        return "unknown"
    text = f"{platform.get('os')}/{platform.get('architecture')}"
    return f"{text}/{platform['variant']}" if platform.get("variant") else text


def select_platform(index: ImageIndex, platform: Platform, *, name: str | None = None) -> Descriptor:
    """The first image manifest of `index` that serves `platform`; NotFound listing what there is."""
    for desc in index.manifests:
        if platform.matches(desc.platform) and desc.media_type not in INDEX_TYPES:
            return desc
    available = sorted({_platform_text(d.platform) for d in index.manifests}) or ["none"]
    raise NotFound(f"no image for platform {platform} in {name or index.digest} "
                   f"(available: {', '.join(available)})")


def parse_config(data: bytes, *, expected_layers: int | None = None) -> dict:
    """Parse an image config, checking what pulling and running rely on.

    `rootfs.diff_ids` must be a list of sha256 digests (as many as `expected_layers` when given),
    `architecture` and `os` non-empty strings. Raises RegistryError("malformed image config …").
    """
    digest, doc = _json_object(data, "image config")
    for key in ("architecture", "os"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise RegistryError(f"malformed image config {digest}: missing {key}")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise RegistryError(f"malformed image config {digest}: rootfs.type is not 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and DIGEST_RE.match(d) for d in diff_ids):
        raise RegistryError(f"malformed image config {digest}: rootfs.diff_ids must be a list of sha256 digests")
    if expected_layers is not None and len(diff_ids) != expected_layers:
        raise RegistryError(f"malformed image config {digest}: {len(diff_ids)} diff_ids for {expected_layers} layers")
    for key in ("config", "history"):
        if doc.get(key) is not None and not isinstance(doc[key], dict if key == "config" else list):
            raise RegistryError(f"malformed image config {digest}: {key} has the wrong type")
    return doc
