"""Default store locations by the XDG rules — stdlib `os` only, because every command needs them first
(`pinnace images` must answer in ~20 ms: pathlib, dataclasses and platformdirs are not loaded for it)."""
from __future__ import annotations

import os


def default_root(rootless: bool) -> str:
    if not rootless:
        return "/var/lib/pinnace"
    # platformdirs' user_data_dir on Linux, inline (importing platformdirs costs ~10 ms)
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "pinnace")


def default_runroot(rootless: bool) -> str:
    if not rootless:
        return "/run/pinnace"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK):
        return os.path.join(xdg, "pinnace")
    # No logind session (cron, su, CI): a private directory in /tmp, like Podman's fallback.
    return f"/tmp/pinnace-run-{os.geteuid()}"


def store_paths(root: str | None, runroot: str | None) -> tuple[str, str]:
    """(root, runroot) from flags, then PINNACE_ROOT/PINNACE_RUNROOT, then the defaults; absolute."""
    rootless = os.geteuid() != 0
    root = root or os.environ.get("PINNACE_ROOT") or default_root(rootless)
    runroot = runroot or os.environ.get("PINNACE_RUNROOT") or default_runroot(rootless)
    return os.path.abspath(root), os.path.abspath(runroot)
