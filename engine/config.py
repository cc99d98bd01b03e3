"""Where this user's store lives, resolved from flags, PINNACE_* variables and XDG defaults."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pinnace.errors import InvalidArgument

STORAGE_DRIVERS = ("overlay",)   # fuse and vfs arrive with the storage-drivers issue


@dataclass(frozen=True)
class EngineConfig:
    root: Path
    runroot: Path
    storage_driver: str
    rootless: bool


def _default_runroot(uid: int) -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return Path(xdg) / "pinnace"
    # No logind session (cron, su, CI): a private directory in /tmp, like Podman's fallback.
    return Path(f"/tmp/pinnace-run-{uid}")


def resolve_config(root: str | None = None, runroot: str | None = None,
                   storage_driver: str | None = None) -> EngineConfig:
    uid = os.geteuid()
    rootless = uid != 0
    root = root or os.environ.get("PINNACE_ROOT")
    runroot = runroot or os.environ.get("PINNACE_RUNROOT")
    if not root:
        if rootless:
            # The XDG rule platformdirs applies on Linux, inline: importing platformdirs costs ~10 ms,
            # which `pinnace images` cannot afford (see config_dir for where platformdirs is used).
            data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
            root = str(Path(data) / "pinnace")
        else:
            root = "/var/lib/pinnace"
    if not runroot:
        runroot = str(_default_runroot(uid)) if rootless else "/run/pinnace"
    driver = storage_driver or os.environ.get("PINNACE_STORAGE_DRIVER") or "overlay"
    if driver not in STORAGE_DRIVERS:
        raise InvalidArgument(f"unknown storage driver {driver!r} (available: {', '.join(STORAGE_DRIVERS)})")
    return EngineConfig(Path(root).absolute(), Path(runroot).absolute(), driver, rootless)


def config_dir() -> Path:
    """~/.config/pinnace (or /etc/pinnace for root): pinnace's own settings (storage.conf and later more)."""
    if os.geteuid() == 0:
        return Path("/etc/pinnace")
    from platformdirs import user_config_path
    return user_config_path("pinnace")
