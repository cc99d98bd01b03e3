"""Cache coherence between the names of a hard-linked file in the FUSE overlay (storage/fuse_ops.py).

The high-level libfuse API gives every name its own kernel inode, so a change through one name (data,
st_nlink, mode, owner, times, xattrs) would leave the other names' cached attributes stale for the
attribute timeout. The names of multi-linked upper files seen so far are kept per inode, and the others'
kernel caches are dropped (libfuse 3's fuse_invalidate_path) after link, unlink, rename, a metadata change,
and close after writing (close-to-open coherence: at FLUSH, which close(2) waits for). Without libfuse 3 (`invalidate` None) nothing is kept.
"""
from __future__ import annotations

import os


class LinkPeers:
    def __init__(self):
        self.invalidate = None  # (paths) -> None, set by the binding
        self._names: dict[tuple[int, int], set[str]] = {}
        self._dirty: dict[int, tuple[int, int]] = {}  # write fh of a multi-linked file -> its inode

    def note(self, path: str, st: os.stat_result) -> None:
        """`path` names the upper file `st` (called on stat/open/link)."""
        if st.st_nlink > 1 and self.invalidate is not None:
            self._names.setdefault((st.st_dev, st.st_ino), set()).add(path)

    def changed(self, path: str, real: str, st: os.stat_result | None = None) -> None:
        """The file at `path` (upper path `real`) changed: drop what the kernel caches for its other names."""
        if self.invalidate is None:
            return
        if st is None:
            try:
                st = os.lstat(real)
            except OSError:
                return
        names = self._names.get((st.st_dev, st.st_ino))
        if not names:
            return
        others = [n for n in names if n != path]
        if others:
            self.invalidate(others)

    def opened_for_write(self, fd: int, st: os.stat_result) -> None:
        if self.invalidate is not None:
            self._dirty[fd] = (st.st_dev, st.st_ino)

    def flushed(self, fd: int) -> None:
        """close() of `fd` (FUSE_FLUSH, which close waits for; RELEASE comes later, asynchronously): if it
        wrote to a multi-linked file, every name is refreshed."""
        key = self._dirty.get(fd)
        if key is not None and self._names.get(key):
            self.invalidate(list(self._names[key]))

    def released(self, fd: int) -> None:
        self._dirty.pop(fd, None)

    def removed(self, path: str, st: os.stat_result) -> None:
        """The name `path` of the upper file `st` is gone (unlink, or replaced by a rename)."""
        key = (st.st_dev, st.st_ino)
        names = self._names.get(key)
        if names is None:
            return
        names.discard(path)
        if names and self.invalidate is not None:
            self.invalidate(list(names))  # their st_nlink changed
        else:
            self._names.pop(key, None)

    def renamed(self, old: str, new: str, st: os.stat_result) -> None:
        names = self._names.get((st.st_dev, st.st_ino))
        if names is not None:
            names.discard(old)
            names.add(new)
