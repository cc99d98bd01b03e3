"""Plain copies of a tree and recursive chown, for volumes: Docker's copy-up of image content into a new
volume, and `:U`. Sources are resolved with storage/rootfs_paths.find_in_root by the caller."""
from __future__ import annotations

import os
import stat

from pinnace.errors import StorageError


def _set_meta(src: str, dst: str, st: os.stat_result) -> None:
    link = stat.S_ISLNK(st.st_mode)
    try:
        os.lchown(dst, st.st_uid, st.st_gid)
    except OSError:
        pass  # an id outside the mapping (single-uid fallback): the file stays ours
    if not link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        names = []
    for key in names:
        if key.startswith(("trusted.overlay.", "user.overlay.")):
            continue
        try:  # after chown too, which clears security.capability
            os.setxattr(dst, key, os.getxattr(src, key, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass  # e.g. trusted.* or security.* that this namespace may not set
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file(src: str, dst: str) -> None:
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while os.sendfile(fout, fin, None, 1 << 30):
                pass
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def copy_tree(src: str, dst: str) -> None:
    """Copy the directory tree src into the existing directory dst: owners, modes, times, xattrs,
    symlinks (never followed), hard links and fifos; device nodes where the kernel allows (not in a
    user namespace), sockets never. dst itself takes src's owner and mode, as Docker does."""
    links: dict[tuple[int, int], str] = {}
    dirs: list[tuple[str, str, os.stat_result]] = [(src, dst, os.lstat(src))]
    stack = [(src, dst)]
    while stack:
        s_dir, d_dir = stack.pop()
        with os.scandir(s_dir) as entries:
            for e in entries:
                s, d = e.path, os.path.join(d_dir, e.name)
                st = e.stat(follow_symlinks=False)
                mode = st.st_mode
                if stat.S_ISDIR(mode):
                    os.mkdir(d, 0o700)  # its real mode once its content is there (it may be read-only)
                    dirs.append((s, d, st))
                    stack.append((s, d))
                    continue
                if stat.S_ISREG(mode):
                    if st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
                        os.link(links[(st.st_dev, st.st_ino)], d)
                        continue
                    _copy_file(s, d)
                    if st.st_nlink > 1:
                        links[(st.st_dev, st.st_ino)] = d
                elif stat.S_ISLNK(mode):
                    os.symlink(os.readlink(s), d)
                elif stat.S_ISFIFO(mode):
                    os.mkfifo(d, 0o600)
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    try:
                        os.mknod(d, mode, st.st_rdev)
                    except PermissionError:
                        continue
                else:
                    continue
                _set_meta(s, d, st)
    for s, d, st in reversed(dirs):  # children first: setting a parent's mtime last keeps it
        _set_meta(s, d, st)


def _raise(exc: OSError) -> None:
    raise exc


def chown_tree(path: str, uid: int, gid: int) -> None:
    """`:U`: give path and everything below it (symlinks themselves, never their targets) to uid:gid."""
    try:
        top = os.path.realpath(path)
        os.lchown(top, uid, gid)
        if os.path.isdir(top):
            for base, dirnames, filenames in os.walk(top, onerror=_raise):
                for n in dirnames + filenames:
                    os.lchown(os.path.join(base, n), uid, gid)
    except OSError as exc:
        raise StorageError(f"cannot change the owner of {path} to {uid}:{gid} (:U): {exc}") from None
