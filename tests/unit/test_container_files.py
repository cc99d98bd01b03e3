"""cp / diff / export on plain directories standing in for a container's rootfs and overlay upper dir.

Runs as root and as an unprivileged user: owner expectations are computed for each (as root the sources get
foreign owners, so the copy rules for owners are visible). Every hostile case checks that the sentinel
directory outside the rootfs is untouched."""
from __future__ import annotations

import gzip
import io
import os
import socket
import stat
import tarfile
from pathlib import Path

import pytest
import tarbuild as tb

from pinnace.engine.container_files import (copy_from_host, copy_in, copy_out, copy_to_host, diff_upper,
                                            export_rootfs, lower_exists_in, resolve_in_root)
from pinnace.errors import InvalidArgument, NotFound, StorageError

pytestmark = pytest.mark.anyuser

ROOT = os.geteuid() == 0
ME = (os.geteuid(), os.getegid())
MTIME = 1_700_000_000


def owner(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


class Area:
    """`rootfs` (the container), `host` (the user's side) and `outside` (a sentinel nothing may touch)."""

    def __init__(self, base: Path):
        self.rootfs, self.host, self.outside = base / "rootfs", base / "host", base / "outside"
        for d in (self.rootfs, self.host, self.outside):
            d.mkdir()
        (self.outside / "secret").write_text("host secret")

    def put(self, rel: str, data: bytes = b"", mode: int = 0o644, ids: tuple[int, int] | None = None) -> Path:
        p = self.rootfs / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, mode)
        if ids:
            os.chown(p, *ids)
        os.utime(p, (MTIME, MTIME))
        return p

    def outside_untouched(self) -> bool:
        return sorted(os.listdir(self.outside)) == ["secret"] and \
            (self.outside / "secret").read_text() == "host secret"


@pytest.fixture
def area(tmp_path: Path) -> Area:
    return Area(tmp_path)


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf.getmembers()}


def tar_out(area: Area, src: str, **kw) -> bytes:
    buf = io.BytesIO()
    copy_out(area.rootfs, src, buf, **kw)
    return buf.getvalue()


