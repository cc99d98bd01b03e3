"""Local image operations: list, inspect, tag, untag, remove, prune, history, garbage collection."""
from __future__ import annotations

TYPE_CHECKING = False  # image_config() is on `run`'s path, which does not need the contract's records
if TYPE_CHECKING:
    from pinnace.engine.contract import HistoryEntry, ImagePruneOptions, ImageRemoveOptions, ImageRemoveReport
from pinnace.engine.store import Store
from pinnace.errors import Conflict, ImageNotFound, InvalidArgument, PinnaceError


def image_config(store: Store, image_id: str) -> dict:
    import json
    try:  # straight from the file: BlobStore (hashlib, shutil) is not needed to read one blob
        return json.loads(store.layout.blob_path(image_id).read_bytes())
    except OSError as exc:
        raise PinnaceError(f"image {image_id}: cannot read its config ({exc.strerror}); run `pinnace system check --repair`") from None
    except ValueError:
        raise PinnaceError(f"image {image_id}: stored config is not valid JSON (run `pinnace system check --repair`)") from None


def _filter_images(store: Store, filters: tuple[str, ...]) -> list:
    """Image records that pass all filters (the same filter rules as `images`)."""
    from pinnace.engine.image_list import _matches, image_labels, parse_filters
    parsed = parse_filters(filters)
    return [rec for rec in store.images.list()
            if all(_matches(k, v, rec.id, list(rec.names), rec.manifest_digest, list(rec.digests),
                            image_labels(str(store.layout.root), rec.id) if k == "label" else {})
                   for k, v in parsed)]


# -- inspect / history ------------------------------------------------------------------------------------
def inspect_image(store: Store, text: str) -> dict:
    from pinnace.engine.resolve import resolve_image
    iid, _ = resolve_image(store.images, text)
    rec = store.images.get(iid)
    if rec is None:
        raise ImageNotFound(f"{text}: no such image")
    cfg = image_config(store, iid)
    config = cfg.get("config") or {}
    return {
        "Id": rec.id,
        "Digest": rec.manifest_digest,
        "RepoTags": list(rec.names),
        "RepoDigests": list(rec.digests),
        "Parent": "",
        "Comment": cfg.get("comment", ""),
        "Created": cfg.get("created"),
        "Config": config,
        "Author": cfg.get("author", ""),
        "Architecture": cfg.get("architecture"),
        "Os": cfg.get("os"),
        "Variant": cfg.get("variant", ""),
        "Size": rec.size,
        "VirtualSize": rec.size,
        "Labels": config.get("Labels") or {},
        "ManifestType": rec.manifest_media_type,
        "User": config.get("User", ""),
        "History": cfg.get("history", []),
        "RootFS": {"Type": "layers", "Layers": [l.diff_id for l in rec.layers]},
        "GraphDriver": {"Name": store.driver_shown(),
                        "Data": {"LowerDir": ":".join(str(store.layout.layer_path(l.diff_id))
                                                      for l in reversed(rec.layers)),
                                 # files whose owner could not be kept (no subuid range): pinnace's own field
                                 "LostOwners": sum(lr.lost_owners for lr in (store.layers.get(l.diff_id)
                                                                             for l in rec.layers) if lr),
                                 "SkippedDevices": sum(lr.skipped_devices for lr in (store.layers.get(l.diff_id)
                                                                                     for l in rec.layers) if lr)}},
        "Containers": store.images.users(rec.id),
    }


def image_history(store: Store, text: str) -> list[HistoryEntry]:
    from pinnace.engine.contract import HistoryEntry
    from pinnace.engine.resolve import resolve_image
    iid, _ = resolve_image(store.images, text)
    rec = store.images.get(iid)
    cfg = image_config(store, iid)
    sizes = {l.diff_id: l.size for l in store.layers.all()}
    layer_sizes = [sizes.get(l.diff_id, 0) for l in rec.layers] if rec else []
    history = cfg.get("history") or [{"created_by": ""} for _ in layer_sizes]
    entries: list[HistoryEntry] = []
    li = 0
    for h in history:
        empty = bool(h.get("empty_layer"))
        size = 0
        if not empty and li < len(layer_sizes):
            size = layer_sizes[li]
            li += 1
        entries.append(HistoryEntry("<missing>", h.get("created"), h.get("created_by", ""), size,
                                    h.get("comment", ""), empty))
    entries.reverse()
    if entries:
        top = entries[0]
        entries[0] = HistoryEntry(iid, top.created, top.created_by, top.size, top.comment, top.empty_layer)
    return entries


