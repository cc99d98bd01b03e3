"""One open store: layout, database, blobs, layers, images, and the user namespace for writers.

Readers (`images`, `inspect`) only open the database. Writers first join the per-user namespace, where
they are uid 0 and can create files owned by every mapped id; they must do that before starting threads.
"""
from __future__ import annotations

from functools import cached_property

from pinnace.engine.config import EngineConfig
from pinnace.storage.db import Database
from pinnace.storage.images import ImageStore
from pinnace.storage.layout import StoreLayout


class Store:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.layout = StoreLayout(config.root, config.runroot)
        self.single_mapping = False
        self._joined = False

    # -- namespaces --------------------------------------------------------------------------------
    def join_userns(self) -> None:
        """Enter the user (and mount) namespace of this user's holder; no-op for root or when done."""
        if self._joined or not self.config.rootless:
            self._joined = True
            return
        from pinnace.runtime.nsjoin import join_existing
        if join_existing(self.layout.runroot):  # the common case, without userns.py's imports
            with open("/proc/self/uid_map") as f:
                self.single_mapping = len(f.read().split()) <= 3
        else:
            self.layout.runroot.mkdir(parents=True, exist_ok=True)
            from pinnace.runtime.userns import ensure_joined
            self.single_mapping = ensure_joined(self.layout.runroot).single_mapping
        self._joined = True

    def first_single_mapping_warning(self) -> bool:
        """True once per store: the single-uid fallback is worth one warning, not one per command."""
        marker = self.layout.root / ".single-mapping-warned"
        if marker.exists():
            return False
        self.layout.create_dirs()
        marker.touch()
        return True

    @property
    def overlay_xattr_prefix(self) -> str:
        # Rootless overlay mounts use `userxattr`, which reads user.overlay.*; real root uses trusted.*.
        return "user.overlay." if self.config.rootless else "trusted.overlay."

    # -- the storage driver ----------------------------------------------------------------------------
    def driver_name(self) -> str:
        """The storage driver of this store: asked for, recorded, or probed now (and recorded)."""
        cached = self.__dict__.get("_driver")
        if cached is None:
            from pinnace.engine.config import config_dir
            from pinnace.engine.storage_choice import choose
            self.join_userns()  # a probe mounts for real, where the containers' mounts will be
            cached, self.driver_reason = choose(self.layout.root, self.config.storage_driver or None,
                                                self.config.rootless, config_dir())
            self.__dict__["_driver"] = cached
        return cached

    def driver_shown(self) -> str:
        """For inspect/info without probing: asked for, else recorded, else what a probe would most likely say."""
        from pinnace.engine.storage_choice import recorded
        rec = recorded(self.layout.root)
        return self.config.storage_driver or (rec["driver"] if rec else "overlay")

    # -- parts -------------------------------------------------------------------------------------
    def open_for_write(self) -> "Store":
        self.join_userns()
        self.layout.create_dirs()
        return self

    @cached_property
    def db(self) -> Database:
        if not self.layout.db_path.exists():
            self.layout.create_dirs()
        return Database(self.layout.db_path)

    @cached_property
    def blobs(self):  # noqa: ANN201 - BlobStore (imported here: `images` does not need it)
        from pinnace.storage.blobs import BlobStore
        return BlobStore(self.layout)

    @cached_property
    def layers(self):  # noqa: ANN201 - LayerStore
        from pinnace.storage.layers import LayerStore
        return LayerStore(self.layout, self.db)

    @cached_property
    def images(self) -> ImageStore:
        return ImageStore(self.db)

    def gc_lock(self, *, shared: bool):  # noqa: ANN201 - FileLock
        """Writers that add objects hold it shared; garbage collection holds it exclusive, so it never
        deletes a layer that a running pull has unpacked but not yet recorded in an image."""
        from pinnace.storage.locks import FileLock
        self.layout.locks_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.layout.lock_path("store", "gc"), shared=shared)

    def close_db(self) -> None:
        """Close the connection (before a fork whose child must not share it); reopened on next use."""
        db = self.__dict__.pop("db", None)
        if db is not None:
            db.close()
        for part in ("layers", "images"):
            self.__dict__.pop(part, None)

    def close(self) -> None:
        self.close_db()
