"""Storage drivers for containers' root filesystems: the image's layers (read-only, bottom first) plus
the container's own upper directory, presented at one target.

- `overlay`: the kernel's overlayfs (in the user namespace, with `userxattr` and the new mount API);
- `fuse`: pinnace's own overlay filesystem in FUSE (storage/fuse_overlay.py), one small daemon process per
  mounted rootfs, started detached so it outlives the command that mounted it; unmounting ends it. It
  writes the upper directory in the kernel's format, so everything that reads uppers works unchanged;
- `vfs`: a full copy of the layers per container (storage/vfs.py; reflinks where the filesystem has
  them); nothing is mounted, and the upper directory that commit/build/diff need is computed by
  comparing the copy with the layers (`upper_dir`).
`driver_for` picks by the name `--storage-driver` / `info` show (engine/storage_choice.py chooses it).
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

    def upper_dir(self, layers: list[Path], container_dir: Path) -> Path:
        """The container's changes in overlay upper form (whiteouts, opaque dirs)."""
        return container_dir / "diff"

    def stub_root(self, container_dir: Path) -> Path:
        """Where mount points the runtime created show up (the upper dir, or the copy for vfs)."""
        return container_dir / "diff"


class FuseDriver(OverlayDriver):
    name = "fuse"

    def mount(self, layers: list[Path], upper: Path, work: Path, target: Path, *, volatile: bool = False) -> None:
        if mounts.is_mountpoint(target):
            return
        if not layers:  # an image without layers: the upper dir alone, bound (no overlay to serve)
            super().mount(layers, upper, work, target, volatile=volatile)
            return
        from pinnace.storage.fuse_overlay import check_fuse_available
        problem = check_fuse_available()
        if problem:
            raise StorageError(f"the fuse storage driver cannot be used: {problem}")
        spawn_fuse_daemon(topmost_only(layers), upper, work, target,
                          "user.overlay." if self.rootless else "trusted.overlay.")

    def unmount(self, target: Path) -> bool:
        # a detached unmount also works when the daemon died (ENOTCONN); the daemon exits with its mount
        return mounts.unmount(target)


class VfsDriver(OverlayDriver):
    name = "vfs"
    MARK = ".vfs-complete"

    def mount(self, layers: list[Path], upper: Path, work: Path, target: Path, *, volatile: bool = False) -> None:
        mark = target.parent / self.MARK
        if mark.exists():
            return  # the copy is the container's state: made once, kept across stop and start
        from pinnace.storage.layers import remove_tree
        from pinnace.storage.vfs import materialize
        if any(target.iterdir()):
            remove_tree(target)  # a copy interrupted half-way
            target.mkdir(mode=0o755)
        materialize([str(l) for l in layers], str(target), xattr_prefix=self._prefix())
        mark.touch()

    def unmount(self, target: Path) -> bool:
        return False  # nothing is mounted

    def upper_dir(self, layers: list[Path], container_dir: Path) -> Path:
        from pinnace.storage.layers import remove_tree
        from pinnace.storage.vfs import changes
        upper = container_dir / "vfs-diff"
        if upper.exists():
            remove_tree(upper)
        upper.mkdir(mode=0o755)
        changes([str(l) for l in topmost_only(layers)], str(container_dir / "merged"), str(upper),
                xattr_prefix=self._prefix())
        return upper

    def stub_root(self, container_dir: Path) -> Path:
        return container_dir / "merged"

    def _prefix(self) -> str:
        return "user.overlay." if self.rootless else "trusted.overlay."


def spawn_fuse_daemon(layers: list[Path], upper: Path, work: Path, target: Path, xattr_prefix: str,
                      timeout: float = 20.0) -> int:
    """Start `pinnace __fuse-overlay` detached (its own session, reparented at once) and wait until its
    mount is live; returns its pid. It inherits our namespaces: the user and mount namespace of the holder
    when rootless, where the container's mounts live."""
    import os
    from pinnace.runtime.selfexec import detach, read_answer, role_argv
    read_fd, write_fd = os.pipe()
    args = ["__fuse-overlay", "--ready-fd", str(write_fd), "--upper", str(upper), "--work", str(work),
            "--xattr-prefix", xattr_prefix]
    for layer in layers:
        args += ["--lower", str(layer)]
    argv = role_argv(*args, str(target))
    pid = os.fork()
    if pid == 0:
        try:
            detach({write_fd})
            if os.fork() != 0:
                os._exit(0)  # reparented at once: nobody has to reap it
            os.set_inheritable(write_fd, True)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(write_fd)
    os.waitpid(pid, 0)
    message = read_answer(read_fd, timeout)
    if message != "ok":
        raise StorageError(f"the fuse overlay did not start at {target}: {message or 'no answer'}")
    return 0


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


DRIVERS = {"overlay": OverlayDriver, "fuse": FuseDriver, "vfs": VfsDriver}


def driver_for(name: str, *, rootless: bool) -> OverlayDriver:
    if name in DRIVERS:
        return DRIVERS[name](rootless)
    raise InvalidArgument(f"storage driver {name!r} is not available")
