"""Build normal and hostile layer tars in memory for tests, and describe unpacked trees for comparison.

tarfile writes whatever names it is given (`../x`, `/etc/x`, links anywhere), which is what hostile
layers need. Sparse archives come from GNU tar, the tool that defines those formats.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

MTIME = 1704067200  # 2024-01-01T00:00:00Z, the fixtures' mtime


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int,
          xattrs: dict[str, bytes] | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.uname = info.gname = ""
    for key, value in (xattrs or {}).items():
        info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return info


def file(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int = MTIME,
         xattrs: dict[str, bytes] | None = None):
    info = _info(name, tarfile.REGTYPE, mode, uid, gid, mtime, xattrs)
    info.size = len(data)
    return info, data


def directory(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = MTIME,
              xattrs: dict[str, bytes] | None = None):
    return _info(name, tarfile.DIRTYPE, mode, uid, gid, mtime, xattrs), None


def symlink(name: str, target: str, uid: int = 0, gid: int = 0, mtime: int = MTIME):
    info = _info(name, tarfile.SYMTYPE, 0o777, uid, gid, mtime, None)
    info.linkname = target
    return info, None


def hardlink(name: str, target: str, mode: int = 0o644, uid: int = 0, gid: int = 0):
    info = _info(name, tarfile.LNKTYPE, mode, uid, gid, MTIME, None)
    info.linkname = target
    return info, None


def device(name: str, major: int, minor: int, block: bool = False, mode: int = 0o666):
    info = _info(name, tarfile.BLKTYPE if block else tarfile.CHRTYPE, mode, 0, 0, MTIME, None)
    info.devmajor, info.devminor = major, minor
    return info, None


def fifo(name: str, mode: int = 0o644):
    return _info(name, tarfile.FIFOTYPE, mode, 0, 0, MTIME, None), None


def whiteout(parent: str, name: str):
    """OCI whiteout of `parent/name` (empty regular file `.wh.name`)."""
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0o600)


def opaque(directory_name: str):
    return file(f"{directory_name}/.wh..wh..opq", mode=0o600)


def build(*members, fmt: int = tarfile.PAX_FORMAT, global_pax: dict[str, str] | None = None,
          trailing_zeros: int = 0) -> bytes:
    """The tar bytes of `members` (pairs from the helpers above), plus optional junk-free padding."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=global_pax or {}) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue() + bytes(trailing_zeros)


def gnu_sparse(workdir: Path, variant: str) -> tuple[bytes, bytes]:
    """A GNU tar archive of one sparse file `sparse.bin` (1 MiB data, 8 MiB hole, 4 KiB data, 3 MiB hole).
    variant: "gnu" (old GNU headers) or the PAX sparse versions "0.0", "0.1", "1.0".
    Returns (archive, expected content)."""
    src = workdir / f"sparse-src-{variant}"
    src.mkdir()
    content = bytearray(13 * 1024 * 1024 + 4096)
    content[:1 << 20] = os.urandom(1 << 20)
    content[9 << 20:(9 << 20) + 4096] = b"x" * 4096
    with open(src / "sparse.bin", "wb") as f:
        f.write(content[:1 << 20])
        f.seek(9 << 20)
        f.write(content[9 << 20:(9 << 20) + 4096])
        f.truncate(len(content))
    fmt = ["--format=gnu"] if variant == "gnu" else ["--format=posix", f"--sparse-version={variant}"]
    archive = subprocess.run(["tar", "--sparse", *fmt, "--numeric-owner", "-cf", "-", "-C", str(src),
                              "sparse.bin"], check=True, capture_output=True).stdout
    return archive, bytes(content)


def fixture_blob(digest: str) -> Path:
    """A blob of the fixture OCI layout (same directory rule as conftest's FIXTURES_DIR)."""
    base = Path(os.environ.get("PINNACE_FIXTURES_DIR")
                or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pinnace-fixtures")
    return base / "oci/blobs/sha256" / digest.split(":", 1)[1]


def snapshot(root: Path, mtimes: bool = True) -> dict[str, tuple]:
    """path -> (type+mode, uid, gid, mtime, xattrs, size/target/rdev, sha256) for every entry below root,
    plus a "<hardlinks>" key listing groups of paths sharing an inode."""
    out: dict[str, tuple] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            xattrs = {}
            try:
                for key in os.listxattr(path, follow_symlinks=False):
                    xattrs[key] = os.getxattr(path, key, follow_symlinks=False)
            except OSError:
                pass
            mode = st.st_mode
            detail: object = None
            if stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    detail = (st.st_size, hashlib.sha256(f.read()).hexdigest())
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                detail = (os.major(st.st_rdev), os.minor(st.st_rdev))
            mtime = st.st_mtime_ns if mtimes and not stat.S_ISLNK(mode) else None
            out[rel] = (stat.filemode(mode), st.st_uid, st.st_gid, mtime, tuple(sorted(xattrs.items())), detail)
    out["<hardlinks>"] = tuple(sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1))
    return out
