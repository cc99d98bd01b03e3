"""Storage drivers for containers' root filesystems: the image's layers (read-only, bottom first) plus
the container's own upper directory, mounted at one target.

Only the kernel overlay driver exists now (in the user namespace, with `userxattr` and the new mount
API); the `fuse` and `vfs` drivers of the storage-drivers milestone implement the same two methods, and
`driver_for` picks by the name `--storage-driver` / `info` show.
"""
from __future__ import annotations

from pathlib import Path

from pinnace.errors import InvalidArgument, StorageError
from pinnace.runtime import mounts


class OverlayDriver:
    name = "overlay"

    def __init__(self, rootless: bool):
        self.rootless = rootless

    def mount(self, layers: list[Path], upper: Path, work: Path, target: Path, *, volatile: bool = False) -> None:
        """`volatile`: no syncs to the upper layer (overlay's `volatile`), for containers whose layer is
        thrown away at exit (`--rm`), as Podman does; a crash can lose or corrupt that layer only."""
        if mounts.is_mountpoint(target):
            return
        layers = topmost_only(layers)
        try:
            if layers:
                mounts.mount_overlay(layers, target, upper=upper, work=work, rootless=self.rootless,
                                     volatile=volatile)
            else:  # an image without layers: the upper dir alone is the rootfs
                from pinnace.runtime import syscalls
                syscalls.mount(str(upper), str(target), None, syscalls.MS_BIND, None)
        except OSError as exc:
            raise StorageError(f"cannot mount the container's root filesystem at {target}: {exc}") from None

    def unmount(self, target: Path) -> bool:
        return mounts.unmount(target)


def topmost_only(layers: list[Path]) -> list[Path]:
    """The same layer twice in one image (two RUN steps that changed nothing share the empty layer):
    overlayfs refuses a lower directory given twice (ELOOP). Keeping only its topmost occurrence shows
    the same tree: that copy covers everything the lower one could have contributed or hidden."""
    seen: set[Path] = set()
    kept: list[Path] = []
    for layer in reversed(layers):
        if layer not in seen:
            seen.add(layer)
            kept.append(layer)
    return kept[::-1]


def driver_for(name: str, *, rootless: bool) -> OverlayDriver:
    if name == "overlay":
        return OverlayDriver(rootless)
    raise InvalidArgument(f"storage driver {name!r} is not available")
