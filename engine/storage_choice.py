"""Which storage driver a store uses, chosen once and recorded.

Order of preference when nothing is asked for: the kernel's overlayfs (fastest), else pinnace's FUSE
overlay, else vfs (full copies). A request (`--storage-driver`, PINNACE_STORAGE_DRIVER, or `driver = …`
in the config dir's storage.conf) wins; the choice and its reason go to `<root>/storage-driver.json`.
A store that already holds containers made with one driver refuses another one instead of switching
silently (their root filesystems would not be found): the error says how to switch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pinnace.errors import InvalidArgument

DRIVERS = ("overlay", "fuse", "vfs")
RECORD = "storage-driver.json"


def configured(config_dir: Path) -> str | None:
    """`driver = "NAME"` from <config dir>/storage.conf ([storage] table as Podman writes it, or top level)."""
    path = config_dir / "storage.conf"
    try:
        import tomllib
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, ValueError):
        return None
    value = (data.get("storage") or {}).get("driver") or data.get("driver")
    return str(value) if value else None


def recorded(root: Path) -> dict | None:
    try:
        with open(root / RECORD) as f:
            data = json.load(f)
        return data if data.get("driver") in DRIVERS else None
    except (OSError, ValueError):
        return None


def has_containers(root: Path) -> bool:
    try:
        return any(os.scandir(root / "containers"))
    except OSError:
        return False


def record(root: Path, driver: str, reason: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{RECORD}.{os.getpid()}"
    tmp.write_text(json.dumps({"driver": driver, "reason": reason}))
    os.replace(tmp, root / RECORD)


def probe(rootless: bool) -> tuple[str, str]:
    """(driver, why) for a new store on this machine."""
    from pinnace.runtime.mounts import overlay_usable
    ok, why = overlay_usable(rootless)
    if ok:
        return "overlay", "the kernel's overlayfs works here" + (" (in the user namespace, userxattr)" if rootless else "")
    try:
        from pinnace.storage.fuse_overlay import check_fuse_available
        problem = check_fuse_available()
    except ImportError as exc:
        problem = f"the FUSE library is missing ({exc})"
    if problem is None:
        return "fuse", f"kernel overlayfs unavailable ({why}); FUSE works"
    return "vfs", f"kernel overlayfs unavailable ({why}) and FUSE unusable ({problem}): full copies"


def choose(root: Path, requested: str | None, rootless: bool, config_dir: Path | None = None) -> tuple[str, str]:
    """The driver for this store and why; records a new choice."""
    want = requested or (configured(config_dir) if config_dir else None)
    if want is not None and want not in DRIVERS:
        raise InvalidArgument(f"unknown storage driver {want!r} (available: {', '.join(DRIVERS)})")
    have = recorded(root)
    if have is not None:
        if want is None or want == have["driver"]:
            return have["driver"], have.get("reason", "recorded")
        if has_containers(root):
            raise InvalidArgument(
                f"this store ({root}) holds containers of the {have['driver']} storage driver: remove them "
                f"(`pinnace rm -af`) or use another --root to use {want}")
        record(root, want, "requested")
        return want, "requested"
    if want is not None:
        record(root, want, "requested")
        return want, "requested"
    driver, why = probe(rootless)
    record(root, driver, why)
    return driver, why
