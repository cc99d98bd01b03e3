"""`image mount` / `image unmount` / `unshare`: look at an image's merged filesystem from the namespace."""
from __future__ import annotations

from pathlib import Path

from pinnace.engine.resolve import resolve_image
from pinnace.engine.store import Store
from pinnace.runtime import mounts


def image_mount_path(store: Store, image_id: str) -> Path:
    return store.layout.mounts_dir / "images" / image_id[7:] / "merged"


def mount_image(store: Store, text: str) -> Path:
    store.open_for_write()
    iid, _ = resolve_image(store.images, text)
    rec = store.images.get(iid)
    target = image_mount_path(store, iid)
    names = [store.layout.layer_path(l.diff_id).name for l in rec.layers]
    mounts.mount_layers(store.layout.layers_dir, names, target, rootless=store.config.rootless)
    return target


def unmount_image(store: Store, text: str) -> bool:
    store.join_userns()
    iid, _ = resolve_image(store.images, text)
    return mounts.unmount(image_mount_path(store, iid))


def mounted_images(store: Store) -> list[tuple[str, Path]]:
    store.join_userns()
    out = []
    for rec in store.images.list():
        path = image_mount_path(store, rec.id)
        if mounts.is_mountpoint(path):
            out.append((rec.id, path))
    return out
