"""Driver of the FUSE overlay tests, run as root: real root, or root in the user namespace through
`pinnace unshare` (rootless). It takes a private mount namespace of its own first, so nothing it mounts
outlives it.

    python fuse_overlay_driver.py table BASE   the behaviour table on the FUSE overlay and on the kernel's
                                               overlayfs over identical layers: observations + upper trees
    python fuse_overlay_driver.py crash BASE   kill -9 of the daemon: ENOTCONN, then a lazy unmount works
    python fuse_overlay_driver.py bench BASE   1 GiB write/read and 5,000 small-file creates on the FUSE
                                               overlay, the kernel's overlayfs and fuse-overlayfs
Prints one JSON object.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from pinnace.runtime import mounts, syscalls

MTIME = 1_000_000_000_123_456_789
PATTERN = bytes(range(256)) * 4096  # 1 MiB


def rootless() -> bool:
    return Path("/proc/self/uid_map").read_text().split() != ["0", "0", "4294967295"]


def prefix() -> str:
    return "user.overlay." if rootless() else "trusted.overlay."


def private_mount_ns() -> None:
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def errname(fn, *args) -> str:
    try:
        fn(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


# -- layers -----------------------------------------------------------------------------------------
def write(path: Path, data: bytes | str, mode: int = 0o644, owner: tuple[int, int] = (0, 0),
          xattrs: dict | None = None, mtime: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chown(path, *owner)
    os.chmod(path, mode)
    for k, v in (xattrs or {}).items():
        os.setxattr(path, k, v)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))


def build_layers(base: Path) -> tuple[Path, Path, Path, Path, Path]:
    l1, l2, up, wk, mnt = (base / n for n in ("l1", "l2", "upper", "work", "mnt"))
    for d in (l1, l2, up, wk, mnt):
        d.mkdir(parents=True)
    write(l1 / "file_a", "A1")
    write(l1 / "whited", "hidden below a whiteout")
    write(l1 / "opq/old", "old")
    write(l1 / "merge/from1", "1")
    write(l1 / "bin/tool", "#!/bin/sh\n", 0o755, xattrs={"user.test": b"v"}, mtime=MTIME)
    write(l1 / "bin/suid", "x", 0o4755)
    write(l1 / "owned1000", "u", 0o600, owner=(1000, 1000))
    (l1 / "emptydir").mkdir()
    write(l1 / "mvdir/sub/f", "deep", 0o640, xattrs={"user.deep": b"1"})
    os.chmod(l1 / "mvdir", 0o750)
    write(l1 / "hl_src", "hardlink")
    write(l1 / "mvfile", "moving")
    write(l1 / "trunc", "some data")
    write(l1 / "plain", "removed without a copy-up")
    write(l1 / "xattrs", "x", xattrs={"user.a": b"1", "user.b": b"2"})
    (l1 / "pub").mkdir(mode=0o777)
    os.chmod(l1 / "pub", 0o777)
    with open(l1 / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"middle")
    os.symlink("/etc", l1 / "evil")  # never followed on the host side
    os.mknod(l2 / "whited", stat.S_IFCHR, 0)
    (l2 / "opq").mkdir()
    os.setxattr(l2 / "opq", prefix() + "opaque", b"y")
    write(l2 / "opq/new", "new")
    write(l2 / "merge/from2", "2")
    write(l2 / "file_a", "A2")
    return l1, l2, up, wk, mnt


# -- mounts -----------------------------------------------------------------------------------------
def mount_fuse(lowers: list[Path], up: Path, wk: Path, mnt: Path) -> subprocess.Popen:
    r, w = os.pipe()
    args = [sys.executable, "-m", "pinnace.storage.fuse_overlay", "--ready-fd", str(w), "--upper", str(up),
            "--work", str(wk), "--xattr-prefix", prefix()]
    for low in lowers:
        args += ["--lower", str(low)]
    proc = subprocess.Popen(args + [str(mnt)], pass_fds=[w])
    os.close(w)
    line = os.read(r, 4096).decode()
    os.close(r)
    if line != "ok\n":
        raise RuntimeError(f"fuse overlay did not start: {line!r}")
    return proc


def unmount(mnt: Path, proc: subprocess.Popen | None) -> None:
    syscalls.umount2(str(mnt), 0)
    if proc is not None:
        proc.wait(timeout=30)


# -- the table --------------------------------------------------------------------------------------
def as_user(uid: int, gid: int, fn) -> str:
    """Run fn() in a child with these ids; its result (or errno name) comes back as a string."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            out = str(fn())
        except OSError as e:
            out = errno.errorcode.get(e.errno, str(e.errno))
        except BaseException as e:  # noqa: BLE001
            out = repr(e)
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return out.decode()


