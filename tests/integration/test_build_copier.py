"""COPY/ADD into a rootfs (builder/copier.py, builder/copy_sources.py) on real trees: Docker's/BuildKit's
destination rules, contents copy, chmod, symlinks and hard links, destination symlinks that point out of the
rootfs, ADD tar extraction and URLs (a local HTTP server), heredocs, COPY --from sources. Ownership needs
ids the test user does not have: those checks run in tests/support/copier_driver.py inside `pinnace unshare`.
"""
from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import zstandard
from testenv import PINNACE_BIN

from pinnace.builder.context import open_context
from pinnace.builder.copier import (CopyItem, context_items, copy_into, fetch_url, resolve_chown,
                                    resolve_from_rootfs)
from pinnace.errors import DigestMismatch, InvalidArgument, NotFound

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "copier_driver.py"
MTIME = 1_500_000_000_123_456_789
LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
MULTI = "When using COPY with more than one source file, the destination must be a directory and end with a /"


def mk(base: Path, spec: dict) -> Path:
    """Create `spec` below base: path -> text (a file), None (a directory) or ("->", target) (a symlink)."""
    for rel, what in spec.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if what is None:
            p.mkdir(exist_ok=True)
        elif isinstance(what, tuple):
            p.symlink_to(what[1])
        else:
            p.write_text(what)
    return base


def item(path: Path, name: str | None = None, **kw) -> CopyItem:
    return CopyItem("path", str(path), name or path.name, path.is_dir(), **kw)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def make_tar(compression: str = "", members=None, owner=(0, 0)) -> bytes:
    members = members or [("./", None), ("./top.txt", b"new"), ("./d/", None), ("./d/n.txt", b"nested"),
                          ("./d/l", "n.txt"), ("/abs.txt", b"abs")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:" + (compression if compression in ("gz", "xz", "bz2") else "")) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.uid, info.gid, info.mtime, info.mode = *owner, 1_400_000_000, 0o640
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
            else:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if isinstance(data, bytes) else None)
    return zstandard.ZstdCompressor().compress(buf.getvalue()) if compression == "zst" else buf.getvalue()


# -- destination rules -----------------------------------------------------------------------------------
def test_file_destination_rules(tmp_path):
    f = mk(tmp_path / "ctx", {"f": "F"}) / "f"
    root = mk(tmp_path / "root", {"existing": None, "old": "old"})
    assert copy_into(str(root), [item(f)], "/d1/", workdir="/") == ["/d1/f"]
    assert (root / "d1/f").read_text() == "F"
    assert copy_into(str(root), [item(f)], "/d2", workdir="/") == ["/d2"]  # no slash, missing: the file itself
    assert (root / "d2").is_file()
    assert copy_into(str(root), [item(f)], "/existing", workdir="/") == ["/existing/f"]  # an existing dir
    assert copy_into(str(root), [item(f)], "rel/", workdir="/w") == ["/w/rel/f"]
    assert copy_into(str(root), [item(f)], ".", workdir="/w2") == ["/w2/f"]
    copy_into(str(root), [item(f)], "/old", workdir="/")  # an existing file is replaced
    assert (root / "old").read_text() == "F"
    copy_into(str(root), [item(f)], "/a/b/c/", workdir="/")
    assert [mode(root / p) for p in ("a", "a/b", "a/b/c")] == [0o755] * 3
    assert (root / "a/b/c/f").read_text() == "F"


def test_directory_source_copies_its_contents_with_links_and_times(tmp_path):
    ctx = mk(tmp_path / "ctx", {"dir/a": "A", "dir/sub/b": "B", "dir/lnk": ("->", "a")})
    os.link(ctx / "dir/a", ctx / "dir/hard")
    for p in ("dir/a", "dir/sub/b", "dir/sub"):
        os.utime(ctx / p, ns=(MTIME, MTIME))
    root = mk(tmp_path / "root", {"dst/keep": "kept"})
    assert copy_into(str(root), [item(ctx / "dir")], "/dst", workdir="/") == ["/dst"]
    assert tree(root / "dst") == {"keep", "a", "hard", "lnk", "sub", "sub/b"}  # merged, "dir" itself not copied
    assert os.readlink(root / "dst/lnk") == "a"
    assert (root / "dst/hard").stat().st_ino == (root / "dst/a").stat().st_ino
    assert [os.lstat(root / "dst" / p).st_mtime_ns for p in ("a", "sub/b", "sub")] == [MTIME] * 3
    copy_into(str(root), [item(ctx / "dir")], "/new", workdir="/")  # a missing destination is created
    assert mode(root / "new") == 0o755 and (root / "new/sub/b").read_text() == "B"


