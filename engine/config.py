"""Where this user's store lives, resolved from flags, PINNACE_* variables and XDG defaults."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pinnace.engine.paths import store_paths
from pinnace.errors import InvalidArgument

STORAGE_DRIVERS = ("overlay", "fuse", "vfs")


@dataclass(frozen=True)
class EngineConfig:
    """Resolved settings of one engine instance."""

    root: Path
    runroot: Path
    storage_driver: str
    rootless: bool


def resolve_config(root: str | None = None, runroot: str | None = None,
                   storage_driver: str | None = None) -> EngineConfig:
    root, runroot = store_paths(root, runroot)
    # "" = not asked for: the store's recorded choice, or a probe when a root filesystem is first needed
    # (engine/storage_choice.py; Store.driver_name)
    driver = storage_driver or os.environ.get("PINNACE_STORAGE_DRIVER") or ""
    if driver and driver not in STORAGE_DRIVERS:
        raise InvalidArgument(f"unknown storage driver {driver!r} (available: {', '.join(STORAGE_DRIVERS)})")
    return EngineConfig(Path(root), Path(runroot), driver, os.geteuid() != 0)


def config_dir() -> Path:
    """~/.config/pinnace (or /etc/pinnace for root): pinnace's own settings (storage.conf and later more)."""
    if os.geteuid() == 0:
        return Path("/etc/pinnace")
    from platformdirs import user_config_path
    return user_config_path("pinnace")