def table(mnt: Path, up: Path) -> dict:
    o: dict = {}
    m = str(mnt)
    o["lookup_top"] = (mnt / "file_a").read_text()
    o["whiteout_hides"] = (mnt / "whited").exists()
    o["opaque_dir"] = sorted(os.listdir(mnt / "opq"))
    o["merged_dir"] = sorted(os.listdir(mnt / "merge"))
    o["root"] = sorted(os.listdir(mnt))
    o["evil_link"] = os.readlink(mnt / "evil")
    o["evil_below"] = errname(os.lstat, m + "/evil/passwd")
    ino_before = os.stat(mnt / "bin/tool").st_ino
    # copy-up of data, metadata
    with open(mnt / "merge/from1", "a") as f:
        f.write("+more")
    o["append"] = (mnt / "merge/from1").read_text()
    os.chmod(mnt / "bin/tool", 0o700)
    st = os.stat(mnt / "bin/tool")
    o["chmod"] = [oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns == MTIME, os.getxattr(mnt / "bin/tool", "user.test").decode()]
    o["ino_stable_after_copy_up"] = st.st_ino == ino_before
    os.chown(mnt / "file_a", 1000, 1001)
    st = os.stat(mnt / "file_a")
    o["chown"] = [st.st_uid, st.st_gid]
    os.chmod(mnt / "bin/suid", 0o4750)
    o["suid"] = oct(stat.S_IMODE(os.stat(mnt / "bin/suid").st_mode))
    os.utime(mnt / "merge/from2", ns=(MTIME, MTIME + 5))
    st = os.stat(mnt / "merge/from2")
    o["utimens"] = [st.st_atime_ns, st.st_mtime_ns]
    os.setxattr(mnt / "xattrs", "user.c", b"3")
    os.removexattr(mnt / "xattrs", "user.a")
    o["xattrs"] = sorted(os.listxattr(mnt / "xattrs"))
    o["xattr_missing"] = errname(os.removexattr, m + "/owned1000", "user.none")
    o["private_xattr_listed"] = sorted(os.listxattr(mnt / "opq"))
    o["private_xattr_set"] = errname(os.setxattr, m + "/file_a", prefix() + "opaque", b"y")
    fd = os.open(mnt / "trunc", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    o["o_trunc"] = (mnt / "trunc").read_text()
    # deletions
    os.unlink(mnt / "merge/from2")
    o["unlink_lower"] = sorted(os.listdir(mnt / "merge"))
    os.rmdir(mnt / "emptydir")
    o["rmdir_lower"] = (mnt / "emptydir").exists()
    o["rmdir_notempty"] = errname(os.rmdir, m + "/merge")
    os.unlink(mnt / "merge/from1")
    os.rmdir(mnt / "merge")
    os.mkdir(mnt / "merge")
    o["mkdir_over_whiteout"] = sorted(os.listdir(mnt / "merge"))
    os.mkdir(mnt / "whited")  # the whiteout is in a lower layer: the upper has none to replace
    o["mkdir_over_lower_whiteout"] = sorted(os.listdir(mnt / "whited"))
    os.unlink(mnt / "owned1000")
    o["recreate"] = errname(lambda: (mnt / "owned1000").write_text("again"))
    # renames
    os.mkdir(mnt / "dest")
    os.rename(mnt / "mvfile", mnt / "dest/moved")
    o["rename_file"] = [(mnt / "dest/moved").read_text(), (mnt / "mvfile").exists()]
    o["rename_lower_dir"] = errname(os.rename, m + "/mvdir", m + "/mvdir2")
    shutil.move(m + "/mvdir", m + "/mvdir2")
    o["move_lower_dir"] = [(mnt / "mvdir2/sub/f").read_text(), (mnt / "mvdir").exists(),
                           oct(stat.S_IMODE(os.stat(mnt / "mvdir2").st_mode))]
    os.makedirs(mnt / "newdir/inner")
    os.rename(mnt / "newdir", mnt / "opq/newdir")  # an upper-only directory moves
    o["rename_upper_dir"] = sorted(os.listdir(mnt / "opq/newdir"))
    os.mkdir(mnt / "target")
    os.rename(mnt / "dest", mnt / "target")  # over an empty directory
    o["rename_over_dir"] = sorted(os.listdir(mnt / "target"))
    # links
    os.link(mnt / "hl_src", mnt / "hl_dst")
    a, b = os.stat(mnt / "hl_src"), os.stat(mnt / "hl_dst")
    o["hardlink"] = [a.st_ino == b.st_ino, a.st_nlink, b.st_nlink]
    with open(mnt / "hl_dst", "a") as f:
        f.write("!")
    o["hardlink_shared_data"] = (mnt / "hl_src").read_text()
    os.symlink("file_a", mnt / "sym")
    o["symlink"] = [os.readlink(mnt / "sym"), stat.S_ISLNK(os.lstat(mnt / "sym").st_mode), (mnt / "sym").read_text()]
    os.mkfifo(mnt / "fifo", 0o640)
    o["fifo"] = stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
    sv, su = os.statvfs(m), os.statvfs(up)
    o["statfs"] = [sv.f_blocks == su.f_blocks, sv.f_bsize == su.f_bsize, sv.f_namemax]
    # data
    h = hashlib.sha256()
    with open(mnt / "large", "wb") as f:
        for _ in range(100):
            f.write(PATTERN)
            h.update(PATTERN)
        f.flush()
        os.fsync(f.fileno())
    g = hashlib.sha256()
    with open(mnt / "large", "rb") as f:
        while chunk := f.read(1 << 20):
            g.update(chunk)
    o["large"] = [os.stat(mnt / "large").st_size, g.hexdigest() == h.hexdigest()]
    with open(mnt / "sparse_new", "wb") as f:
        f.seek(50 << 20)
        f.write(b"end")
    st = os.stat(up / "sparse_new")
    o["sparse_new"] = [os.stat(mnt / "sparse_new").st_size, st.st_blocks * 512 < (1 << 20)]
    with open(mnt / "sparse", "r+b") as f:  # copy-up of a sparse lower file
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
    with open(mnt / "sparse", "rb") as f:
        f.seek(32 << 20)
        mid = f.read(6)
    o["sparse_copy_up"] = [os.stat(mnt / "sparse").st_size, mid.decode(), os.stat(up / "sparse").st_blocks * 512 < (4 << 20)]
    os.truncate(mnt / "sparse", 10)
    o["truncate"] = os.stat(mnt / "sparse").st_size
    # ownership and permissions for another uid (default_permissions: the kernel checks modes)
    def create_own() -> str:
        (mnt / "pub/mine").write_text("m")
        os.mkdir(mnt / "pub/mydir")
        return "ok"

    o["uid1000_create"] = as_user(1000, 1000, create_own)
    st, sd = os.stat(mnt / "pub/mine"), os.stat(mnt / "pub/mydir")
    o["uid1000_owner"] = [st.st_uid, st.st_gid, sd.st_uid, sd.st_gid, oct(stat.S_IMODE(st.st_mode))]
    o["uid1000_denied_write"] = as_user(1000, 1000, lambda: open(m + "/file_a_copy", "w"))
    o["uid1000_denied_read"] = as_user(1001, 1001, lambda: open(m + "/pub/mine").read())
    o["uid1000_own_file"] = as_user(1000, 1000, lambda: open(m + "/file_a").read())
    os.mkdir(mnt / "sgid")
    os.chown(mnt / "sgid", 0, 1234)
    os.chmod(mnt / "sgid", 0o2777)
    def create_sgid() -> str:
        (mnt / "sgid/f").write_text("g")
        os.mkdir(mnt / "sgid/d")
        return "ok"

    o["setgid_create"] = as_user(1000, 1000, create_sgid)
    o["setgid_inherit"] = [os.stat(mnt / "sgid/f").st_gid, os.stat(mnt / "sgid/d").st_gid,
                           bool(os.stat(mnt / "sgid/d").st_mode & stat.S_ISGID)]
    o["access_x"] = as_user(1000, 1000, lambda: os.access(m + "/bin/tool", os.X_OK))
    o["access_r"] = as_user(1000, 1000, lambda: os.access(m + "/file_a", os.R_OK))
    os.unlink(mnt / "plain")  # only in a lower layer
    os.unlink(mnt / "xattrs")  # copied up before
    o["unlinked"] = [(mnt / "plain").exists(), (mnt / "xattrs").exists()]
    return o


# kernel bookkeeping that is not part of the shared format (overlayfs's origin/impure/uuid for its
# inode numbers): only `opaque` must be the same
_KERNEL_ONLY = ("origin", "impure", "uuid", "nlink")


def dump(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            e = {"type": stat.S_IFMT(st.st_mode), "mode": oct(stat.S_IMODE(st.st_mode)), "owner": [st.st_uid, st.st_gid]}
            if stat.S_ISCHR(st.st_mode):
                e["rdev"] = st.st_rdev
            if stat.S_ISLNK(st.st_mode):
                e["target"] = os.readlink(p)
            if stat.S_ISREG(st.st_mode):
                e["size"] = st.st_size
                if st.st_size < 4096:
                    e["data"] = p.read_text(errors="replace")
            xs = {}
            for k in os.listxattr(p, follow_symlinks=False):
                if k.startswith(("user.overlay.", "trusted.overlay.")) and k.split(".")[-1] in _KERNEL_ONLY:
                    continue
                xs[k] = os.getxattr(p, k, follow_symlinks=False).decode(errors="replace")
            e["xattrs"] = xs
            out[rel] = e
    return out


def run_table(base: Path) -> dict:
    result: dict = {"rootless": rootless()}
    for kind in ("fuse", "kernel"):
        l1, l2, up, wk, mnt = build_layers(base / kind)
        proc = None
        if kind == "fuse":
            proc = mount_fuse([l1, l2], up, wk, mnt)
        else:
            mounts.mount_overlay([l1, l2], mnt, upper=up, work=wk, rootless=rootless())
        try:
            obs = table(mnt, up)
        finally:
            unmount(mnt, proc)
        result[kind] = {"obs": obs, "upper": dump(up)}
        if proc is not None:
            result[kind]["daemon_exit"] = proc.returncode
    return result


def run_crash(base: Path) -> dict:
    l1, l2, up, wk, mnt = build_layers(base / "crash")
    proc = mount_fuse([l1, l2], up, wk, mnt)
    before = (mnt / "file_a").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = errname(os.stat, str(mnt / "merge/from1"))
    syscalls.umount2(str(mnt), syscalls.MNT_DETACH)
    mounted = any(line.split()[4] == str(mnt) for line in Path("/proc/self/mountinfo").read_text().splitlines())
    proc = mount_fuse([l1, l2], up, wk, mnt)  # SIGTERM: libfuse leaves its loop and unmounts
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=30)
    still = any(line.split()[4] == str(mnt) for line in Path("/proc/self/mountinfo").read_text().splitlines())
    return {"before": before, "after_kill": after, "mounted_after_umount": mounted,
            "layer_intact": (l2 / "file_a").read_text(), "sigterm_exit": rc, "mounted_after_sigterm": still}


# -- bench ------------------------------------------------------------------------------------------
def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _bench_one(mnt: Path) -> dict:
    block = os.urandom(1 << 20)

    def w():
        with open(mnt / "big", "wb") as f:
            for _ in range(1024):
                f.write(block)
            os.fsync(f.fileno())

    def r():
        with open(mnt / "big", "rb", buffering=0) as f:
            buf = bytearray(1 << 20)
            while f.readinto(buf):
                pass

    def small():
        os.mkdir(mnt / "small")
        for i in range(5000):
            fd = os.open(mnt / f"small/f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"hello\n")
            os.close(fd)

    out = {"write_MBps": round(1024 / _timed(w)), "read_MBps": round(1024 / _timed(r))}
    if not rootless():
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        out["read_cold_MBps"] = round(1024 / _timed(r))
    out["create_5000_s"] = round(_timed(small), 2)
    out["walk_5000_s"] = round(_timed(lambda: [os.lstat(mnt / f"small/f{i}") for i in range(5000)]), 3)
    return out


def run_bench(base: Path) -> dict:
    result = {}
    for kind in ("pinnace-fuse", "kernel", "fuse-overlayfs"):
        l1, l2, up, wk, mnt = build_layers(base / kind)
        proc = None
        if kind == "pinnace-fuse":
            proc = mount_fuse([l1, l2], up, wk, mnt)
        elif kind == "kernel":
            mounts.mount_overlay([l1, l2], mnt, upper=up, work=wk, rootless=rootless())
        else:
            subprocess.run(["fuse-overlayfs", "-o", f"lowerdir={l2}:{l1},upperdir={up},workdir={wk}", str(mnt)],
                           check=True)
        try:
            result[kind] = _bench_one(mnt)
        finally:
            unmount(mnt, proc)
        shutil.rmtree(base / kind, ignore_errors=True)
    return result


def traversable(base: Path) -> Path:
    """BASE seen at a path every uid can reach (pytest's temporary directories are 0700): a bind mount
    in this private mount namespace, gone with it."""
    import tempfile

    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    view = Path(tempfile.mkdtemp(prefix="fuse-overlay-test-"))
    os.chmod(view, 0o755)
    syscalls.mount(str(base), str(view), None, syscalls.MS_BIND)
    return view


def main() -> int:
    mode, base = sys.argv[1], Path(sys.argv[2])
    private_mount_ns()
    view = traversable(base)
    try:
        out = {"table": run_table, "crash": run_crash, "bench": run_bench}[mode](view)
    except Exception as e:  # noqa: BLE001
        import traceback

        out = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    finally:
        syscalls.umount2(str(view), syscalls.MNT_DETACH)
        os.rmdir(view)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
