"""A pure-Python overlay filesystem in FUSE: the `fuse` storage driver's daemon.

    pinnace __fuse-overlay --ready-fd N --upper U --work W --lower L1 --lower L2 … MOUNTPOINT

serves read-only lower layers (lowest first) plus one upper directory at MOUNTPOINT until it is unmounted,
in the kernel overlayfs on-disk format, so a layer unpacked once serves both drivers (storage/fuse_tree.py:
lookups, copy-up, whiteouts, inode numbers; storage/fuse_ops.py: the calls and their overlayfs semantics).

Binding: mfusepy (rather than fusepy). fusepy's last release is 3.0.1 of 2018 and it is unmaintained;
mfusepy is its maintained fork (releases in 2025, the same API), binds libfuse 2 *and* libfuse 3 (it handles
the 3.x minor-version ABI breaks), passes times in nanoseconds (`use_ns`) where fusepy rounds them through
floats, and fixes high-level API bugs fusepy kept. Both are single ctypes modules, so the hot calls are
overridden below the same way in either: read/write go straight between the file descriptor kept in `fh`
and libfuse's buffer (one preadv/pwrite, no bytes object), getattr fills the C stat from os.stat_result,
readdir fills the type and inode only, utimens hands libfuse's timespecs (UTIME_NOW/UTIME_OMIT included)
to utimensat. mfusepy loads libfuse 3 here (libfuse 2 only where 3 is missing), for what fusepy cannot
have: requests up to 1 MiB (max_pages) instead of 128 KiB, fuse_invalidate_path (hard-link coherence,
storage/fuse_links.py), FUSE_CAP_POSIX_ACL (the kernel checks ACLs and drops cached attributes when `mv`
or `cp -a` sets a mode through an ACL; with libfuse 2 a directory moved by `mv` shows mode 0700 for up to
CACHE_TIMEOUT), and control of HANDLE_KILLPRIV/AUTO_INVAL_DATA. Measured on this 2-core machine with a
first, simpler harness (1 GiB written then read with dd, 5,000 small files created, real root; MB/s, s):
    mfusepy + libfuse 2: write 775, read 1,001 (cache dropped at open), cold read 656, create 4.5 s
    mfusepy + libfuse 3: write 986, read 1,703, cold read 1,250, create 2.9 s
With the data cache kept across opens (below) the read right after the write comes from the page cache.

Numbers of the final version (tests/support/fuse_overlay_driver.py `bench`; medians of 3 runs on a busy
shared machine, MB/s and s; pinnace-fuse / fuse-overlayfs 1.10 / kernel overlayfs):
    real root:  write 1,030 / 946 / 2,269, read (cached) 9,950 / 10,354 / 27,041,
                cold read 1,019 / 1,022 / 3,277, 5,000 creates 4.56 / 4.86 / 3.26
    rootless:   write 667 / 959 / 2,458, read (cached) 13,487 / 13,928 / 28,315,
                5,000 creates 4.70 / 4.92 / 2.88 (no cold read: dropping caches needs real root)
Multi-threaded and single-threaded loops measured the same for these sequential loads (the GIL
serialises the Python part; the preadv/pwrite calls release it); the multi-threaded loop stays, so that
one slow request (a big copy-up) does not stall every other process of the container.

Mount: libfuse mounts with mount(2) itself when it runs as root, real root or root in the user namespace
(fusermount is never needed); options: `default_permissions` (the kernel checks modes with the caller's
credentials), `allow_other` (every uid of the container; a mount made by root in its user namespace needs
no /etc/fuse.conf: the kernel then admits the processes of that namespace), `use_ino` (our st_ino),
`hard_remove` (no .fuse_hidden files in the upper), atomic O_TRUNC (no copy-up of data about to be
truncated), large requests (`max_read`; libfuse 3 writes up to 1 MiB), and caching: entries, attributes
and negative lookups for CACHE_TIMEOUT seconds (the upper changes only through this mount, and the kernel
drops what a call through it changes; hard links, where the high-level libfuse API gives each name its
own kernel inode, are handled in storage/fuse_links.py), file data kept in the page cache across opens
(`keep_cache` per open, not for a file with several names in the upper; AUTO_INVAL_DATA off, since no
one changes the files behind the kernel's back).

When the daemon dies the kernel answers ENOTCONN in the mount; `umount -l` (MNT_DETACH) still works. On
SIGTERM/SIGINT/SIGHUP libfuse leaves its loop and unmounts (lazily).
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys

CACHE_TIMEOUT = 1.0
MAX_IO = 131072  # bytes per read/write request

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_LIBFUSE_NAMES = ("libfuse3.so.3", "libfuse.so.2")
_CAP_AUTO_INVAL_DATA = 1 << 12
_CAP_POSIX_ACL = 1 << 19  # libfuse 3's FUSE_CAP_* bits
_CAP_HANDLE_KILLPRIV = 1 << 20
_CAP_HANDLE_KILLPRIV_V2 = 1 << 28


def check_fuse_available() -> str | None:
    """None when this process can serve a FUSE mount, else a one-line explanation with the fix."""
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return "/dev/fuse does not exist: load the fuse kernel module (sudo modprobe fuse)"
    except PermissionError as e:
        try:
            mode = os.stat("/dev/fuse").st_mode
        except OSError:
            mode = 0
        if e.errno == errno.EACCES and not mode & 0o006:
            return (f"/dev/fuse is mode {stat.S_IMODE(mode):04o} and not accessible to this user: ask an "
                    "administrator: sudo chmod 666 /dev/fuse")
        return ("FUSE is not permitted here (/dev/fuse cannot be opened: a nested container or a device "
                f"policy denies it: {e.strerror})")
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e.strerror}"
    os.close(fd)
    for name in _LIBFUSE_NAMES:
        try:
            ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return "libfuse is not installed: install libfuse2 (Debian/Ubuntu: apt-get install libfuse2)"
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        return "the Python package mfusepy is not installed"
    except OSError as e:
        return f"libfuse cannot be loaded: {e}"
    return None


def _load_libfuse() -> None:
    """Point mfusepy at libfuse 3 when it is installed, else libfuse 2 (by soname: no ldconfig run)."""
    if os.environ.get("FUSE_LIBRARY_PATH"):
        return
    for name in _LIBFUSE_NAMES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        os.environ["FUSE_LIBRARY_PATH"] = name
        return


def _binding():
    """mfusepy's FUSE class with the hot calls done without copies (imported late: it loads libfuse)."""
    _load_libfuse()
    import mfusepy

    libc = ctypes.CDLL(None, use_errno=True)
    utimensat = libc.utimensat
    utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    c_stat, c_char = mfusepy.c_stat, ctypes.c_char
    stat_size = ctypes.sizeof(c_stat)
    v3 = mfusepy.fuse_version_major == 3

    def decode(path):
        return None if path is None else path.decode("utf-8", "surrogateescape")

    def address(ptr) -> int:
        return ctypes.cast(ptr, ctypes.c_void_p).value

    class Binding(mfusepy.FUSE):
        def fgetattr(self, path, buf, fip):
            fh = fip.contents.fh if fip else None
            st, ino, nlink = self.operations.stat(decode(path), fh)
            ctypes.memset(buf, 0, stat_size)
            out = buf.contents
            out.st_mode, out.st_ino, out.st_nlink = st.st_mode, ino, nlink
            out.st_uid, out.st_gid, out.st_rdev = st.st_uid, st.st_gid, st.st_rdev
            out.st_size, out.st_blksize, out.st_blocks = st.st_size, st.st_blksize, st.st_blocks
            out.st_atimespec.tv_sec, out.st_atimespec.tv_nsec = divmod(st.st_atime_ns, 1_000_000_000)
            out.st_mtimespec.tv_sec, out.st_mtimespec.tv_nsec = divmod(st.st_mtime_ns, 1_000_000_000)
            out.st_ctimespec.tv_sec, out.st_ctimespec.tv_nsec = divmod(st.st_ctime_ns, 1_000_000_000)
            return 0

        def open(self, path, fip):
            fi = fip.contents
            fi.fh, fi.keep_cache = self.operations.open_file(decode(path), fi.flags)
            return 0

        def create(self, path, mode, fip):
            fi = fip.contents
            fi.fh, fi.keep_cache = self.operations.create_file(decode(path), mode, fi.flags)
            return 0

        def read(self, path, buf, size, offset, fip):
            fh, addr, done = fip.contents.fh, address(buf), 0
            while done < size:  # a short read only at the end of the file
                n = os.preadv(fh, [(c_char * (size - done)).from_address(addr + done)], offset + done)
                if n <= 0:
                    break
                done += n
            return done

        def write(self, path, buf, size, offset, fip):
            fh, addr, done = fip.contents.fh, address(buf), 0
            while done < size:
                done += os.pwrite(fh, (c_char * (size - done)).from_address(addr + done), offset + done)
            return done

        def _readdir(self, path, buf, filler, offset, fip):
            st = c_stat()
            for name, kind, ino in self.operations.listing(fip.contents.fh):
                st.st_mode, st.st_ino = kind, ino
                raw = name.encode("utf-8", "surrogateescape")
                if (filler(buf, raw, st, 0, 0) if v3 else filler(buf, raw, st, 0)) != 0:
                    break
            return 0

        def utimens_fuse_2(self, path, buf):
            if path is None:
                raise OSError(errno.ENOENT, "unlinked file")
            real = self.operations.utimens_real(decode(path))
            if utimensat(_AT_FDCWD, os.fsencode(real), address(buf) if buf else None, _AT_SYMLINK_NOFOLLOW):
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), real)
            return 0

        def utimens_fuse_3(self, path, buf, fip):
            return self.utimens_fuse_2(path, buf)

    return mfusepy, Binding