# -- resolve_in_root -------------------------------------------------------------------------------------
def test_resolve_in_root_never_leaves_the_root(area: Area):
    r = area.rootfs
    area.put("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    (r / "abs").symlink_to("/etc")
    (r / "a/b").mkdir(parents=True)
    (r / "a/b/up").symlink_to("../../../../../../etc")
    (r / "a/b/abs").symlink_to("/etc")  # absolute: restarts at the root, wherever it sits
    (r / "esc").symlink_to(area.outside)  # the host's absolute path of the sentinel
    (r / "chain1").symlink_to("/chain2")
    (r / "chain2").symlink_to("../../a")
    (r / "loop1").symlink_to("loop2")
    (r / "loop2").symlink_to("/loop1")
    assert resolve_in_root(r, "/abs/passwd") == r / "etc/passwd"
    assert resolve_in_root(r, "a/b/up/passwd") == r / "etc/passwd"
    assert resolve_in_root(r, "/a/b/abs/passwd") == r / "etc/passwd"
    assert resolve_in_root(r, "/../../../etc/./passwd") == r / "etc/passwd"
    assert resolve_in_root(r, "/chain1/b") == r / "a/b"
    assert resolve_in_root(r, "/a/b/up/..") == r  # symlink first, then "..": the link's target's parent
    assert resolve_in_root(r, "/missing/../etc") == r / "etc"
    esc = resolve_in_root(r, "/esc/secret")
    assert esc == r / str(area.outside).lstrip("/") / "secret" and not esc.exists()
    assert resolve_in_root(r, "/abs", follow_last=False) == r / "abs"
    assert resolve_in_root(r, "/abs/", follow_last=False) == r / "etc"  # a trailing slash follows it
    assert resolve_in_root(r, "/") == r
    with pytest.raises(InvalidArgument, match="too many levels of symbolic links"):
        resolve_in_root(r, "/loop1")


# -- copy_out --------------------------------------------------------------------------------------------
def build_tree(area: Area) -> None:
    ids = (1234, 5678) if ROOT else None
    area.put("etc/hosts", b"127.0.0.1 localhost\n", mode=0o640, ids=ids)
    area.put("etc/sub/deep", b"deep")
    os.link(area.rootfs / "etc/hosts", area.rootfs / "etc/hosts.hard")
    (area.rootfs / "etc/evil").symlink_to(area.outside / "secret")
    os.mkfifo(area.rootfs / "etc/fifo")
    os.utime(area.rootfs / "etc/fifo", (MTIME, MTIME))
    os.chmod(area.rootfs / "etc/sub", 0o750)
    os.utime(area.rootfs / "etc/sub", (MTIME, MTIME))


def test_copy_out_file_dir_and_contents(area: Area):
    build_tree(area)
    one = members(tar_out(area, "/etc/hosts"))
    assert list(one) == ["hosts"]
    m = one["hosts"]
    assert m.isreg() and m.size == 20 and m.mode == 0o640 and m.mtime == MTIME
    assert (m.uid, m.gid) == ((1234, 5678) if ROOT else ME) and m.uname == ""

    whole = tar_out(area, "/etc")
    got = members(whole)
    assert sorted(got) == ["etc", "etc/evil", "etc/fifo", "etc/hosts", "etc/hosts.hard", "etc/sub", "etc/sub/deep"]
    assert got["etc"].isdir() and got["etc/sub"].mode == 0o750 and got["etc/sub"].mtime == MTIME
    assert got["etc/evil"].issym() and got["etc/evil"].linkname == str(area.outside / "secret")
    assert got["etc/hosts.hard"].islnk() and got["etc/hosts.hard"].linkname == "etc/hosts"
    assert got["etc/fifo"].isfifo()
    assert list(got).index("etc") == 0  # parents first
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        assert tf.extractfile("etc/sub/deep").read() == b"deep"

    contents = members(tar_out(area, "/etc/."))
    assert sorted(contents) == ["evil", "fifo", "hosts", "hosts.hard", "sub", "sub/deep"]
    assert contents["hosts.hard"].linkname == "hosts"


def test_copy_out_symlinks_and_errors(area: Area):
    area.put("data/file", b"payload")
    (area.rootfs / "link").symlink_to("/data/file")
    (area.rootfs / "esc").symlink_to(area.outside)
    got = members(tar_out(area, "/link"))
    assert got["link"].issym() and got["link"].linkname == "/data/file"
    followed = members(tar_out(area, "/link", follow_link=True))
    assert followed["link"].isreg() and followed["link"].size == 7  # named as asked, content of the target
    with pytest.raises(NotFound, match="no such file or directory in the container: /nope"):
        tar_out(area, "/nope")
    # the host path the symlink names exists, but only inside the root is looked at
    with pytest.raises(NotFound, match="/esc/secret"):
        tar_out(area, "/esc/secret")
    with pytest.raises(InvalidArgument, match="not a directory"):
        tar_out(area, "/data/file/.")


# -- copy_to_host: Docker's rules ----------------------------------------------------------------------
def test_copy_file_to_host(area: Area):
    area.put("etc/hosts", b"hosts", mode=0o600)
    h = area.host
    copy_to_host(area.rootfs, "/etc/hosts", h / "new")  # missing DEST: the file is DEST
    assert (h / "new").read_bytes() == b"hosts" and mode(h / "new") == 0o600
    assert os.stat(h / "new").st_mtime == MTIME
    with pytest.raises(InvalidArgument, match="does not exist"):
        copy_to_host(area.rootfs, "/etc/hosts", f"{h}/newdir/")  # ends in "/": the directory must exist
    assert not (h / "newdir").exists()
    with pytest.raises(NotFound, match="does not exist"):
        copy_to_host(area.rootfs, "/etc/hosts", h / "no/parent")
    (h / "existing").write_text("old contents, longer")
    copy_to_host(area.rootfs, "/etc/hosts", h / "existing")  # an existing file is overwritten
    assert (h / "existing").read_bytes() == b"hosts"
    (h / "dir").mkdir()
    copy_to_host(area.rootfs, "/etc/hosts", h / "dir")  # an existing directory gets DEST/basename
    assert (h / "dir/hosts").read_bytes() == b"hosts"
    with pytest.raises(InvalidArgument, match="not a directory"):
        copy_to_host(area.rootfs, "/etc/hosts", f"{h}/existing/")
    with pytest.raises(NotFound, match="no such file or directory in the container: /etc/nope"):
        copy_to_host(area.rootfs, "/etc/nope", h / "x")


def test_copy_dir_to_host(area: Area):
    build_tree(area)
    h = area.host
    copy_to_host(area.rootfs, "/etc", h / "made")  # missing DEST: created with SRC's contents
    assert (h / "made/hosts").read_text() == "127.0.0.1 localhost\n"
    assert (h / "made/sub/deep").read_bytes() == b"deep" and mode(h / "made/sub") == 0o750
    assert os.stat(h / "made/sub").st_mtime == MTIME
    assert os.path.samefile(h / "made/hosts", h / "made/hosts.hard")  # hardlinks stay hardlinks
    assert os.readlink(h / "made/evil") == str(area.outside / "secret")  # symlinks are copied, not followed
    assert stat.S_ISFIFO(os.lstat(h / "made/fifo").st_mode)
    (h / "into").mkdir()
    copy_to_host(area.rootfs, "/etc", h / "into")  # existing DEST: DEST/basename(SRC)
    assert (h / "into/etc/sub/deep").exists()
    (h / "contents").mkdir()
    copy_to_host(area.rootfs, "/etc/.", h / "contents")  # "SRC/.": the contents only
    assert sorted(os.listdir(h / "contents")) == ["evil", "fifo", "hosts", "hosts.hard", "sub"]
    (h / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="cannot copy a directory to the file"):
        copy_to_host(area.rootfs, "/etc", h / "file")
    assert (h / "file").read_text() == "x"
    # Docker never turns a directory into a file or back
    (h / "clash").mkdir()
    (h / "clash/etc").write_text("a file")
    with pytest.raises(InvalidArgument, match="cannot overwrite"):
        copy_to_host(area.rootfs, "/etc", h / "clash")
    assert area.outside_untouched()


def test_copy_to_host_owners(area: Area):
    ids = (1234, 5678) if ROOT else ME
    area.put("bin/tool", b"#!/bin/sh\n", mode=0o4755, ids=ids if ROOT else None)
    if ROOT:
        os.chmod(area.rootfs / "bin/tool", 0o4755)  # chown cleared it
    copy_to_host(area.rootfs, "/bin/tool", area.host / "default")
    assert owner(area.host / "default") == ME  # the caller's, as Docker does
    # a setuid program whose owner changed loses the bit
    assert mode(area.host / "default") == (0o755 if ROOT else 0o4755)
    copy_to_host(area.rootfs, "/bin/tool", area.host / "kept", preserve_owner=True)
    assert owner(area.host / "kept") == ids and mode(area.host / "kept") == 0o4755


# -- copy_from_host: the rules reversed ------------------------------------------------------------------
def test_copy_from_host(area: Area):
    h, r = area.host, area.rootfs
    (h / "file").write_bytes(b"from host")
    os.chmod(h / "file", 0o751)
    os.utime(h / "file", (MTIME, MTIME))
    (h / "tree/sub").mkdir(parents=True)
    (h / "tree/sub/f").write_text("f")
    os.chmod(h / "tree/sub", 0o700)
    (r / "dst").mkdir()
    copy_from_host(r, h / "file", "/dst")  # existing dir: DEST/basename
    assert (r / "dst/file").read_bytes() == b"from host" and mode(r / "dst/file") == 0o751
    assert os.stat(r / "dst/file").st_mtime == MTIME
    assert owner(r / "dst/file") == ((0, 0) if ROOT else ME)  # the container's root
    copy_from_host(r, h / "file", "/dst/renamed")  # missing DEST: the file is DEST
    assert (r / "dst/renamed").read_bytes() == b"from host"
    copy_from_host(r, str(h / "tree"), "/newtree")  # missing DEST: created with the contents
    assert (r / "newtree/sub/f").read_text() == "f" and mode(r / "newtree/sub") == 0o700
    copy_from_host(r, str(h / "tree"), "/dst")
    assert (r / "dst/tree/sub/f").exists()
    copy_from_host(r, f"{h}/tree/.", "/dst")
    assert (r / "dst/sub/f").exists()
    with pytest.raises(InvalidArgument, match="cannot copy a directory to the file"):
        copy_from_host(r, h / "tree", "/dst/file")
    with pytest.raises(InvalidArgument, match="does not exist"):
        copy_from_host(r, h / "file", "/nodir/")
    with pytest.raises(NotFound, match="no such directory in the container"):
        copy_from_host(r, h / "file", "/no/such/parent")
    with pytest.raises(NotFound, match="no such file or directory"):
        copy_from_host(r, h / "missing", "/dst")
    if ROOT:
        os.chown(h / "file", 1234, 5678)
        copy_from_host(r, h / "file", "/dst/kept", preserve_owner=True)
        assert owner(r / "dst/kept") == (1234, 5678)
    else:
        copy_from_host(r, h / "file", "/dst/kept", preserve_owner=True)
        assert owner(r / "dst/kept") == ME


def test_copy_from_host_never_writes_through_container_symlinks(area: Area):
    h, r = area.host, area.rootfs
    (h / "secret").write_text("overwritten")
    (h / "dir/sub").mkdir(parents=True)
    (h / "dir/sub/x").write_text("x")
    (r / "tmp").mkdir()
    (r / "link").symlink_to(area.outside)  # DEST resolves inside the root, not to the host directory
    with pytest.raises(NotFound, match="the parent of /link"):
        copy_from_host(r, h / "secret", "/link")
    landed = r / str(area.outside).lstrip("/")
    landed.parent.mkdir(parents=True)
    copy_from_host(r, h / "secret", "/link")
    assert landed.read_text() == "overwritten" and not landed.is_symlink()
    (r / "dst").mkdir()
    (r / "dst/secret").symlink_to(area.outside / "secret")  # planted where the copy's name goes
    copy_from_host(r, h / "secret", "/dst")
    assert (r / "dst/secret").read_text() == "overwritten" and not (r / "dst/secret").is_symlink()
    (r / "dst/dir").mkdir()
    (r / "dst/dir/sub").symlink_to(area.outside)
    with pytest.raises(InvalidArgument, match="cannot overwrite"):
        copy_from_host(r, h / "dir", "/dst")
    (r / "abslink").symlink_to("/")
    copy_from_host(r, h / "secret", "/abslink/tmp/")
    assert (r / "tmp/secret").read_text() == "overwritten"
    assert area.outside_untouched()


# -- copy_in (a tar on stdin) -------------------------------------------------------------------------------
def extract(area: Area, dest: str, *members, **kw) -> None:
    copy_in(area.rootfs, dest, io.BytesIO(tb.build(*members)), **kw)


def test_copy_in_extracts_with_container_root_owners(area: Area):
    (area.rootfs / "dst").mkdir()
    extract(area, "/dst", tb.directory("d", mode=0o555, uid=1000, gid=1000, mtime=MTIME),
            tb.file("d/f", b"data", mode=0o4755, uid=1000, gid=1000, mtime=MTIME),
            tb.hardlink("d/g", "d/f"), tb.symlink("d/l", "/etc/passwd"), tb.file("implicit/x", b"x"))
    d = area.rootfs / "dst/d"
    assert (d / "f").read_bytes() == b"data" and os.path.samefile(d / "f", d / "g")
    assert os.readlink(d / "l") == "/etc/passwd"
    assert mode(d) == 0o555 and os.stat(d).st_mtime == MTIME and os.stat(d / "f").st_mtime == MTIME
    assert owner(d / "f") == ((0, 0) if ROOT else ME)
    assert mode(d / "f") == 0o755  # its owner changed: no setuid bit for someone else
    assert (area.rootfs / "dst/implicit/x").read_bytes() == b"x"
    (area.rootfs / "keep").mkdir()
    extract(area, "/keep", tb.file("f", b"x", mode=0o4755, uid=1000, gid=1000), preserve_owner=True)
    assert owner(area.rootfs / "keep/f") == ((1000, 1000) if ROOT else ME)
    assert mode(area.rootfs / "keep/f") == (0o4755 if ROOT else 0o755)


@pytest.mark.parametrize("hostile", [
    [tb.file("../x", b"x")],
    [tb.file("a/../../x", b"x")],
    [tb.file("/abs", b"x")],
    [tb.symlink("lnk", "OUTSIDE"), tb.file("lnk/x", b"x")],
    [tb.file("evil/x", b"x")],  # through the symlink planted in DEST
    [tb.directory("evil"), tb.file("evil/x", b"x")],
    [tb.hardlink("h", "../outside/secret")],
    [tb.hardlink("h", "/etc/passwd")],
    [tb.hardlink("h", "evil/secret")],
], ids=["dotdot", "dotdot-inner", "absolute", "own-symlink", "planted-symlink", "planted-as-dir",
        "hardlink-dotdot", "hardlink-absolute", "hardlink-through-symlink"])
def test_copy_in_refuses_escapes(area: Area, hostile):
    dst = area.rootfs / "dst"
    dst.mkdir()
    (dst / "evil").symlink_to(area.outside)
    for info, _ in hostile:
        if info.linkname == "OUTSIDE":
            info.linkname = str(area.outside)
    with pytest.raises(InvalidArgument, match="refusing|cannot overwrite"):
        copy_in(area.rootfs, "/dst", io.BytesIO(tb.build(*hostile)))
    assert area.outside_untouched()
    assert not (area.rootfs / "x").exists() and not (area.rootfs / "abs").exists()


def test_copy_in_destination_checks(area: Area):
    (area.rootfs / "dstlink").symlink_to(area.outside)  # resolves inside the root, where it is missing
    with pytest.raises(NotFound, match="no such directory in the container: /dstlink"):
        extract(area, "/dstlink", tb.file("x", b"x"))
    area.put("file", b"f")
    with pytest.raises(InvalidArgument, match="not a directory in the container: /file"):
        extract(area, "/file", tb.file("x", b"x"))
    (area.rootfs / "d").mkdir()
    with pytest.raises(InvalidArgument, match="cannot overwrite"):
        extract(area, "/", tb.file("d", b"a file over a directory"))
    zipped = io.BytesIO(gzip.compress(tb.build(tb.file("zipped", b"z"))))
    copy_in(area.rootfs, "/d", zipped)
    assert (area.rootfs / "d/zipped").read_bytes() == b"z"
    with pytest.raises(InvalidArgument, match="truncated"):
        copy_in(area.rootfs, "/d", io.BytesIO(tb.build(tb.file("big", b"y" * 5000))[:1536]))
    assert area.outside_untouched()


def test_copy_round_trip_keeps_the_tree(area: Area, tmp_path: Path):
    build_tree(area)
    (area.rootfs / "etc/sub/deep").chmod(0o600)
    os.setxattr(area.rootfs / "etc/hosts", "user.note", b"\xffbinary")
    data = tar_out(area, "/etc")
    other = tmp_path / "other"
    other.mkdir()
    copy_in(other, "/", io.BytesIO(data), preserve_owner=True)
    assert tb.snapshot(other / "etc") == tb.snapshot(area.rootfs / "etc")


# -- diff ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["user.overlay."] + (["trusted.overlay."] if ROOT else []))
def test_diff_upper(tmp_path: Path, prefix: str):
    up = tmp_path / "upper"
    lower = {"/etc", "/etc/passwd", "/etc/gone", "/var", "/var/lib", "/var/lib/old", "/usr", "/usr/x",
             "/opt", "/opt/y"}
    (up / "etc").mkdir(parents=True)
    (up / "etc/passwd").write_text("changed")
    os.mknod(up / "etc/gone", stat.S_IFCHR | 0o600, 0)  # the kernel's whiteout
    (up / "etc/new").write_text("added")
    (up / "var/lib").mkdir(parents=True)
    os.setxattr(up / "var/lib", prefix + "opaque", b"y")  # rm -rf /var/lib; mkdir /var/lib
    (up / "var/lib/old").write_text("recreated under an opaque dir")
    (up / "var/lib/sub").mkdir()
    (up / "var/lib/sub/z").write_text("z")
    (up / "usr").mkdir()
    (up / "usr/x").write_text("")
    os.setxattr(up / "usr/x", prefix + "whiteout", b"")  # the xattr whiteout form
    (up / "opt").mkdir()
    os.setxattr(up / "opt", prefix + "opaque", b"x")  # "x": holds xattr whiteouts, not opaque
    (up / "opt/y").write_text("changed")
    (up / "newdir").mkdir()
    (up / "newdir/f").symlink_to("/nowhere")
    assert diff_upper(up, lower.__contains__, xattr_prefix=prefix) == [
        ("C", "/etc"), ("D", "/etc/gone"), ("A", "/etc/new"), ("C", "/etc/passwd"),
        ("A", "/newdir"), ("A", "/newdir/f"),
        ("C", "/opt"), ("C", "/opt/y"),
        ("C", "/usr"), ("D", "/usr/x"),
        ("C", "/var"), ("C", "/var/lib"), ("A", "/var/lib/old"), ("A", "/var/lib/sub"), ("A", "/var/lib/sub/z"),
    ]
    fresh = diff_upper(up, lambda p: False, prefix)  # nothing in the image: every survivor was added
    assert ("A", "/etc/passwd") in fresh and ("D", "/etc/gone") in fresh
    with pytest.raises(StorageError, match="missing-upper"):
        diff_upper(tmp_path / "missing-upper", lower.__contains__, prefix)


def test_lower_exists_in_follows_overlay_rules_and_no_symlink(tmp_path: Path):
    bottom, top = tmp_path / "l1", tmp_path / "l2"
    for rel in ("etc/passwd", "etc/gone", "etc/xgone", "var/lib/old", "usr/x"):
        (bottom / rel).parent.mkdir(parents=True, exist_ok=True)
        (bottom / rel).write_text("x")
    (bottom / "abs").symlink_to("/etc")  # the host has /etc/passwd: it must not count
    (bottom / "rel").symlink_to("etc")
    (top / "etc").mkdir(parents=True)
    os.mknod(top / "etc/gone", stat.S_IFCHR | 0o600, 0)
    (top / "etc/xgone").write_text("")
    os.setxattr(top / "etc/xgone", "user.overlay.whiteout", b"")
    (top / "var/lib").mkdir(parents=True)
    os.setxattr(top / "var/lib", "user.overlay.opaque", b"y")
    (top / "var/lib/new").write_text("n")
    (top / "usr").write_text("a file over the directory")
    exists = lower_exists_in([top, bottom])
    assert [p for p in ("/etc", "/etc/passwd", "/var/lib", "/var/lib/new", "/usr", "/abs", "/rel") if exists(p)] \
        == ["/etc", "/etc/passwd", "/var/lib", "/var/lib/new", "/usr", "/abs", "/rel"]
    assert not any(exists(p) for p in ("/etc/gone", "/etc/xgone", "/var/lib/old", "/usr/x", "/abs/passwd",
                                       "/rel/passwd", "/nope", "/etc/passwd/x"))
    assert lower_exists_in([bottom])("/var/lib/old") and lower_exists_in([bottom])("/usr/x")


# -- export ----------------------------------------------------------------------------------------------
def test_export_rootfs(area: Area, tmp_path: Path):
    r = area.rootfs
    area.put("proc/cpuinfo", b"host cpu")
    area.put("sys/kernel/x", b"x")
    area.put("dev/shm/leftover", b"x")
    area.put("bin/busybox", b"\x7fELF", mode=0o755, ids=(1234, 5678) if ROOT else None)
    os.link(r / "bin/busybox", r / "bin/sh")
    (r / "bin/ls").symlink_to("busybox")
    os.setxattr(r / "bin/busybox", "user.keep", b"1")
    os.setxattr(r / "bin/busybox", "user.overlay.origin", b"private")
    if ROOT:
        os.mknod(r / "bin/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.setxattr(r / "bin/busybox", "trusted.secret", b"private")
    sock = socket.socket(socket.AF_UNIX)
    try:
        os.chdir(r / "bin")  # a short relative path: AF_UNIX paths are limited to 107 bytes
        sock.bind("sock")
    finally:
        os.chdir(tmp_path)
        sock.close()
    buf = io.BytesIO()
    export_rootfs(r, buf)
    got = members(buf.getvalue())
    names = set(got)
    assert {"proc", "sys", "dev"} <= names and all(got[n].isdir() for n in ("proc", "sys", "dev"))
    assert not any(n.startswith(("proc/", "sys/", "dev/")) for n in names)
    assert "bin/sock" not in names
    assert got["bin/sh"].islnk() and got["bin/sh"].linkname == "bin/busybox"
    assert got["bin/ls"].issym() and got["bin/ls"].linkname == "busybox"
    busybox = got["bin/busybox"]
    assert (busybox.uid, busybox.gid) == ((1234, 5678) if ROOT else ME) and busybox.mode == 0o755
    xattrs = {k for k in busybox.pax_headers if k.startswith("SCHILY.xattr.")}
    assert xattrs == {"SCHILY.xattr.user.keep"}
    if ROOT:
        assert got["bin/null"].ischr() and (got["bin/null"].devmajor, got["bin/null"].devminor) == (1, 3)
    assert not any(n.startswith(("/", "./")) for n in names)
