"""apply_layer / export_layer on real directories: entry kinds, whiteouts, hostile layers, round trips.

Runs as root (owners, devices, file capabilities applied) and as an unprivileged user (ownership and
devices are then reported as lost/skipped, which is asserted too)."""
from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import tarbuild as tb

from pinnace.errors import LayerError
from pinnace.storage.compression import HashingReader, open_decompressed
from pinnace.storage.layer_apply import ApplyReport, apply_layer
from pinnace.storage.layer_export import export_layer

ROOT = os.geteuid() == 0
ME = (os.geteuid(), os.getegid())
# security.capability v2 for cap_net_raw+ep (what `setcap cap_net_raw+ep` writes)
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")


def apply_bytes(data: bytes, dest: Path, **kw) -> ApplyReport:
    return apply_layer(io.BytesIO(data), dest, **kw)


class Area:
    """`dest` to apply into and a sentinel directory beside it that no layer may touch."""

    def __init__(self, base: Path):
        self.base = base
        self.dest = base / "layer"
        self.sentinel = base / "sentinel"
        self.dest.mkdir()
        self.sentinel.mkdir()
        (self.sentinel / "f").write_text("untouched")
        self.before = tb.snapshot(self.sentinel)

    def assert_contained(self) -> None:
        assert sorted(os.listdir(self.base)) == ["layer", "sentinel"]
        assert tb.snapshot(self.sentinel) == self.before
        assert (self.sentinel / "f").read_text() == "untouched"


@pytest.fixture
def area(tmp_path: Path) -> Area:
    return Area(tmp_path)


def owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


# -------------------------------------------------------------------------------------------- entry kinds