def mount_options(v3: bool) -> dict:
    opts = {
        "fsname": "pinnace-overlay",
        "subtype": "pinnace-overlay",
        "suid": True,  # libfuse would add nosuid: a container's setuid binaries must work
        "dev": True,
        "default_permissions": True,
        "allow_other": True,
        "use_ino": True,
        "hard_remove": True,
        "max_read": MAX_IO,
        "attr_timeout": CACHE_TIMEOUT,
        "entry_timeout": CACHE_TIMEOUT,
        "negative_timeout": CACHE_TIMEOUT,
    }
    if not v3:  # libfuse 3 always does these and refuses the options
        opts.update(big_writes=True, max_write=MAX_IO, atomic_o_trunc=True, nonempty=True)
    return opts


def _write_line(fd: int | None, line: str) -> None:
    if fd is None:
        return
    try:
        os.write(fd, line.encode(errors="replace") + b"\n")
        os.close(fd)
    except OSError:
        pass


def serve(lowers: list[str], upper: str, work: str, mountpoint: str, *, xattr_prefix: str = "user.overlay.",
          ready_fd: int | None = None, foreground: bool = True, threads: bool = True) -> None:
    """Mount the overlay at `mountpoint` and serve it until it is unmounted (or SIGTERM/SIGINT). Writes
    b"ok\\n" to `ready_fd` once the kernel has sent INIT (the mount is live), or one error line if the
    mount fails; raises OSError then too."""
    try:
        from pinnace.storage.fuse_ops import OverlayOps
        from pinnace.storage.fuse_tree import LayerStack

        for d in (*lowers, upper, work, mountpoint):
            if not os.path.isdir(d):
                raise OSError(errno.ENOTDIR, "not a directory", d)
        stack = LayerStack(lowers, upper, work, xattr_prefix)
        stack.clean_work()
        mfusepy, binding = _binding()
    except OSError as e:
        _write_line(ready_fd, f"error: cannot serve the overlay at {mountpoint}: {e.strerror or e}"
                              f"{': ' + str(e.filename) if e.filename else ''}")
        raise
    except ImportError as e:  # mfusepy or libfuse missing
        _write_line(ready_fd, f"error: cannot serve the overlay at {mountpoint}: {e}")
        raise OSError(errno.ENOSYS, str(e)) from None
    os.umask(0)  # modes arrive from the kernel with the caller's umask applied
    ops = OverlayOps(stack, context=mfusepy.fuse_get_context)
    # libfuse reports a failed mount on stderr only: keep it until INIT to put it in the error line
    saved_err = os.dup(2)
    captured = os.memfd_create("fuse-overlay-stderr", os.MFD_CLOEXEC)
    os.dup2(captured, 2)
    state = {"ready": False}

    def restore_stderr() -> bytes:
        if saved_err < 0 or state.get("restored"):
            return b""
        state["restored"] = True
        os.dup2(saved_err, 2)
        os.close(saved_err)
        text = os.pread(captured, 65536, 0)
        os.close(captured)
        return text

    def on_init(conn, config) -> None:
        if conn is not None:
            conn.max_readahead = max(conn.max_readahead, MAX_IO)
            if hasattr(conn, "max_read"):  # libfuse 3 insists that it equals the max_read option
                conn.max_read = MAX_IO
                # ACLs: the kernel checks them and drops its cached attributes when one is set (`mv`
                # sets a directory's mode that way); set-id bits on write: the kernel clears them
                # (the daemon writes as root, so the backing filesystem would not); cached pages are
                # kept or dropped at open (`keep_cache`), not whenever a changed mtime comes back
                conn.want = (conn.want | (conn.capable & _CAP_POSIX_ACL)) & ~(
                    _CAP_HANDLE_KILLPRIV | _CAP_HANDLE_KILLPRIV_V2 | _CAP_AUTO_INVAL_DATA)
        text = restore_stderr()
        # libfuse 3.14 complains about its own default thread limit: not worth a line in a log
        text = b"".join(line for line in text.splitlines(True) if b"invalid max threads" not in line)
        if text:
            os.write(2, text)
        state["ready"] = True
        _write_line(ready_fd, "ok")

    ops.on_init = on_init
    invalidate_path = getattr(mfusepy._libfuse, "fuse_invalidate_path", None)  # libfuse >= 3.1
    if invalidate_path is not None:
        invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

        def invalidate(paths: list[str]) -> None:
            fuse = mfusepy._libfuse.fuse_get_context().contents.fuse  # valid in any request's thread
            for path in paths:
                invalidate_path(fuse, path.encode("utf-8", "surrogateescape"))  # -ENOENT: not cached

        ops.links.invalidate = invalidate
    v3 = mfusepy.fuse_version_major == 3
    try:
        binding(ops, mountpoint, foreground=foreground, nothreads=not threads, raw_fi=False,
                **mount_options(v3))
    except RuntimeError as e:
        if state["ready"]:  # libfuse 3 returns 8 when a signal (SIGTERM, SIGINT) ended the loop: unmounted
            return
        text = restore_stderr().decode(errors="replace").strip().splitlines()
        why = text[-1] if text else f"libfuse returned {e}"
        if not state["ready"]:
            _write_line(ready_fd, f"error: cannot mount the overlay at {mountpoint}: {why}")
        raise OSError(errno.EIO, f"FUSE overlay at {mountpoint}: {why}") from None
    finally:
        restore_stderr()
    if not state["ready"]:
        _write_line(ready_fd, f"error: the overlay at {mountpoint} ended before it was mounted")


def main(argv: list[str]) -> int:
    """`pinnace __fuse-overlay [--ready-fd N] --upper U --work W --lower L … [--xattr-prefix P]
    [--single-thread] MOUNTPOINT`: exit 0 after a clean unmount, 1 if the mount failed."""
    import argparse

    p = argparse.ArgumentParser(prog="pinnace __fuse-overlay")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--upper", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--lower", action="append", default=[])
    p.add_argument("--xattr-prefix", default="user.overlay.")
    p.add_argument("--single-thread", action="store_true")
    p.add_argument("mountpoint")
    args = p.parse_args(argv)
    if not args.lower:
        p.error("at least one --lower is needed")
    try:
        serve(args.lower, args.upper, args.work, args.mountpoint, xattr_prefix=args.xattr_prefix,
              ready_fd=args.ready_fd, threads=not args.single_thread)
    except OSError as e:
        print(f"pinnace __fuse-overlay: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
