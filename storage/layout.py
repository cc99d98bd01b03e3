"""Where everything of one store lives on disk. One place, so no module invents its own paths."""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from pinnace.errors import InvalidArgument, StorageError

_HEX = re.compile(r"^[0-9a-f]{64}$")


def digest_hex(digest: str) -> str:
    """'sha256:abc…' → 'abc…' (validated, so a digest can never become a path like '../x')."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not _HEX.match(hexpart):
        raise InvalidArgument(f"invalid digest {digest!r}: expected sha256:<64 hex>")
    return hexpart


@dataclass(frozen=True)
class StoreLayout:
    root: Path      # persistent data: state.db, blobs, layers
    runroot: Path   # volatile: holder pid, mounts, sockets

    @property
    def db_path(self) -> Path:
        return self.root / "state.db"

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def layers_dir(self) -> Path:
        return self.root / "layers"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def mounts_dir(self) -> Path:
        return self.runroot / "mounts"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest_hex(digest)

    def layer_path(self, diff_id: str) -> Path:
        return self.layers_dir / digest_hex(diff_id)

    def lock_path(self, kind: str, name: str) -> Path:
        return self.locks_dir / f"{kind}-{name}.lock"

    # What pinnace itself puts in root and runroot: `system reset` removes these and nothing else, since
    # --root/--runroot may name a directory that holds other things too.
    ROOT_ENTRIES = ("state.db", "state.db-wal", "state.db-shm", "blobs", "layers", "containers", "volumes", "networks", "build-cache", "storage-driver.json", "locks", "tmp",
                    ".single-mapping-warned")
    RUNROOT_ENTRIES = ("mounts",)

    def create_dirs(self) -> None:
        for d in (self.root, self.runroot):
            if not d.exists():
                # new store directories are private: they hold files owned by subordinate ids
                d.parent.mkdir(parents=True, exist_ok=True)
                try:
                    d.mkdir(mode=0o700)
                except FileExistsError:
                    pass
        for d in (self.blobs_dir, self.layers_dir, self.locks_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        # The runroot may be /tmp/pinnace-run-UID (no XDG_RUNTIME_DIR): refuse one another user made for us.
        for d in (self.root, self.runroot):
            st = os.lstat(d)
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
                raise StorageError(f"{d} is not a directory owned by you: refusing to use it (another user may have "
                                   "created it; use --runroot or set XDG_RUNTIME_DIR)")

    def partial_name(self, final: Path) -> Path:
        """Name of a half-written object: cleaned by the next process that takes the object's lock."""
        return final.with_name(f"{final.name}.partial-{os.getpid()}")
