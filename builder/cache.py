"""The build cache: what a step produced, found again by what it depended on.

A step's key is a hash of its parent's key, the instruction as executed (after substitution), the build
args in scope and, for COPY/ADD, the checksum of the files it reads (content, modes, owners — not
mtimes). The entry is the whole image config after the step (history included, so a fully cached
rebuild yields the same image ID, as with Docker); it is valid while every layer it names is in the
store. Entries are small JSON files in `<root>/build-cache/`, written atomically, shared by all builds.
"""
from __future__ import annotations

import hashlib
import json
import os

from pinnace.engine.store import Store


def step_key(parent: str, *parts: object) -> str:
    data = json.dumps([parent, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()


class BuildCache:
    def __init__(self, store: Store, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled
        self.dir = store.layout.root / "build-cache"

    def get(self, key: str) -> dict | None:
        if not self.enabled:
            return None
        try:
            with open(self.dir / f"{key}.json") as f:
                config = json.load(f)
        except (OSError, ValueError):
            return None
        if any(self.store.layers.get(d) is None for d in config.get("rootfs", {}).get("diff_ids", [])):
            return None  # a layer went with the images that used it
        return config

    def put(self, key: str, config: dict) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(config, separators=(",", ":")))
        os.replace(tmp, self.dir / f"{key}.json")

    def mount_dir(self, cache_id: str) -> str:
        """The persistent directory of a `RUN --mount=type=cache` id."""
        path = self.dir / "mounts" / hashlib.sha256(cache_id.encode()).hexdigest()[:32]
        path.mkdir(parents=True, exist_ok=True, mode=0o755)
        return str(path)
