"""Read-only image mounts (overlay of the image's layers) inside the per-user mount namespace.

Runs in a process that has joined the namespace holder (rootless) or as real root. Lower directories
are passed relative to the layers directory (we chdir there for the mount call), so an image of ~60
layers still fits the kernel's one-page limit on mount options.
"""
from __future__ import annotations

import os
from pathlib import Path

from pinnace.errors import StorageError
from pinnace.runtime import syscalls


def is_mountpoint(path: Path) -> bool:
    target = str(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f)
    except OSError:
        return False


def mount_layers(layers_dir: Path, layer_names: list[str], target: Path, *, rootless: bool) -> None:
    """Mount layers (bottom first) read-only at target."""
    target.mkdir(parents=True, exist_ok=True)
    if is_mountpoint(target):
        return
    try:
        if not layer_names:
            # an image without layers (valid, if rare) is an empty read-only filesystem
            syscalls.mount("tmpfs", str(target), "tmpfs", syscalls.MS_RDONLY, "size=4k,mode=0755")
            return
        if len(layer_names) == 1:
            # overlay wants two lower layers without an upper one: a read-only bind does the same job
            src = str(layers_dir / layer_names[0])
            syscalls.mount(src, str(target), None, syscalls.MS_BIND, None)
            syscalls.mount(None, str(target), None,
                           syscalls.MS_BIND | syscalls.MS_REMOUNT | syscalls.MS_RDONLY, None)
            return
        options = "lowerdir=" + ":".join(reversed(layer_names))
        if rootless:
            options += ",userxattr"
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(layers_dir)
            syscalls.mount("overlay", str(target), "overlay", syscalls.MS_RDONLY, options)
        finally:
            os.fchdir(cwd)
            os.close(cwd)
    except OSError as exc:
        raise StorageError(f"cannot mount image layers at {target}: {exc}") from None


def unmount(target: Path) -> bool:
    if not is_mountpoint(target):
        return False
    try:
        syscalls.umount2(str(target), syscalls.MNT_DETACH)
    except OSError as exc:
        raise StorageError(f"cannot unmount {target}: {exc}") from None
    return True


def unmount_all(mounts_dir: Path) -> int:
    """Unmount everything below mounts_dir (deepest first)."""
    prefix = str(mounts_dir) + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            targets = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    except OSError:
        return 0
    for t in sorted(targets, key=len, reverse=True):
        try:
            syscalls.umount2(t, syscalls.MNT_DETACH)
        except OSError:
            pass
    return len(targets)
