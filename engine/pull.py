"""`pull`: resolve a reference to one platform's manifest, fetch config and layers, record the image."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pinnace.engine.contract import (ImagePullOptions, ImagePullReport, ProgressCallback, ProgressEvent,
                                     ProgressKind, no_progress)
from pinnace.engine.commit import record_image
from pinnace.engine.ingest import ingest_layer
from pinnace.engine.store import Store
from pinnace.engine.system import clean_dead_temps
from pinnace.errors import AuthenticationError, DigestMismatch, RegistryError, UnsupportedMediaType
from pinnace.registry.manifest import (ImageIndex, ImageManifest, layer_compression, parse_config, parse_manifest,
                                       select_platform)
from pinnace.registry.platform import Platform, host_platform
from pinnace.registry.reference import Reference, parse_reference

LAYER_ATTEMPTS = 3
PARALLEL_LAYERS = 3


def make_client(ref: Reference, tls_verify: bool | None, credentials: tuple[str, str] | None):  # noqa: ANN201
    """A client for ref's registry, with the credentials given or the most specific stored ones."""
    from pinnace.registry.auth import load_credentials
    from pinnace.registry.client import RegistryClient
    from pinnace.registry.config import load_registries_config
    config = load_registries_config()
    if config.is_blocked(ref.registry):
        raise RegistryError(f"{ref.registry} is blocked in {config.path or 'registries.conf'}")
    return RegistryClient(ref.registry, tls_verify=tls_verify, credentials=credentials or load_credentials(ref.name),
                          config=config)


def pull_image(store: Store, opts: ImagePullOptions, progress: ProgressCallback = no_progress) -> ImagePullReport:
    ref = parse_reference(opts.reference)
    platform = Platform.parse(opts.platform) if opts.platform else host_platform()
    store.open_for_write()  # joins the user namespace: must happen before the download threads start
    clean_dead_temps(store)  # what a killed pull left behind
    if store.single_mapping and store.first_single_mapping_warning():
        progress(ProgressEvent(ProgressKind.WARNING, message="no subordinate id range for this user in "
                 "/etc/subuid and /etc/subgid: files that images give to other users will belong to root "
                 "(`pinnace image inspect` counts them as LostOwners; shown once per store)"))
    client = make_client(ref, opts.tls_verify, opts.credentials)

    fetched = client.get_manifest(ref.repository, ref.digest or ref.tag)
    top_digest = fetched.digest
    parsed = parse_manifest(fetched.data, fetched.media_type)
    index_raw: bytes | None = None
    if isinstance(parsed, ImageIndex):
        index_raw = fetched.data
        desc = select_platform(parsed, platform, name=str(ref))
        fetched = client.get_manifest(ref.repository, desc.digest)
        parsed = parse_manifest(fetched.data, fetched.media_type)
        if not isinstance(parsed, ImageManifest):
            raise UnsupportedMediaType(f"{ref}: index entry {desc.digest} is not an image manifest")
    manifest: ImageManifest = parsed
    manifest_digest = fetched.digest

    if store.blobs.has(manifest.config.digest):
        config_raw = store.blobs.read(manifest.config.digest)
    else:
        config_raw = client.get_blob(ref.repository, manifest.config.digest, max_size=16 << 20)
    config = parse_config(config_raw, expected_layers=len(manifest.layers))
    diff_ids = config["rootfs"]["diff_ids"]
    if opts.platform and not platform.matches({"os": config.get("os"), "architecture": config.get("architecture"),
                                               "variant": config.get("variant")}):
        raise RegistryError(f"{ref}: image is {config.get('os')}/{config.get('architecture')}, "
                            f"not the requested {platform}")
    progress(ProgressEvent(ProgressKind.RESOLVED, id=manifest_digest, total=len(manifest.layers), message=str(ref)))

    pulled = reused = 0
    with store.gc_lock(shared=True):
        def fetch_layer(i: int) -> bool:
            desc, diff_id = manifest.layers[i], diff_ids[i]
            compression = layer_compression(desc.media_type)
            for attempt in range(1, LAYER_ATTEMPTS + 1):
                started = False

                def open_source():
                    nonlocal started
                    started = True
                    progress(ProgressEvent(ProgressKind.LAYER_START, id=desc.digest, total=desc.size))
                    return client.open_blob(ref.repository, desc.digest, expected_size=desc.size)

                def on_bytes(n: int) -> None:
                    progress(ProgressEvent(ProgressKind.LAYER_PROGRESS, id=desc.digest, current=n, total=desc.size))
                try:
                    result = ingest_layer(store, diff_id=diff_id, blob_digest=desc.digest, compression=compression,
                                          open_source=open_source, progress=on_bytes)
                except (DigestMismatch, AuthenticationError, UnsupportedMediaType):
                    raise
                except RegistryError as exc:
                    if attempt == LAYER_ATTEMPTS or not started:
                        raise
                    progress(ProgressEvent(ProgressKind.LAYER_RETRY, id=desc.digest, message=str(exc)))
                    time.sleep(0.5 * attempt)
                    continue
                kind = ProgressKind.LAYER_EXISTS if result.reused else ProgressKind.LAYER_DONE
                progress(ProgressEvent(kind, id=desc.digest, current=desc.size, total=desc.size))
                return result.reused
            raise AssertionError("unreachable")

        if len(manifest.layers) <= 1:
            results = [fetch_layer(i) for i in range(len(manifest.layers))]
        else:
            with ThreadPoolExecutor(PARALLEL_LAYERS) as pool:
                results = list(pool.map(fetch_layer, range(len(manifest.layers))))
        reused = sum(results)
        pulled = len(results) - reused

        progress(ProgressEvent(ProgressKind.WRITING, id=manifest.config.digest))
        digests = (f"{ref.name}@{manifest_digest}",)
        extra: tuple[tuple[str, bytes], ...] = ()
        if index_raw is not None:
            digests += (f"{ref.name}@{top_digest}",)
            extra = ((top_digest, index_raw),)
        record = record_image(store, manifest=manifest, manifest_raw=fetched.data, config=config,
                              config_raw=config_raw, names=(str(ref),) if ref.tag and not ref.digest else (),
                              digests=digests,
                              extra_blobs=extra)
    return ImagePullReport(record.id, str(ref), top_digest, pulled, reused)