# -- names -----------------------------------------------------------------------------------------------
def tag_image(store: Store, source: str, targets: tuple[str, ...]) -> None:
    from pinnace.engine.resolve import canonical_name, resolve_image
    iid, _ = resolve_image(store.images, source)
    names = [canonical_name(t) for t in targets]  # validate all before changing anything
    for name in names:
        store.images.add_name(iid, name)


def untag_image(store: Store, text: str, names: tuple[str, ...]) -> list[str]:
    from pinnace.engine.resolve import canonical_name, resolve_image
    iid, _ = resolve_image(store.images, text)
    if not names:
        return store.images.remove_names(iid)
    removed = []
    for n in names:
        name = canonical_name(n)
        if store.images.id_by_name(name) != iid:
            raise InvalidArgument(f"{n}: not a name of image {iid[7:19]}")
        store.images.remove_name(name)
        removed.append(name)
    return removed


# -- removal ---------------------------------------------------------------------------------------------
def remove_images(store: Store, opts: ImageRemoveOptions) -> ImageRemoveReport:
    from pinnace.engine.contract import ImageRemoveReport
    from pinnace.engine.resolve import resolve_image
    untagged: list[str] = []
    deleted: list[str] = []
    errors: list[str] = []
    exit_code = 0
    targets = [r.id for r in store.images.list()] if opts.all else list(opts.images)
    for text in targets:
        try:
            iid, matched = resolve_image(store.images, text)
            rec = store.images.get(iid)
            if rec is None:
                raise ImageNotFound(f"{text}: no such image")
            if matched and len(rec.names) > 1:
                store.images.remove_name(matched)  # one of several names: only that name goes
                untagged.append(matched)
                continue
            if not matched and len(rec.names) > 1 and not opts.force and not opts.all:
                raise Conflict(f"unable to delete image {iid[7:19]} (must force): it is referenced by "
                               f"{len(rec.names)} names")
            users = store.images.users(iid)
            if users and not opts.force:
                raise Conflict(f"image {iid[7:19]} is in use by container(s) {', '.join(users)}: "
                               "remove them first or use --force")
            if users:
                # like Docker: --force untags an image containers still use, it never deletes their layers
                untagged.extend(store.images.remove_names(iid))
                continue
            if _unmount_for_removal(store, iid, opts.force):
                untagged.extend(store.images.remove_names(iid))
                store.images.delete(iid)
                deleted.append(iid)
        except PinnaceError as exc:
            errors.append(str(exc))
            # podman's rmi codes: 1 = an image did not exist, 2 = an image is in use
            code = 1 if isinstance(exc, ImageNotFound) else 2 if isinstance(exc, Conflict) else 125
            exit_code = code if exit_code in (0, 1) or code == 125 else exit_code
    if deleted:
        collect_garbage(store)
    return ImageRemoveReport(tuple(untagged), tuple(deleted), tuple(errors), exit_code)


def _unmount_for_removal(store: Store, image_id: str, force: bool) -> bool:
    """A mounted image (`image mount`) is refused unless forced; forced, it is unmounted first."""
    from pinnace.engine.mount import image_mount_path
    from pinnace.runtime import mounts
    path = image_mount_path(store, image_id)
    if not mounts.is_mountpoint(path):
        return True
    if not force:
        raise Conflict(f"image {image_id[7:19]} is mounted at {path}: `pinnace image unmount` it or use --force")
    mounts.unmount(path)
    return True


def prune_images(store: Store, opts: ImagePruneOptions) -> list[str]:
    removed = []
    for rec in _filter_images(store, opts.filters):
        if ((rec.names or rec.digests) and not opts.all) or store.images.users(rec.id):
            continue
        from pinnace.engine.mount import image_mount_path
        from pinnace.runtime import mounts
        if mounts.is_mountpoint(image_mount_path(store, rec.id)):
            continue  # mounted: in use
        store.images.remove_names(rec.id)
        store.images.delete(rec.id)
        removed.append(rec.id)
    collect_garbage(store)
    return removed


def collect_garbage(store: Store) -> tuple[int, int]:
    """Delete layers and blobs no image references. Returns (layers, blobs) removed."""
    with store.gc_lock(shared=False):
        used_layers = store.images.referenced_layers()
        used_blobs = store.images.referenced_blobs()
        n_layers = n_blobs = 0
        for layer in store.layers.all():
            if layer.diff_id not in used_layers:
                store.layers.remove(layer.diff_id)
                n_layers += 1
        for digest in list(store.blobs.all()):
            if digest not in used_blobs:
                store.blobs.remove(digest)
                n_blobs += 1
        return n_layers, n_blobs
