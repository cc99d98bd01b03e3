"""The vfs driver's tree operations (storage/vfs.py) against the kernel's overlayfs as the reference.

Layers are unpacked with storage/layer_apply.py from tars made here (whiteouts, opaque directories, hard
links, owners, xattrs, type changes across layers). `materialize` must give the tree a read-only overlay
mount of the same layers shows; after modifying that copy, `changes` must give an upper directory that,
stacked on the layers, shows the modified tree again (and the same after export_layer → apply_layer, the
commit path). The work runs in this file's driver half, through `pinnace unshare` (the holder's user
namespace when rootless, plain root otherwise) in a private mount namespace.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.anyuser

HERE = Path(__file__).resolve()
ROOTLESS = os.geteuid() != 0


# -- the layers --------------------------------------------------------------------------------------------
def _layer_tars() -> list[bytes]:
    import tarbuild as tb
    l1 = tb.build(
        tb.directory("data"), tb.directory("gone"), tb.directory("repl"), tb.directory("opq"),
        tb.directory("solo"), tb.directory("emptydir", mode=0o750), tb.directory("d2f"),
        tb.directory("dev"),
        tb.file("data/a.txt", b"alpha\n"), tb.file("data/b.txt", b"bravo\n"), tb.file("data/del.txt", b"x"),
        tb.file("data/same.txt", b"12345678"), tb.file("data/mode.txt", b"m", mode=0o644),
        tb.file("data/owner.txt", b"o"), tb.file("data/keep.txt", b"keep\n"),
        tb.file("data/x.txt", b"x", xattrs={"user.old": b"1"}), tb.file("data/f2d", b"file"),
        tb.file("data/app.txt", b"app", mode=0o640, uid=1000, gid=1000),
        tb.file("data/setuid", b"#!/bin/sh\n", mode=0o4755),
        tb.file("data/sized.txt", b"abc"), tb.file("data/sneaky.txt", b"aaaa"),
        tb.file("data/h1", b"hard\n"), tb.hardlink("data/h2", "data/h1"),
        tb.file("data/w1", b"w\n"), tb.hardlink("data/w2", "data/w1"),
        tb.symlink("data/link", "a.txt"), tb.symlink("data/abs", "/data/a.txt"),
        tb.fifo("data/pipe"), tb.device("dev/null", 1, 3),
        tb.file("gone/inside.txt", b"i"), tb.directory("gone/deeper"), tb.file("gone/deeper/f", b"f"),
        tb.file("repl/old.txt", b"old"), tb.file("opq/old-1.txt", b"1"), tb.file("opq/old-2.txt", b"2"),
        tb.file("solo/only.txt", b"only"), tb.file("d2f/child", b"c"),
        tb.file("big.sparse", b""),
    )
    l2 = tb.build(
        tb.directory("data", mode=0o775, mtime=tb.MTIME + 10),
        tb.whiteout("data", "b.txt"), tb.whiteout("", "gone"), tb.whiteout("data", "w2"),
        tb.file("data/a.txt", b"alpha, second layer\n", mtime=tb.MTIME + 5),
        tb.directory("opq"), tb.opaque("opq"), tb.file("opq/new.txt", b"new\n"),
        tb.file("data/pipe", b"now a file"), tb.directory("later"), tb.file("later/l.txt", b"l"),
    )
    l3 = tb.build(
        tb.directory("gone", mode=0o700), tb.file("gone/again.txt", b"again"),  # over l2's whiteout
        tb.directory("data", mode=0o770, mtime=tb.MTIME + 20),
        tb.file("data/xattr3", b"3", xattrs={"user.pinnace": b"layer3"}),
    )
    return [l1, l2, l3]


def _run_driver(pinnace, tmp_path: Path, action: str) -> dict:
    work = tmp_path / "work"
    work.mkdir()
    for i, tar in enumerate(_layer_tars(), 1):
        (work / f"l{i}.tar").write_bytes(tar)
    res = pinnace.run("unshare", sys.executable, str(HERE), action, str(work), "1" if ROOTLESS else "0",
                      timeout=180, check=False)
    assert res.rc == 0, f"driver failed ({res.rc}):\n{res.out}\n{res.err}"
    return json.loads(res.out)


def _diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def test_materialize_shows_what_the_kernel_overlay_shows(pinnace, tmp_path):
    import tarbuild as tb
    r = _run_driver(pinnace, tmp_path, "materialize")
    copy, kernel = r["copy"], r["kernel"]
    assert _diff(copy, kernel) == {}
    assert r["root"]["copy"] == r["root"]["kernel"]
    for gone in ("data/b.txt", "gone/inside.txt", "gone/deeper", "data/w2", "opq/old-1.txt", "opq/old-2.txt"):
        assert gone not in copy
    assert not [p for p in copy if ".wh." in p]
    assert copy["gone"][0] == "drwx------" and sorted(p for p in copy if p.startswith("gone/")) == ["gone/again.txt"]
    assert copy["data"][:4] == ["drwxrwx---", 0, 0, (tb.MTIME + 20) * 10**9] and copy["data/pipe"][0] == "-rw-r--r--"
    assert copy["opq/new.txt"][5][0] == 4 and copy["data/a.txt"][5][0] == len(b"alpha, second layer\n")
    assert ["data/h1", "data/h2"] in r["copy_links"]
    assert copy["data/app.txt"][:3] == ["-rw-r-----", 1000, 1000]
    assert copy["data/setuid"][0] == "-rwsr-xr-x"
    assert dict(map(tuple, copy["data/x.txt"][4])) == {"user.old": "31"}
    assert copy["data/link"][5] == "a.txt" and copy["data/abs"][5] == "/data/a.txt"
    assert ("dev/null" in copy) == (not ROOTLESS)  # the kernel refuses device nodes in a user namespace
    assert r["report"]["copy_method"] in ("reflink", "copy_file_range", "sendfile")
    assert (r["report"]["copy_method"] == "reflink") == r["reflink_supported"]
    assert r["sparse"]["allocated"] < (1 << 20) and r["sparse"]["size"] == 64 << 20
    assert r["sparse"]["tail"] == "end"


def test_changes_round_trip_through_an_upper_directory(pinnace, tmp_path):
    r = _run_driver(pinnace, tmp_path, "changes")
    # the naive diff's blind spot, by design: same size, same mtime, other content is not a change
    assert list(_diff(r["modified"], r["kernel"])) == ["data/sneaky.txt"]
    assert r["modified"]["data/sneaky.txt"][5] != r["kernel"]["data/sneaky.txt"][5]
    assert r["root"]["modified"] == r["root"]["kernel"]
    # the same through a layer tar, the commit path (whole-second mtimes there)
    assert list(_diff(r["modified_coarse"], r["reapplied"])) == ["data/sneaky.txt"]
    upper = r["upper"]
    assert upper == {
        "data": "dir", "data/a.txt": "file", "data/same.txt": "file", "data/mode.txt": "file",
        "data/owner.txt": "file", "data/sized.txt": "file", "data/del.txt": "whiteout", "data/link": "symlink",
        "data/x.txt": "file",
        "data/f2d": "dir opaque", "data/f2d/inner": "file", "data/d2f-was-dir": "file",
        "data/new.txt": "file", "data/new-link": "file", "data/keep-link": "file", "data/keep.txt": "file",
        "data/h1": "file", "data/h2": "file", "data/fifo": "fifo",
        "d2f": "file", "gone": "whiteout", "repl": "dir opaque", "repl/new.txt": "file",
        "opq": "dir opaque", "opq/added.txt": "file",  # its one visible entry deleted: opaque, no whiteout
        "solo": "dir opaque", "emptydir": "dir", "newdir": "dir", "newdir/sub": "dir", "newdir/sub/f": "file",
        "later": "whiteout",
    }
    links = r["upper_links"]
    assert ["data/h1", "data/h2"] in links and ["data/new-link", "data/new.txt"] in links
    assert ["data/keep-link", "data/keep.txt"] in links  # a new name of an unchanged file
    m = r["modified"]
    assert m["data/owner.txt"][1:3] == [1000, 1000] and m["data/mode.txt"][0] == "-rw-------"
    assert r["report"]["whiteouts"] == 3 and r["report"]["opaque_dirs"] == 4


# -- the driver half: runs inside `pinnace unshare` ---------------------------------------------------------
def _driver(action: str, work: Path, rootless: bool) -> dict:
    sys.path.insert(0, str(HERE.parents[1] / "support"))
    import tarbuild as tb

    from pinnace.runtime import syscalls
    from pinnace.storage.layer_apply import apply_layer
    from pinnace.storage.vfs import changes, materialize, reflink_supported

    prefix = "user.overlay." if rootless else "trusted.overlay."
    syscalls.unshare(syscalls.CLONE_NEWNS)  # our mounts go away with us
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE, None)
    layers = []
    for i in (1, 2, 3):
        d = work / f"l{i}"
        d.mkdir()
        with open(work / f"l{i}.tar", "rb") as f:
            apply_layer(f, d, xattr_prefix=prefix)
        layers.append(str(d))
    # a sparse file in the bottom layer: 64 MiB with 3 bytes of data at the end
    with open(Path(layers[0]) / "big.sparse", "r+b") as f:
        f.seek((64 << 20) - 3)
        f.write(b"end")
    os.utime(Path(layers[0]) / "big.sparse", ns=(tb.MTIME * 10**9, tb.MTIME * 10**9))

    def mount(lowers: list[str], name: str) -> Path:
        target = work / name
        target.mkdir()
        opts = "lowerdir=" + ":".join(reversed(lowers)) + (",userxattr" if rootless else "")
        syscalls.mount("overlay", str(target), "overlay", syscalls.MS_RDONLY, opts)
        return target

    def root(p: Path) -> list:
        st = os.lstat(p)
        return [oct(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns]

    def snap(p: Path, mtimes: bool = True) -> dict:
        s = tb.snapshot(p, mtimes=mtimes)
        s.pop("<hardlinks>")
        return {k: [*v[:4], [[key, val.hex()] for key, val in v[4]], v[5]] for k, v in s.items()}

    rootfs = work / "rootfs"
    rootfs.mkdir()
    report = materialize(layers, str(rootfs), xattr_prefix=prefix)
    out: dict = {"report": report.__dict__, "reflink_supported": reflink_supported(str(work))}
    if action == "materialize":
        kernel = mount(layers, "kernel")
        out.update(copy=snap(rootfs), kernel=snap(kernel), root={"copy": root(rootfs), "kernel": root(kernel)},
                   copy_links=tb.snapshot(rootfs)["<hardlinks>"])
        st = os.stat(rootfs / "big.sparse")
        out["sparse"] = {"size": st.st_size, "allocated": st.st_blocks * 512,
                         "tail": (rootfs / "big.sparse").read_bytes()[-3:].decode()}
        return out

    _modify(rootfs)
    upper = work / "upper"
    upper.mkdir()
    report = changes(layers, str(rootfs), str(upper), xattr_prefix=prefix)
    kernel = mount([*layers, str(upper)], "kernel")
    out.update(report=report.__dict__, modified=snap(rootfs), kernel=snap(kernel),
               root={"modified": root(rootfs), "kernel": root(kernel)}, upper=_describe(upper, prefix),
               upper_links=[list(g) for g in tb.snapshot(upper)["<hardlinks>"]])
    from pinnace.storage.layer_export import export_layer
    with open(work / "upper.tar", "wb") as f:
        export_layer(upper, f, prefix)
    (work / "re").mkdir()
    with open(work / "upper.tar", "rb") as f:
        apply_layer(f, work / "re", xattr_prefix=prefix)
    out.update(modified_coarse=snap(rootfs, mtimes=False),
               reapplied=snap(mount([*layers, str(work / "re")], "reapplied"), mtimes=False))
    return out


def _modify(root: Path) -> None:
    d = root / "data"
    (d / "new.txt").write_text("new\n")
    os.link(d / "new.txt", d / "new-link")
    (root / "newdir/sub").mkdir(parents=True)
    (root / "newdir/sub/f").write_text("f")
    (d / "a.txt").write_text("changed content, longer than before\n")
    with open(d / "same.txt", "r+b") as f:
        f.write(b"87654321")  # same size, new mtime
    os.chmod(d / "mode.txt", 0o600)
    mtime = os.stat(d / "sized.txt").st_mtime_ns
    for name, data in (("sized.txt", "abcdef"), ("sneaky.txt", "bbbb")):  # content changed, mtime restored
        (d / name).write_text(data)
        os.utime(d / name, ns=(mtime, mtime))
    os.chown(d / "owner.txt", 1000, 1000)
    os.unlink(d / "del.txt")
    shutil.rmtree(root / "gone")
    shutil.rmtree(root / "repl")
    (root / "repl").mkdir()
    (root / "repl/new.txt").write_text("replaced")
    os.unlink(d / "link")
    os.symlink("keep.txt", d / "link")
    os.unlink(d / "f2d")
    (d / "f2d").mkdir()
    (d / "f2d/inner").write_text("inner")
    shutil.rmtree(root / "d2f")
    (root / "d2f").write_text("now a file")
    (d / "d2f-was-dir").write_text("x")
    os.setxattr(d / "x.txt", "user.new", b"2")
    os.link(d / "keep.txt", d / "keep-link")
    os.utime(root / "emptydir", ns=(1, 2_000_000_123))
    os.unlink(root / "opq/new.txt")
    (root / "opq/added.txt").write_text("added")
    with open(d / "h1", "a") as f:
        f.write("more\n")
    os.mkfifo(d / "fifo")
    os.unlink(root / "solo/only.txt")
    shutil.rmtree(root / "later")


def _describe(upper: Path, prefix: str) -> dict[str, str]:
    """What the upper directory holds: path -> file, dir, dir opaque, whiteout, symlink, fifo."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, upper)
            if stat.S_ISDIR(st.st_mode):
                try:
                    opaque = os.getxattr(p, prefix + "opaque") == b"y"
                except OSError:
                    opaque = False
                out[rel] = "dir opaque" if opaque else "dir"
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out[rel] = "whiteout"
            else:
                kinds = {stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo"}
                out[rel] = kinds[stat.S_IFMT(st.st_mode)]
    return out


if __name__ == "__main__":
    work_dir = Path(sys.argv[2])
    try:
        result = _driver(sys.argv[1], work_dir, sys.argv[3] == "1")
    finally:
        for child in work_dir.iterdir():  # subuid-owned: only the namespace can delete them
            if child.is_dir() and not child.is_mount():
                shutil.rmtree(child, ignore_errors=True)
    print(json.dumps(result))