def test_every_entry_kind(area: Area):
    d = area.dest
    data = tb.build(
        tb.directory("etc", mode=0o750, mtime=1000),
        tb.file("etc/conf", b"hello\n", mode=0o640, mtime=2000),
        tb.file("etc/app.txt", b"app", uid=1000, gid=1000),
        tb.symlink("etc/link", "conf", mtime=3000),
        tb.symlink("etc/abs", "/etc/conf"),
        tb.hardlink("etc/hard", "etc/conf"),
        tb.file("bin/su", b"#!/bin/sh\n", mode=0o4755),
        tb.file("bin/sg", b"#!/bin/sh\n", mode=0o2755),
        tb.directory("tmp", mode=0o1777),
        tb.fifo("run/fifo", mode=0o620),
        tb.device("dev/null", 1, 3),
        tb.device("dev/loop0", 7, 0, block=True),
        tb.file("x/user", b"x", xattrs={"user.pinnace": b"fixture"}),
        tb.file("x/trusted", b"x", xattrs={"trusted.foo": b"bar"}),
        tb.file("x/ping", b"ELF", mode=0o755, xattrs={"security.capability": CAP_NET_RAW}),
        tb.file("big", os.urandom(3 << 20)),
    )
    report = apply_bytes(data, d)

    assert (d / "etc/conf").read_bytes() == b"hello\n"
    assert stat.S_IMODE(os.lstat(d / "etc/conf").st_mode) == 0o640
    assert os.lstat(d / "etc/conf").st_mtime == 2000
    assert stat.S_IMODE(os.lstat(d / "etc").st_mode) == 0o750
    assert os.lstat(d / "etc").st_mtime == 1000  # fixed after its children were written
    assert os.readlink(d / "etc/link") == "conf" and os.lstat(d / "etc/link").st_mtime == 3000
    assert os.readlink(d / "etc/abs") == "/etc/conf"
    conf, hard = os.lstat(d / "etc/conf"), os.lstat(d / "etc/hard")
    assert (conf.st_ino, conf.st_nlink) == (hard.st_ino, 2)
    assert stat.S_IMODE(os.lstat(d / "tmp").st_mode) == 0o1777
    assert stat.S_ISFIFO(os.lstat(d / "run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(d / "run/fifo").st_mode) == 0o620
    assert stat.S_IMODE(os.lstat(d / "run").st_mode) == 0o755  # implicit parent
    assert os.getxattr(d / "x/user", "user.pinnace") == b"fixture"
    assert "trusted.foo" not in os.listxattr(d / "x/trusted")
    assert (d / "big").stat().st_size == 3 << 20
    assert report.size == len(b"hello\n") + 3 + 10 + 10 + 1 + 1 + 3 + (3 << 20)

    if ROOT:
        assert owner(d / "etc/app.txt") == (1000, 1000)
        assert stat.S_IMODE(os.lstat(d / "bin/su").st_mode) == 0o4755
        assert stat.S_IMODE(os.lstat(d / "bin/sg").st_mode) == 0o2755
        assert os.lstat(d / "dev/null").st_rdev == os.makedev(1, 3)
        assert stat.S_ISBLK(os.lstat(d / "dev/loop0").st_mode)
        assert os.getxattr(d / "x/ping", "security.capability") == CAP_NET_RAW
        assert report == ApplyReport(files=16, size=report.size, lost_owners=0, skipped_devices=(),
                                     dropped_xattrs=1)
    else:
        # every entry is owned by 0 or 1000 in the layer: none of them can be given away
        assert owner(d / "etc/app.txt") == ME
        # an owner that was not applied must not leave a setuid/setgid file behind
        assert stat.S_IMODE(os.lstat(d / "bin/su").st_mode) == 0o755
        assert stat.S_IMODE(os.lstat(d / "bin/sg").st_mode) == 0o755
        assert report.skipped_devices == ("dev/null", "dev/loop0")
        assert not (d / "dev/null").exists()
        # 16 entries: 2 devices skipped, the hard link shares its target's inode and owner
        assert report.lost_owners == 13 and report.files == 14
        assert report.dropped_xattrs == 2  # trusted.* and security.capability (needs CAP_SETFCAP)


def test_whiteouts_become_overlay_form(area: Area):
    d = area.dest
    report = apply_bytes(tb.build(
        tb.directory("data"),
        tb.whiteout("data", "b.txt"),
        tb.whiteout("data", "gone"),
        tb.directory("data/sub"),
        tb.opaque("data/sub"),
        tb.file("data/sub/new.txt", b"new\n"),
        tb.file("data/.wh..wh.plnk"),  # aufs metadata: ignored
        tb.opaque("implicit"),  # opaque marker for a directory the layer has no entry for
    ), d)
    for name in ("b.txt", "gone"):
        st = os.lstat(d / "data" / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert (st.st_uid, st.st_gid) == ME
    assert os.getxattr(d / "data/sub", "user.overlay.opaque") == b"y"
    assert os.getxattr(d / "implicit", "user.overlay.opaque") == b"y"
    assert b"user.overlay.opaque" not in [k.encode() for k in os.listxattr(d / "data")]
    assert sorted(os.listdir(d / "data")) == ["b.txt", "gone", "sub"]
    assert report.files == 7


@pytest.mark.rootful
def test_opaque_with_trusted_prefix_as_root(area: Area):
    assert ROOT, "rootful test"
    apply_bytes(tb.build(tb.directory("d"), tb.opaque("d")), area.dest, xattr_prefix="trusted.overlay.")
    assert os.getxattr(area.dest / "d", "trusted.overlay.opaque") == b"y"
    assert "user.overlay.opaque" not in os.listxattr(area.dest / "d")


def test_layer_cannot_forge_overlay_xattrs(area: Area):
    report = apply_bytes(tb.build(
        tb.directory("d", xattrs={"user.overlay.opaque": b"y", "trusted.overlay.redirect": b"/etc",
                                  "user.ok": b"1"}),
    ), area.dest)
    assert os.listxattr(area.dest / "d") == ["user.ok"]
    assert report.dropped_xattrs == 2


def test_later_entries_win_and_directories_merge(area: Area):
    d = area.dest
    apply_bytes(tb.build(
        tb.file("f", b"first"),
        tb.file("f", b"second"),
        tb.directory("dir", mode=0o700),
        tb.file("dir/keep", b"k"),
        tb.directory("dir", mode=0o755),  # merges: keep survives, the mode is the later one
        tb.directory("was-dir"),
        tb.file("was-dir/child", b"c"),
        tb.file("was-dir", b"now a file"),
        tb.file("was-file", b"x"),
        tb.directory("was-file"),
        tb.symlink("was-link", "/etc"),
        tb.directory("was-link"),
        tb.file("was-link/inside", b"i"),
    ), d)
    assert (d / "f").read_bytes() == b"second"
    assert (d / "dir/keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.lstat(d / "dir").st_mode) == 0o755
    assert (d / "was-dir").read_bytes() == b"now a file"
    assert (d / "was-file").is_dir() and not (d / "was-file").is_symlink()
    assert (d / "was-link/inside").read_bytes() == b"i" and not (d / "was-link").is_symlink()


@pytest.mark.rootful
def test_merged_directory_takes_the_later_owner(area: Area):
    assert ROOT, "rootful test"
    apply_bytes(tb.build(tb.directory("d", uid=1000, gid=1000), tb.file("d/f", b"x"),
                         tb.directory("d", uid=0, gid=0), tb.file("p/q", b"x"), tb.directory("p", uid=0, gid=0)),
                area.dest)
    assert owner(area.dest / "d") == (0, 0) and owner(area.dest / "p") == (0, 0)


def test_names_long_prefixed_and_numbers_large(area: Area):
    deep = "/".join(["d" * 60] * 5)
    data = tb.build(
        tb.file(deep + "/pax-long-name", b"p"),
        tb.symlink("long-link", "t" * 300),
        tb.file("big-ids", b"b", uid=3_000_000, gid=3_000_001),
    )
    apply_bytes(data, area.dest)
    assert (area.dest / deep / "pax-long-name").read_bytes() == b"p"
    assert os.readlink(area.dest / "long-link") == "t" * 300
    if ROOT:
        assert owner(area.dest / "big-ids") == (3_000_000, 3_000_001)

    gnu = tb.build(tb.file(deep + "/gnu-long", b"g"), tb.hardlink("gnu-link", deep + "/gnu-long"),
                   fmt=tarfile.GNU_FORMAT)
    ustar = tb.build(tb.file("u" * 120 + "/" + "n" * 90, b"u"), fmt=tarfile.USTAR_FORMAT)  # prefix field
    dest2 = area.base / "layer2"
    dest2.mkdir()
    apply_bytes(gnu, dest2)
    assert os.lstat(dest2 / "gnu-link").st_ino == os.lstat(dest2 / deep / "gnu-long").st_ino
    dest3 = area.base / "layer3"
    dest3.mkdir()
    apply_bytes(ustar, dest3)
    assert (dest3 / ("u" * 120) / ("n" * 90)).read_bytes() == b"u"


def test_pax_mtime_fraction_and_global_header(area: Area):
    info, data = tb.file("f", b"x")
    info.pax_headers["mtime"] = "1704067200.25"
    apply_bytes(tb.build((info, data), global_pax={"comment": "global header"}), area.dest)
    assert os.lstat(area.dest / "f").st_mtime_ns == 1704067200_250000000


@pytest.mark.parametrize("variant", ["gnu", "0.0", "0.1", "1.0"])
def test_sparse_files(area: Area, variant: str):
    archive, content = tb.gnu_sparse(area.base / "layer", variant)  # source lives inside dest: fine
    dest = area.base / "out"
    dest.mkdir()
    report = apply_bytes(archive, dest)
    out = dest / "sparse.bin"
    assert out.read_bytes() == content
    assert out.stat().st_blocks * 512 < len(content) // 4  # holes stayed holes
    assert report.size == len(content)


def test_stream_is_read_to_the_end(area: Area):
    data = tb.build(tb.file("a", b"a" * 1000), trailing_zeros=64 * 1024)
    hashing = HashingReader(io.BytesIO(data))
    apply_layer(hashing, area.dest)
    assert hashing.bytes_read == len(data)
    assert hashing.digest() == "sha256:" + hashlib.sha256(data).hexdigest()


def test_deep_nesting(area: Area):
    # deeper than Python's recursion limit, with every parent implicit (fixed up at the end)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    deep = "/".join(["d"] * 1500)
    try:
        report = apply_bytes(tb.build(tb.file(deep + "/f", b"x"), tb.file(deep[:-2] + "/g", b"y")), area.dest)
        assert report.files == 2
        assert (area.dest / deep / "f").read_bytes() == b"x"
        assert stat.S_IMODE(os.lstat(area.dest / deep).st_mode) == 0o755
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # pytest's own cleanup (shutil.rmtree) recurses too deep for this tree
        subprocess.run(["rm", "-rf", str(area.dest / "d")], check=True)
        subprocess.run(["rm", "-rf", str(area.dest / "d")], check=True)  # shutil.rmtree recurses too deep


# -------------------------------------------------------------------------------------------- hostile layers

def test_dotdot_escape_is_refused(area: Area):
    for name in ("../x", "a/../../x", "./../sentinel/f"):
        with pytest.raises(LayerError, match=r"layer entry '.*' escapes the layer root"):
            apply_bytes(tb.build(tb.file(name, b"evil")), area.dest)
    with pytest.raises(LayerError) as err:
        apply_bytes(tb.build(tb.file("../x", b"evil")), area.dest)
    assert str(err.value) == "layer entry '../x' escapes the layer root"
    area.assert_contained()


def test_absolute_paths_land_inside(area: Area):
    target = str(area.sentinel / "abs")  # /tmp/…/sentinel/abs: must not be written there
    apply_bytes(tb.build(tb.file("/etc/x", b"1"), tb.file(target, b"2")), area.dest)
    assert (area.dest / "etc/x").read_bytes() == b"1"
    assert (area.dest / target.lstrip("/")).read_bytes() == b"2"
    area.assert_contained()


@pytest.mark.parametrize("link", ["SENTINEL", "../sentinel", "../../../../../../../..", "/"])
def test_writing_through_a_symlinked_parent_is_refused(area: Area, link: str):
    link = str(area.sentinel) if link == "SENTINEL" else link
    for entry in (tb.file("evil/f", b"pwned"), tb.directory("evil/d"), tb.whiteout("evil", "f"),
                  tb.opaque("evil"), tb.symlink("evil/s", "x"), tb.fifo("evil/p")):
        dest = area.dest
        for child in list(dest.iterdir()):
            child.unlink()
        with pytest.raises(LayerError, match="is a symlink or not a directory"):
            apply_bytes(tb.build(tb.symlink("evil", link), entry), dest)
    area.assert_contained()


def test_replacing_a_symlink_never_follows_it(area: Area):
    data = tb.build(
        tb.symlink("f", str(area.sentinel / "f")),
        tb.file("f", b"replaced", mode=0o600, uid=1000, gid=1000),
        tb.symlink("s", str(area.sentinel / "f"), uid=1000, gid=1000),  # lchown only
        tb.symlink("d", str(area.sentinel)),
        tb.directory("d", mode=0o700),
    )
    apply_bytes(data, area.dest)
    assert (area.dest / "f").read_bytes() == b"replaced" and not (area.dest / "f").is_symlink()
    assert (area.dest / "d").is_dir() and not (area.dest / "d").is_symlink()
    if ROOT:
        assert owner(area.dest / "s") == (1000, 1000)
    area.assert_contained()


def test_hardlinks_outside_or_missing_are_refused(area: Area):
    with pytest.raises(LayerError, match="escapes the layer root"):
        apply_bytes(tb.build(tb.hardlink("h", "../../etc/passwd")), area.dest)
    for target in ("/etc/passwd", "etc/passwd", str(area.sentinel / "f")):
        with pytest.raises(LayerError, match="not in the layer"):
            apply_bytes(tb.build(tb.hardlink("h", target)), area.dest)
    with pytest.raises(LayerError, match="not in the layer"):  # target comes later
        apply_bytes(tb.build(tb.hardlink("h2", "later"), tb.file("later", b"x")), area.dest)
    with pytest.raises(LayerError, match="is a symlink or not a directory"):  # through a symlinked parent
        apply_bytes(tb.build(tb.symlink("up", str(area.sentinel)), tb.hardlink("h3", "up/f")), area.dest)
    passwd_links = os.stat("/etc/passwd").st_nlink
    # a hard link to a symlink inside the layer links the symlink itself, never what it points to
    apply_bytes(tb.build(tb.symlink("s", "/etc/passwd"), tb.hardlink("h4", "s")), area.dest)
    assert os.readlink(area.dest / "h4") == "/etc/passwd"
    assert os.stat("/etc/passwd").st_nlink == passwd_links
    area.assert_contained()


def test_device_nodes(area: Area):
    report = apply_bytes(tb.build(tb.device("dev/sda", 8, 0, block=True), tb.device("dev/mem", 1, 1),
                                  tb.device("dev/wh", 0, 0)), area.dest)
    assert stat.S_ISCHR(os.lstat(area.dest / "dev/wh").st_mode)  # 0:0 is allowed everywhere
    if ROOT:
        assert report.skipped_devices == ()
        assert os.lstat(area.dest / "dev/mem").st_rdev == os.makedev(1, 1)
    else:
        assert report.skipped_devices == ("dev/sda", "dev/mem")
        assert sorted(os.listdir(area.dest / "dev")) == ["wh"]
    area.assert_contained()


def test_malformed_streams(area: Area):
    good = tb.build(tb.file("a", b"a" * 5000))
    with pytest.raises(LayerError, match="truncated"):
        apply_bytes(good[:1024], area.dest)
    with pytest.raises(LayerError, match="checksum"):
        apply_bytes(b"this is not a tar file" * 100, area.dest)
    with pytest.raises(LayerError, match="invalid whiteout"):
        apply_bytes(tb.build(tb.file("d/.wh..", b"")), area.dest)
    with pytest.raises(LayerError, match="names the layer root"):
        apply_bytes(tb.build(tb.file("./", b"")), area.dest)
    info, _ = tb.file("neg")
    info.pax_headers["uid"] = "-1"
    with pytest.raises(LayerError, match="negative"):
        apply_bytes(tb.build((info, b"")), area.dest)
    info, _ = tb.file("x")
    info.type = b"V"  # volume label: nothing a layer may contain
    with pytest.raises(LayerError, match="unsupported tar entry type"):
        apply_bytes(tb.build((info, None)), area.dest)
    area.assert_contained()


# -------------------------------------------------------------------------------------------- round trips

def rich_layer() -> bytes:
    return tb.build(
        tb.directory("etc", mode=0o755),
        tb.file("etc/a", b"alpha\n", mode=0o640, uid=1000, gid=1000),
        tb.hardlink("etc/a-link", "etc/a"),
        tb.symlink("etc/s", "a"),
        tb.file("etc/x", b"x", xattrs={"user.k": b"\x00\xffbinary"}),
        tb.file("etc/suid", b"s", mode=0o4755),
        tb.fifo("etc/fifo"),
        tb.directory("opq"),
        tb.opaque("opq"),
        tb.file("opq/kept", b"k"),
        tb.whiteout("etc", "removed"),
        tb.file("empty"),
    )


def test_export_round_trip(area: Area):
    first = area.base / "layer"
    apply_bytes(rich_layer(), first)
    out1, out2 = io.BytesIO(), io.BytesIO()
    export_layer(first, out1)
    export_layer(first, out2)
    assert out1.getvalue() == out2.getvalue()  # deterministic
    second = area.base / "second"
    second.mkdir()
    apply_bytes(out1.getvalue(), second)
    assert tb.snapshot(second) == tb.snapshot(first)
    names = tarfile.open(fileobj=io.BytesIO(out1.getvalue())).getnames()
    assert "etc/.wh.removed" in names and "opq/.wh..wh..opq" in names
    assert all(n.rsplit("/", 1)[0] in names[:i] for i, n in enumerate(names) if "/" in n)  # parents first
    links = [m for m in tarfile.open(fileobj=io.BytesIO(out1.getvalue())) if m.islnk()]
    assert [(m.name, m.linkname) for m in links] == [("etc/a-link", "etc/a")]


def fixture_layer(fixtures_info: dict, image: str, index: int) -> Path:
    return tb.fixture_blob(fixtures_info[image]["layers"][index]["digest"])


def test_debian_fixture_layer(fixtures_info: dict, area: Area):
    blob = fixture_layer(fixtures_info, "debian", 0)
    with open(blob, "rb") as f:
        hashing = HashingReader(open_decompressed(f, "auto"))
        report = apply_layer(hashing, area.dest)
    assert hashing.digest() == fixtures_info["debian"]["diff_ids"][0]
    assert report.files > 5000 and report.skipped_devices == ()
    chage = os.lstat(area.dest / "usr/bin/chage")
    if ROOT:
        assert chage.st_mode & 0o7777 == 0o2755 and chage.st_gid != 0  # root:shadow 2755
    assert os.readlink(area.dest / "bin") == "usr/bin"
    exported = io.BytesIO()
    export_layer(area.dest, exported)
    if ROOT:  # with every owner intact the export is the layer, byte for byte
        assert "sha256:" + hashlib.sha256(exported.getvalue()).hexdigest() == fixtures_info["debian"]["diff_ids"][0]


def test_busybox_layers_whiteout_layer(fixtures_info: dict, area: Area):
    with open(fixture_layer(fixtures_info, "busybox-layers", 2), "rb") as f:
        apply_layer(open_decompressed(f, "gzip"), area.dest)
    data = area.dest / "data"
    assert sorted(os.listdir(data)) == ["b.txt", "gone", "sub"]
    assert os.lstat(data / "gone").st_rdev == 0 and stat.S_ISCHR(os.lstat(data / "gone").st_mode)
    assert os.getxattr(data / "sub", "user.overlay.opaque") == b"y"
    assert json.dumps(sorted(os.listdir(data / "sub"))) == '["new.txt"]'


# -------------------------------------------------------------------------------------------- compression

def test_decompression_streams():
    import gzip

    import zstandard

    from pinnace.storage.compression import compress_stream

    data = os.urandom(3 << 20) + b"a" * (5 << 20)
    two_members = gzip.compress(data[:1 << 20]) + gzip.compress(data[1 << 20:])
    two_frames = zstandard.ZstdCompressor().compress(data[:1000]) + zstandard.ZstdCompressor().compress(data[1000:])
    for blob, kind in ((two_members, "gzip"), (two_members + bytes(1024), "gzip"), (two_frames, "zstd"),
                       (data, None)):
        assert open_decompressed(io.BytesIO(blob), kind).read() == data
        assert open_decompressed(io.BytesIO(blob), "auto").read() == data
    for blob, kind, message in ((two_members[:-4], "gzip", "truncated"), (two_members[:100], "gzip", "truncated"),
                                (two_members + b"junk", "gzip", "corrupt gzip"), (b"", "gzip", "empty"),
                                (two_frames[:-3], "zstd", "truncated"),
                                (b"\x28\xb5\x2f\xfdgarbage", "zstd", "corrupt zstd")):
        with pytest.raises(LayerError, match=message):
            open_decompressed(io.BytesIO(blob), kind).read()
    with pytest.raises(LayerError, match="unsupported layer compression 'xz'"):
        open_decompressed(io.BytesIO(b""), "xz")
    outputs = {}
    for kind in ("gzip", "zstd", None):
        out = io.BytesIO()
        digest, size = compress_stream(io.BytesIO(data), out, kind)
        assert (digest, size) == ("sha256:" + hashlib.sha256(out.getvalue()).hexdigest(), len(out.getvalue()))
        assert open_decompressed(io.BytesIO(out.getvalue()), "auto").read() == data
        outputs[kind] = digest
    assert compress_stream(io.BytesIO(data), io.BytesIO(), "gzip")[0] == outputs["gzip"]  # deterministic
