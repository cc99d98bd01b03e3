"""Read-only image mounts (overlay of the image's layers) inside the per-user mount namespace.

Runs in a process that has joined the namespace holder (rootless) or as real root. Overlay mounts use
the new mount API (one `lowerdir+` per layer: no limit on the number of layers), falling back to
mount(2) on older kernels.
"""
from __future__ import annotations

import errno
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


def mount_overlay(layer_dirs: list[Path], target: Path, *, upper: Path | None = None, work: Path | None = None,
                  rootless: bool, readonly: bool = False, volatile: bool = False) -> None:
    """Mount an overlay of layer_dirs (bottom first), with an optional upper/work pair for writes.

    With the new mount API each lower layer is its own `lowerdir+` call, so any number of layers fits;
    kernels before 6.8 (no `lowerdir+`) fall back to mount(2) with paths relative to the layers'
    directory, which fits about 60 layers in the one-page option string."""
    try:
        _mount_overlay_fsconfig(layer_dirs, target, upper, work, rootless, readonly, volatile)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    parent = layer_dirs[0].parent
    options = "lowerdir=" + ":".join(str(d.relative_to(parent)) if d.parent == parent else str(d)
                                     for d in reversed(layer_dirs))
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work}"
    if rootless:
        options += ",userxattr"
    if volatile and upper is not None:
        options += ",volatile"
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(parent)
        syscalls.mount("overlay", str(target), "overlay", syscalls.MS_RDONLY if readonly else 0, options)
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def _mount_overlay_fsconfig(layer_dirs: list[Path], target: Path, upper: Path | None, work: Path | None,
                            rootless: bool, readonly: bool, volatile: bool = False) -> None:
    fs_fd = syscalls.fsopen("overlay")
    try:
        for d in reversed(layer_dirs):  # lowerdir+ goes from the top layer down
            syscalls.fsconfig_string(fs_fd, "lowerdir+", d)
        if upper is not None and work is not None:
            syscalls.fsconfig_string(fs_fd, "upperdir", upper)
            syscalls.fsconfig_string(fs_fd, "workdir", work)
        if rootless:
            syscalls.fsconfig_flag(fs_fd, "userxattr")
        if volatile and upper is not None:
            syscalls.fsconfig_flag(fs_fd, "volatile")
        syscalls.fsconfig_create(fs_fd)
        mnt_fd = syscalls.fsmount(fs_fd, syscalls.MOUNT_ATTR_RDONLY if readonly else 0)
        try:
            syscalls.move_mount_to(mnt_fd, target)
        finally:
            os.close(mnt_fd)
    finally:
        os.close(fs_fd)


def mount_layers(layers_dir: Path, layer_names: list[str], target: Path, *, rootless: bool) -> None:
    """Mount an image's layers (bottom first) read-only at target."""
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
        mount_overlay([layers_dir / n for n in layer_names], target, rootless=rootless, readonly=True)
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


def overlay_usable(rootless: bool, scratch: Path | None = None) -> tuple[bool, str]:
    """Can this process mount the kernel's overlayfs (with an upper dir)? Tried for real in a scratch
    directory (the caller is inside the user namespace when rootless); (ok, why not)."""
    import shutil
    import tempfile
    base = Path(tempfile.mkdtemp(prefix="pinnace-ovl-", dir=str(scratch) if scratch else None))
    try:
        for sub in ("lower", "upper", "work", "merged"):
            (base / sub).mkdir()
        try:
            mount_overlay([base / "lower"], base / "merged", upper=base / "upper", work=base / "work",
                          rootless=rootless)
        except OSError as exc:
            return False, exc.strerror or str(exc)
        unmount(base / "merged")
        return True, ""
    finally:
        shutil.rmtree(base, ignore_errors=True)