def test_several_sources_wildcards_and_conflicts(tmp_path):
    ctx = mk(tmp_path / "ctx", {"f": "F", "g": "G", "dir/x": "X"})
    root = mk(tmp_path / "root", {"file": "", "hasdir/f/": None})
    items = [item(ctx / "f"), item(ctx / "g")]
    with pytest.raises(InvalidArgument) as e:
        copy_into(str(root), items, "/m", workdir="/")
    assert str(e.value) == MULTI
    with pytest.raises(InvalidArgument, match="When using ADD with more than one source file"):
        copy_into(str(root), items, "/m", workdir="/", instruction="ADD", wildcard=True)
    assert copy_into(str(root), items, "/m/", workdir="/") == ["/m/f", "/m/g"]
    assert copy_into(str(root), [], "/m", workdir="/", wildcard=True) == []  # a pattern that matched nothing
    with pytest.raises(InvalidArgument, match="no source files were specified"):
        copy_into(str(root), [], "/m/", workdir="/")
    with pytest.raises(InvalidArgument, match="/file is not a directory"):
        copy_into(str(root), [item(ctx / "dir")], "/file", workdir="/")
    with pytest.raises(InvalidArgument, match="cannot overwrite a directory 'f'"):
        copy_into(str(root), [item(ctx / "f")], "/hasdir/", workdir="/")


def test_chmod_octal_and_symbolic(tmp_path):
    ctx = mk(tmp_path / "ctx", {"d/plain": "p", "d/tool": "t", "d/sub/x": "x"})
    os.chmod(ctx / "d/plain", 0o600)
    os.chmod(ctx / "d/tool", 0o700)
    os.chmod(ctx / "d/sub", 0o700)
    root = tmp_path / "root"
    root.mkdir()
    copy_into(str(root), [item(ctx / "d")], "/oct/", workdir="/", chmod="750")
    assert [mode(root / "oct" / p) for p in ("plain", "tool", "sub")] == [0o750] * 3
    assert mode(root / "oct") == 0o755  # made on the way: not --chmod'ed
    copy_into(str(root), [item(ctx / "d")], "/sym/", workdir="/", chmod="u=rwX,go=rX")
    assert [mode(root / "sym" / p) for p in ("plain", "tool", "sub")] == [0o644, 0o755, 0o755]
    copy_into(str(root), [item(ctx / "d/plain")], "/plus", workdir="/", chmod="+x")
    copy_into(str(root), [item(ctx / "d/tool")], "/gu", workdir="/", chmod="g=u,o-rwx")
    assert (mode(root / "plus"), mode(root / "gu")) == (0o711, 0o770)
    with pytest.raises(InvalidArgument, match="invalid --chmod=u\\+q"):
        copy_into(str(root), [item(ctx / "d")], "/bad/", workdir="/", chmod="u+q")


