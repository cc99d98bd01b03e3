"""`volume create|ls|inspect|rm|prune` over the store's VolumeStore."""
from __future__ import annotations

import fnmatch
from dataclasses import asdict

from pinnace.engine.store import Store
from pinnace.errors import InvalidArgument
from pinnace.storage.volumes import VolumeRecord, VolumeStore

FILTER_KEYS = ("name", "label", "dangling", "driver")


def volume_store(store: Store) -> VolumeStore:
    return VolumeStore(store.layout, store.db)


def inspect_dict(v: VolumeRecord) -> dict:
    """Docker's `volume inspect` shape (CreatedAt, Driver, Labels, Mountpoint, Name, Options, Scope)."""
    d = asdict(v)
    return {"Name": d["name"], "Driver": d["driver"], "Mountpoint": d["mountpoint"], "CreatedAt": d["created"],
            "Labels": d["labels"], "Options": d["options"], "Scope": "local"}


def parse_pairs(items: tuple[str, ...], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid {what} {item!r}: expected KEY[=VALUE]")
        pairs[key] = value
    return pairs


def _matches(store: VolumeStore, v: VolumeRecord, key: str, value: str) -> bool:
    if key == "name":
        return fnmatch.fnmatchcase(v.name, value) or value in v.name
    if key == "driver":
        return v.driver == value
    if key == "dangling":
        return (not store.users(v.name)) == (value.lower() in ("true", "1"))
    k, sep, val = value.partition("=")
    return k in v.labels and (not sep or v.labels[k] == val)


def list_volumes(store: Store, filters: tuple[str, ...]) -> list[VolumeRecord]:
    from pinnace.engine.image_list import parse_filters
    parsed = parse_filters(filters, FILTER_KEYS, "volume")
    if not store.layout.db_path.exists():
        return []
    vs = volume_store(store)
    return [v for v in vs.list() if all(_matches(vs, v, k, val) for k, val in parsed)]


def prune_volumes(store: Store, filters: tuple[str, ...]) -> list[str]:
    vs = volume_store(store)
    removed = []
    for v in list_volumes(store, filters):
        if not vs.users(v.name):
            vs.remove(v.name)
            removed.append(v.name)
    return removed
