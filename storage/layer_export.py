"""Write a layer directory (overlay form) back as an OCI layer tar.

The inverse of layer_apply: 0:0 character devices become `.wh.NAME`, the opaque xattr becomes
`DIR/.wh..wh..opq`, files sharing an inode become tar hard links to the first path, xattrs go into PAX
`SCHILY.xattr.*` records (overlay's private ones excepted). Output is deterministic for a given tree:
entries sorted by name with parents first, numeric ids only, whole-second mtimes, PAX format.
"""
from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

from pinnace.errors import LayerError
from pinnace.storage.layer_apply import OPAQUE_MARKER, WHITEOUT_PREFIX

_PRIVATE_XATTRS = ("trusted.overlay.", "user.overlay.")
_COPY_BUFFER = 1 << 20


class _Exporter:
    def __init__(self, tf: tarfile.TarFile, xattr_prefix: str):
        self.tf = tf
        self.prefix = xattr_prefix
        self.inodes: dict[tuple[int, int], str] = {}

    def _info(self, name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = st.st_mtime_ns // 1_000_000_000
        return info

    def _xattrs(self, path: str, info: tarfile.TarInfo) -> dict[str, bytes]:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return {}
        values = {}
        for key in sorted(names):
            try:
                values[key] = os.getxattr(path, key, follow_symlinks=False)
            except OSError:
                continue
        for key, value in values.items():
            if not key.startswith(_PRIVATE_XATTRS + (self.prefix,)):
                # tarfile writes surrogate-escaped strings back as the original bytes (hdrcharset=BINARY)
                info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
        return values

    def walk(self, dir_fd: int, rel: str) -> None:
        for name in sorted(os.listdir(dir_fd)):
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            path = rel + name
            proc = f"/proc/self/fd/{dir_fd}/{name}"  # dir fd magic link: the last component is not followed
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                info = self._info(rel + WHITEOUT_PREFIX + name, st, tarfile.REGTYPE)
                info.mode, info.uid, info.gid = 0o600, 0, 0
                self.tf.addfile(info)
            elif stat.S_ISDIR(mode):
                info = self._info(path, st, tarfile.DIRTYPE)
                xattrs = self._xattrs(proc, info)
                self.tf.addfile(info)
                if xattrs.get(self.prefix + "opaque") == b"y":
                    self._opaque(path + "/", st)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    self.walk(fd, path + "/")
                finally:
                    os.close(fd)
            elif stat.S_ISREG(mode):
                first = self.inodes.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if first is not None:
                    info = self._info(path, st, tarfile.LNKTYPE)
                    info.linkname = first
                    self.tf.addfile(info)
                    continue
                if st.st_nlink > 1:
                    self.inodes[(st.st_dev, st.st_ino)] = path
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                with open(fd, "rb", buffering=0) as f:
                    st = os.fstat(fd)
                    info = self._info(path, st, tarfile.REGTYPE)
                    info.size = st.st_size
                    self._xattrs(proc, info)
                    self.tf.addfile(info, f)
            elif stat.S_ISLNK(mode):
                info = self._info(path, st, tarfile.SYMTYPE)
                info.linkname = os.readlink(name, dir_fd=dir_fd)
                self._xattrs(proc, info)
                self.tf.addfile(info)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else (
                    tarfile.BLKTYPE if stat.S_ISBLK(mode) else tarfile.FIFOTYPE)
                info = self._info(path, st, kind)
                if kind != tarfile.FIFOTYPE:
                    info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                self._xattrs(proc, info)
                self.tf.addfile(info)
            # sockets are not part of images: skipped

    def _opaque(self, dir_rel: str, st: os.stat_result) -> None:
        info = self._info(dir_rel + OPAQUE_MARKER, st, tarfile.REGTYPE)
        info.mode = stat.S_IMODE(st.st_mode) & 0o777
        self.tf.addfile(info)


def export_layer(root: Path, dst: BinaryIO, xattr_prefix: str = "user.overlay.") -> None:
    """Write the layer directory `root` to `dst` as an uncompressed OCI layer tar (stream: no seeks)."""
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise LayerError(f"cannot open layer directory {root}: {e.strerror}") from None
    try:
        with tarfile.open(fileobj=dst, mode="w|", format=tarfile.PAX_FORMAT,
                          copybufsize=_COPY_BUFFER) as tf:
            exporter = _Exporter(tf, xattr_prefix)
            try:
                opaque = os.getxattr(root_fd, xattr_prefix + "opaque") == b"y"
            except OSError:
                opaque = False
            if opaque:
                exporter._opaque("", os.fstat(root_fd))
            exporter.walk(root_fd, "")
    except OSError as e:
        raise LayerError(f"cannot export layer directory {root}: {e.strerror or e}") from None
    finally:
        os.close(root_fd)