def test_destination_symlinks_resolve_inside_the_rootfs(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    ctx = mk(tmp_path / "ctx", {"f": "F", "dir/sub/b": "B"})
    root = mk(tmp_path / "root", {"etc": ("->", str(outside)), "x": ("->", "/"), "up": ("->", "../../../../.."),
                                  "conf": ("->", str(outside / "conf")), "d/sub": ("->", str(outside))})
    inner = str(outside).lstrip("/")
    assert copy_into(str(root), [item(ctx / "f")], "/etc/", workdir="/") == [f"/{inner}/f"]
    assert (root / inner / "f").read_text() == "F"
    copy_into(str(root), [item(ctx / "f")], "/x/x/top", workdir="/")
    copy_into(str(root), [item(ctx / "f")], "/up/z/", workdir="/")
    copy_into(str(root), [item(ctx / "f")], "/conf", workdir="/")  # a link to a file: its target is written
    assert (root / "top").is_file() and (root / "z/f").is_file() and (root / inner / "conf").is_file()
    with pytest.raises(InvalidArgument, match="cannot overwrite a non-directory 'sub'"):  # a link below the dest
        copy_into(str(root), [item(ctx / "dir")], "/d/", workdir="/")
    assert list(outside.iterdir()) == []


# -- ADD: archives, URLs; heredocs ------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["", "gz", "xz", "bz2", "zst"])
def test_add_extracts_a_local_tar_found_by_content(tmp_path, compression):
    archive = tmp_path / "ctx" / "payload.bin"
    archive.parent.mkdir()
    archive.write_bytes(make_tar(compression))
    root = mk(tmp_path / "root", {"x/top.txt": "old", "x/other": "stays"})
    assert copy_into(str(root), [item(archive)], "/x", workdir="/", instruction="ADD") == ["/x"]
    assert tree(root / "x") == {"top.txt", "other", "d", "d/n.txt", "d/l", "abs.txt"}
    assert (root / "x/top.txt").read_text() == "new" and os.readlink(root / "x/d/l") == "n.txt"
    assert mode(root / "x/d/n.txt") == 0o640 and (root / "x/d/n.txt").stat().st_mtime == 1_400_000_000
    copy_into(str(root), [item(archive)], "/kept/", workdir="/", instruction="ADD", unpack=False)
    copy_into(str(root), [item(archive)], "/copied/", workdir="/", instruction="COPY")
    kept, copied = (root / "kept/payload.bin").read_bytes(), (root / "copied/payload.bin").read_bytes()
    assert kept == archive.read_bytes() == copied


def test_add_copies_a_compressed_file_that_is_no_tar_and_refuses_escaping_members(tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "notes.gz").write_bytes(zstandard.ZstdCompressor().compress(b"just text, no tar" * 40))
    (ctx / "evil.tar.gz").write_bytes(make_tar("gz", [("ok.txt", b"ok"), ("../evil.txt", b"evil")]))
    root = tmp_path / "root" / "fs"
    root.mkdir(parents=True)
    copy_into(str(root), [item(ctx / "notes.gz")], "/n/", workdir="/", instruction="ADD")
    assert (root / "n/notes.gz").read_bytes() == (ctx / "notes.gz").read_bytes()
    with pytest.raises(InvalidArgument, match="refusing archive entry '../evil.txt': it escapes"):
        copy_into(str(root), [item(ctx / "evil.tar.gz")], "/", workdir="/", instruction="ADD")
    assert not (tmp_path / "root/evil.txt").exists() and not (tmp_path / "evil.txt").exists()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)  # an absolute URL when it came through as a proxy
        path = urlsplit(self.path).path
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/files/data.txt")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.files.get(path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        if path == "/files/data.txt":
            self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []
    server.files = {"/files/data.txt": b"payload\n", "/": b"index page", "/pkg.tar.gz": make_tar("gz")}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_add_url(tmp_path, http_server, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server, base = http_server
    dl, root = tmp_path / "dl", tmp_path / "root"
    dl.mkdir()
    root.mkdir()
    digest = "sha256:" + hashlib.sha256(b"payload\n").hexdigest()
    got = fetch_url(base + "/files/data.txt", str(dl), checksum=digest)
    assert (got.kind, got.name, got.digest, got.is_dir) == ("url", "data.txt", digest, False)
    assert mode(Path(got.host_path)) == 0o600
    when = email.utils.parsedate_to_datetime(LAST_MODIFIED).timestamp()
    assert copy_into(str(root), [got], "/srv/", workdir="/", instruction="ADD", checksum=digest) == ["/srv/data.txt"]
    out = root / "srv/data.txt"
    assert out.read_bytes() == b"payload\n" and mode(out) == 0o600 and out.stat().st_mtime == when
    copy_into(str(root), [got], "/renamed", workdir="/", instruction="ADD")
    assert (root / "renamed").read_bytes() == b"payload\n"
    with pytest.raises(DigestMismatch, match="expected sha256:0000"):
        copy_into(str(root), [got], "/bad/", workdir="/", instruction="ADD", checksum="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match=f"has digest {digest}"):
        fetch_url(base + "/files/data.txt", str(dl), checksum="sha256:" + "1" * 64)
    assert os.listdir(dl) == [Path(got.host_path).name]  # nothing kept from the failed download
    with pytest.raises(NotFound, match="HTTP 404"):
        fetch_url(base + "/nope", str(dl))
    assert fetch_url(base + "/redirect", str(dl)).name == "redirect"
    assert fetch_url(base + "/", str(dl)).name == "__unnamed__"
    tarball = fetch_url(base + "/pkg.tar.gz", str(dl))
    copy_into(str(root), [tarball], "/plain/", workdir="/", instruction="ADD")  # a URL is not extracted...
    copy_into(str(root), [tarball], "/unpacked/", workdir="/", instruction="ADD", unpack=True)  # ...unless asked
    assert tree(root / "plain") == {"pkg.tar.gz"} and (root / "unpacked/d/n.txt").read_text() == "nested"
    monkeypatch.setenv("HTTP_PROXY", base)  # the same server answers as the proxy
    assert Path(fetch_url("http://files.invalid/files/data.txt", str(dl)).host_path).read_bytes() == b"payload\n"
    assert server.seen[-1] == "http://files.invalid/files/data.txt"


def test_heredoc_items(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    doc = CopyItem("heredoc", None, "motd", False, data=b"hello\n")
    assert copy_into(str(root), [doc], "/etc/motd", workdir="/") == ["/etc/motd"]
    assert copy_into(str(root), [doc], "/h/", workdir="/") == ["/h/motd"]
    assert (root / "etc/motd").read_bytes() == b"hello\n" == (root / "h/motd").read_bytes()
    assert mode(root / "h/motd") == 0o644


# -- sources: COPY --from and the build context ----------------------------------------------------------------
def test_resolve_from_rootfs_wildcards_and_symlinks_stay_inside(tmp_path):
    mk(tmp_path, {"etc/secret": "host side"})  # what the escaping links would reach outside that rootfs
    stage = mk(tmp_path / "a" / "b" / "stage", {
        "app/lib/x.so": "x", "app/lib/y.so": "y", "app/lib/z.txt": "z", "app/bin/tool": "t", "etc/secret": "stage",
        "abs": ("->", "/app/bin"), "rel": ("->", "../../../../../../etc"), "app/tool-link": ("->", "bin/tool")})
    items = resolve_from_rootfs(str(stage), ["/app/lib/*.so", "rel/secret", "/abs/tool", "app/tool-link"])
    assert [(i.name, i.host_path, i.is_dir, i.keep_owner) for i in items] == [
        ("x.so", str(stage / "app/lib/x.so"), False, True), ("y.so", str(stage / "app/lib/y.so"), False, True),
        ("secret", str(stage / "etc/secret"), False, True), ("tool", str(stage / "app/bin/tool"), False, True),
        ("tool-link", str(stage / "app/bin/tool"), False, True)]
    assert [i.name for i in resolve_from_rootfs(str(stage), ["/a*/*"])] == ["bin", "lib", "tool-link"]
    with pytest.raises(InvalidArgument, match="no source files"):  # a wildcard match is not descended via a link
        resolve_from_rootfs(str(stage), ["/ab*/tool"])
    with pytest.raises(NotFound, match="/nope: no such file or directory in the --from source"):
        resolve_from_rootfs(str(stage), ["/nope"])
    root = tmp_path / "root"
    root.mkdir()
    copy_into(str(root), resolve_from_rootfs(str(stage), ["/app"]), "/opt/", workdir="/")
    assert os.readlink(root / "opt/tool-link") == "bin/tool" and (root / "opt/lib/x.so").read_text() == "x"


def test_context_walk_applies_dockerignore(tmp_path):
    mk(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n", ".dockerignore": "*.log\n!keep.log\nsecret\n",
                          "a.log": "", "keep.log": "", "src/main.c": "int main;", "src/util.h": "",
                          "secret/key": "k"})
    root = tmp_path / "root"
    root.mkdir()
    with open_context(str(tmp_path / "ctx")) as ctx:
        items, walk = context_items(ctx, ctx.resolve_sources(["."]))
        copy_into(str(root), items, "/app/", workdir="/", walk=walk, exclude=["src/*.h"])
    assert tree(root / "app") == {"Dockerfile", ".dockerignore", "keep.log", "src", "src/main.c"}


def test_chown_names_resolve_against_the_rootfs(tmp_path):
    root = mk(tmp_path / "root", {"etc": ("->", "/real-etc"), "real-etc/passwd": "app:x:1001:1002::/home/app:/bin/sh\n",
                                  "real-etc/group": "staff:x:50:app\n"})
    assert resolve_chown(str(root), "app") == (1001, 1002)
    assert resolve_chown(str(root), "app:staff") == (1001, 50)
    assert resolve_chown(str(root), "app:7") == (1001, 7)
    assert resolve_chown(str(root), "1500") == (1500, 1500)
    assert resolve_chown(str(root), "1500:staff") == (1500, 50)
    with pytest.raises(InvalidArgument, match="unable to find user nosuch"):
        copy_into(str(root), [CopyItem("heredoc", None, "x", False, data=b"")], "/x", workdir="/", chown="nosuch")
    with pytest.raises(InvalidArgument, match="unable to find group wheel"):
        resolve_chown(str(root), "app:wheel")
    assert not (root / "x").exists()


# -- owners (inside the user namespace when rootless) -----------------------------------------------------------
@pytest.fixture
def ns(module_pinnace, tmp_path):
    """(a directory, run(ops)): ops run by copier_driver.py inside `pinnace unshare`; the directory is removed
    from inside the namespace afterwards (it holds files of ids the test user cannot delete)."""
    base = tmp_path / "ns"
    base.mkdir()

    def run(ops: list[dict]) -> list:
        res = subprocess.run([PINNACE_BIN, "--root", str(module_pinnace.root), "--runroot", str(module_pinnace.runroot),
                              "unshare", sys.executable, str(DRIVER)], input=json.dumps(ops), capture_output=True,
                             text=True, env=module_pinnace.env, timeout=120)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    yield base, run
    assert run([{"op": "rmtree", "path": str(base)}]) == [False]


def test_owners_context_chown_from_and_tar(ns):
    base, run = ns
    ctx = mk(base / "ctx", {"f": "F", "dir/x": "X", "dir/sub/y": "Y"})
    root = mk(base / "root", {"etc/passwd": "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n",
                              "etc/group": "root:x:0:\nstaff:x:50:app\n", "existing": None})
    stage = mk(base / "stage", {"bin/tool": "T", "data/z": "Z"})
    (ctx / "owned.tar").write_bytes(make_tar("", [("m.txt", b"m")], owner=(1500, 1600)))

    def copy(src: Path, dest: str, **kw) -> dict:
        it = {"kind": "path", "host_path": str(src), "name": src.name, "is_dir": src.is_dir()}
        return {"op": "copy", "rootfs": str(root), "items": [it], "dest": dest, "kw": {"workdir": "/", **kw}}

    chowns = [{"op": "chown", "path": str(ctx / "f"), "uid": 1234, "gid": 1235, "mode": 0o4755}]
    chowns += [{"op": "chown", "path": str(p), "uid": 1234, "gid": 1235}
               for p in (ctx / "dir", ctx / "dir/x", ctx / "dir/sub", ctx / "dir/sub/y", stage / "bin/tool")]
    chowns += [{"op": "chown", "path": str(stage / "data/z"), "uid": 1302, "gid": 1303}]
    copies = [copy(ctx / "f", "/plain/"), copy(ctx / "dir", "/plaindir/"),
              copy(ctx / "f", "/existing/new/deep/", chown="app"), copy(ctx / "dir", "/byname/", chown="app:staff"),
              copy(ctx / "f", "/num/", chown="1500"), copy(ctx / "f", "/num2/", chown="1500:42"),
              {"op": "copy_from", "src": str(stage), "patterns": ["/bin/tool", "/data"], "rootfs": str(root),
               "dest": "/from/", "kw": {"workdir": "/"}},
              {"op": "copy_from", "src": str(stage), "patterns": ["/bin/tool"], "rootfs": str(root),
               "dest": "/from2/", "kw": {"workdir": "/", "chown": "7:8"}},
              copy(ctx / "owned.tar", "/tarx/", instruction="ADD"),
              copy(ctx / "owned.tar", "/tary/", instruction="ADD", chown="app"),
              copy(ctx / "f", "/bad/", chown="nosuch")]
    paths = ["plain", "plain/f", "plaindir/x", "plaindir/sub", "plaindir/sub/y", "existing", "existing/new",
             "existing/new/deep", "existing/new/deep/f", "byname", "byname/x", "byname/sub/y", "num/f", "num2/f",
             "from", "from/tool", "from/z", "from2/tool", "tarx/m.txt", "tary/m.txt", "bad"]
    results = run(chowns + copies + [{"op": "stat", "paths": [str(root / p) for p in paths]}])
    assert results[-2] == {"error": "InvalidArgument",
                           "message": "unable to find user nosuch: no matching entries in passwd file"}
    assert not any(isinstance(r, dict) and "error" in r for r in results[:-2]), results
    got = {p: results[-1][str(root / p)] for p in paths}
    ids = {p: tuple(v[:2]) if v else None for p, v in got.items()}
    assert [ids[p] for p in ("plain", "plain/f", "plaindir/x", "plaindir/sub", "plaindir/sub/y")] == [(0, 0)] * 5
    assert got["plain/f"][2] == "0o4755"  # the mode is the source's, setuid included
    assert ids["existing"] == (0, 0)  # what existed keeps its owner; what was made on the way is the user's
    assert [ids["existing/new" + p] for p in ("", "/deep", "/deep/f")] == [(1001, 1002)] * 3
    assert [ids[p] for p in ("byname", "byname/x", "byname/sub/y")] == [(1001, 50)] * 3
    assert (ids["num/f"], ids["num2/f"]) == ((1500, 1500), (1500, 42))
    assert (ids["from"], ids["from/tool"], ids["from/z"], ids["from2/tool"]) == ((0, 0), (1234, 1235), (1302, 1303),
                                                                                (7, 8))
    assert (ids["tarx/m.txt"], ids["tary/m.txt"], ids["bad"]) == ((1500, 1600), (1001, 1002), None)
