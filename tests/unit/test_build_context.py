"""The build context: .dockerignore rules, opening a context (directory, tar files, stdin, -f), COPY/ADD
source resolution and content checksums, on real files in tmp_path. Runs as root and as an unprivileged user."""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
from pathlib import Path

import pytest
import tarbuild as tb
import zstandard

from pinnace.builder.context import FileDigests, open_context
from pinnace.builder.ignore import IgnoreRules, clean
from pinnace.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.anyuser

ROOT = os.geteuid() == 0

# (ignore file, path, is_dir, dropped by the walker)
IGNORE_CASES = [
    ("foo", "foo", False, True),
    ("foo", "foo/bar", False, True),  # a parent directory matches
    ("foo", "a/foo", False, False),  # patterns are rooted at the context
    ("/foo", "foo", False, True),  # a leading "/" means nothing
    ("./foo", "foo", False, True),
    ("foo/", "foo/x", False, True),
    ("a/../b", "b", False, True),  # cleaned like filepath.Clean
    ("  foo  \t", "foo", False, True),  # surrounding whitespace trimmed
    ("# foo", "# foo", False, False),  # a comment
    (" # foo", "# foo", False, True),  # only column 1 starts a comment (Docker)
    ("*.md", "README.md", False, True),
    ("*.md", "docs/a.md", False, False),  # "*" never crosses "/"
    ("**/*.md", "docs/a.md", False, True),
    ("**/*.md", "a.md", False, True),  # "**/" is zero directories too
    ("**/*.md", "a/b/c.md", False, True),
    ("**.go", "a/b/c.go", False, True),  # moby: a leading "**" glued to a name is a suffix match
    ("**", "any/thing/at/all", False, True),
    ("a/**/b", "a/b", False, True),
    ("a/**/b", "a/x/y/b", False, True),
    ("a/**/b", "a/x/c", False, False),
    ("a/**", "a/x/y", False, True),
    ("a/**", "a", True, False),  # "a/" + anything: not "a" itself
    ("foo*", "foobar", False, True),
    ("foo*", "foo/bar", False, True),
    ("temp?", "tempa", False, True),
    ("temp?", "temp", False, False),
    ("temp?", "tempab", False, False),
    ("*/temp*", "somedir/temporary.txt", False, True),
    ("*/temp*", "temporary.txt", False, False),
    ("*/*/temp*", "a/b/temp", False, True),
    ("[a-c].txt", "b.txt", False, True),
    ("[a-c].txt", "d.txt", False, False),
    ("[^a].txt", "a.txt", False, False),  # "^" negates
    ("[^a].txt", "b.txt", False, True),
    ("[!a].txt", "!.txt", False, True),  # "!" is a member, not a negation (Go)
    ("[!a].txt", "b.txt", False, False),
    ("[\\]].txt", "].txt", False, True),
    ("\\*.txt", "*.txt", False, True),  # escapes
    ("\\*.txt", "a.txt", False, False),
    ("*.md\n!README.md", "README.md", False, False),
    ("*.md\n!README.md", "CHANGES.md", False, True),
    ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", False, True),  # the last match decides
    ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False, False),
    ("*\n!src", "src/main.py", False, False),  # an exception re-includes below it
    ("*\n!src", "other", False, True),
    ("node_modules\n!node_modules/keep", "node_modules", True, False),  # excluded but must be walked
    ("node_modules\n!node_modules/keep", "node_modules/other", False, True),
    ("node_modules\n!node_modules/keep", "node_modules/keep", False, False),
    ("build\n!src/keep", "build", True, True),  # no exception inside: skipped
    ("dir\n!**/*.py", "dir", True, False),
    ("dir\n!**/*.py", "dir/x.py", False, False),
    ("dir\n!**/*.py", "dir/x.txt", False, True),
    ("!dir/keep\ndir", "dir/keep", False, True),  # an exception before the exclusion loses
    ("!dir/keep\ndir", "dir", True, True),
    ("a\n!a/b/c", "a/b", True, False),
    ("a\n!a/b/c", "a/x", True, True),
    (".", "anything", False, False),
    ("../x", "x", False, False),
    ("Dockerfile\n.dockerignore", "Dockerfile", False, True),  # no special case in the rules themselves
    ("*", "", True, False),  # the root is never ignored
]


@pytest.mark.parametrize("text,path,is_dir,expected", IGNORE_CASES)
def test_ignore_rules(text, path, is_dir, expected):
    assert IgnoreRules.parse(text).ignored(path, is_dir) is expected


def test_ignore_excluded_differs_from_ignored_for_walked_directories():
    rules = IgnoreRules.parse("node_modules\n!node_modules/keep")
    assert rules.excluded("node_modules") and not rules.ignored("node_modules", True) and rules.has_exceptions
    assert not IgnoreRules.parse("a").has_exceptions and not IgnoreRules.parse("# only a comment\n\n")


@pytest.mark.parametrize("text", ["!", "  !  ", "a[", "[]", "a\\", "[a-]"])
def test_ignore_bad_patterns_name_the_line(text):
    with pytest.raises(InvalidArgument, match=r"\.dockerignore:2: "):
        IgnoreRules.parse("ok\n" + text)


def test_clean_is_go_filepath_clean():
    cases = {"": ".", "a//b/./c/..": "a/b", "/..": "/", "../a/..": "..", "./": ".", "a/": "a"}
    assert {raw: clean(raw) for raw in cases} == cases


# -- contexts ---------------------------------------------------------------------------------------------
def make_tree(base: Path, files: dict[str, str | bytes]) -> Path:
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return base


def tar_bytes(files: dict[str, str]) -> bytes:
    return tb.build(*(tb.file(name, data.encode(), uid=1234, gid=4321) for name, data in files.items()))


COMPRESSORS = {"plain": lambda b: b, "gzip": gzip.compress, "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
               "bzip2": bz2.compress, "xz": lzma.compress}


def test_directory_context(tmp_path):
    ctx_dir = make_tree(tmp_path / "ctx", {"Dockerfile": "FROM scratch\n", "a.txt": "a"})
    with open_context(str(ctx_dir)) as ctx:
        assert (ctx.kind, ctx.root, ctx.dockerfile_name) == ("dir", str(ctx_dir), "Dockerfile")
        assert ctx.dockerfile_text == "FROM scratch\n" and ctx.dockerfile_path == str(ctx_dir / "Dockerfile")
        assert [s.real for s in ctx.resolve_sources(["a.txt"])] == ["a.txt"]
    assert (ctx_dir / "a.txt").exists()  # the user's directory is never removed


def test_relative_source_and_dockerfile_follow_workdir(tmp_path):
    make_tree(tmp_path / "ctx", {"Dockerfile.dev": "FROM dev\n"})
    make_tree(tmp_path, {"Dockerfile.dev": "FROM cwd\n"})
    with open_context("ctx", "Dockerfile.dev", workdir=str(tmp_path)) as ctx:
        assert ctx.dockerfile_text == "FROM cwd\n"  # Docker: -f is relative to the working directory
    (tmp_path / "Dockerfile.dev").unlink()
    with open_context("ctx", "Dockerfile.dev", workdir=str(tmp_path)) as ctx:
        assert ctx.dockerfile_text == "FROM dev\n"  # Podman: else in the context


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_tar_file_context(tmp_path, compression):
    archive = tmp_path / f"ctx.{compression}"
    archive.write_bytes(COMPRESSORS[compression](tar_bytes({"Dockerfile": "FROM t\n", "d/f.txt": "f"})))
    ctx = open_context(str(archive), tmpdir=str(tmp_path))
    try:
        assert ctx.kind == "tar" and ctx.dockerfile_text == "FROM t\n"
        assert Path(ctx.root, "d/f.txt").read_text() == "f"
        assert Path(ctx.root).parent == tmp_path  # extracted below tmpdir
    finally:
        ctx.close()
    assert not Path(ctx.root).exists()
    ctx.close()  # twice is harmless


@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_stdin_tar_context(tmp_path, compression):
    stdin = io.BytesIO(COMPRESSORS[compression](tar_bytes({"Dockerfile": "FROM s\n", "x": "y"})))
    with open_context("-", stdin=stdin, tmpdir=str(tmp_path)) as ctx:
        assert (ctx.kind, ctx.dockerfile_text) == ("stdin-tar", "FROM s\n")
        assert ctx.resolve_sources(["x"])[0].host_path == os.path.join(ctx.root, "x")


def test_stdin_dockerfile_means_no_context(tmp_path):
    with open_context("-", "ignored-as-in-docker", stdin=io.BytesIO(b"\xef\xbb\xbfFROM busybox\nCOPY a /\n"),
                      tmpdir=str(tmp_path)) as ctx:
        assert (ctx.kind, ctx.dockerfile_name, ctx.dockerfile_path) == ("none", "Dockerfile", None)
        assert ctx.dockerfile_text == "FROM busybox\nCOPY a /\n"  # BOM dropped
        assert os.listdir(ctx.root) == []
        with pytest.raises(NotFound, match="COPY failed: .*a: no such file or directory"):
            ctx.resolve_sources(["a"])
    assert os.listdir(tmp_path) == []


def test_dockerfile_from_stdin_with_a_directory(tmp_path):
    ctx_dir = make_tree(tmp_path / "ctx", {"Dockerfile": "FROM file\n", "a": "a"})
    with open_context(str(ctx_dir), "-", stdin=io.BytesIO(b"FROM stdin\n")) as ctx:
        assert (ctx.dockerfile_text, ctx.dockerfile_path, ctx.kind) == ("FROM stdin\n", None, "dir")
    with pytest.raises(InvalidArgument, match="both the build context and the Dockerfile from stdin"):
        open_context("-", "-", stdin=io.BytesIO(b""))


def test_dockerfile_outside_the_context_brings_its_own_ignore_file(tmp_path):
    ctx_dir = make_tree(tmp_path / "ctx", {"a.txt": "a", "b.txt": "b", ".dockerignore": "a.txt"})
    df = make_tree(tmp_path / "elsewhere", {"app.Dockerfile": "FROM x\n", "app.Dockerfile.dockerignore": "b.txt"})
    with open_context(str(ctx_dir), str(df / "app.Dockerfile")) as ctx:
        assert ctx.dockerfile_name == str(df / "app.Dockerfile") and ctx.dockerfile_text == "FROM x\n"
        assert ctx.ignore_file == str(df / "app.Dockerfile.dockerignore")
        assert [s.path for s in ctx.resolve_sources(["*.txt"])] == ["a.txt"]
    with open_context(str(ctx_dir), str(df / "app.Dockerfile"), ignorefile=str(ctx_dir / ".dockerignore")) as ctx:
        assert [s.path for s in ctx.resolve_sources(["*.txt"])] == ["b.txt"]


def test_containerfile_fallback_and_ignore_file_names(tmp_path):
    ctx_dir = make_tree(tmp_path / "ctx", {"Containerfile": "FROM c\n", "x": "", ".dockerignore": "x"})
    with open_context(str(ctx_dir)) as ctx:
        assert (ctx.dockerfile_name, ctx.dockerfile_text) == ("Containerfile", "FROM c\n")
        assert ctx.ignore_file == str(ctx_dir / ".dockerignore")
    make_tree(ctx_dir, {"Dockerfile": "FROM d\n", ".containerignore": "Dockerfile"})
    with open_context(str(ctx_dir)) as ctx:  # Dockerfile first; .containerignore before .dockerignore
        assert ctx.dockerfile_text == "FROM d\n" and ctx.ignore_file == str(ctx_dir / ".containerignore")
        assert ctx.resolve_sources(["x"])[0].path == "x"
        with pytest.raises(NotFound):  # read for the build, invisible to COPY
            ctx.resolve_sources(["Dockerfile"])


def test_missing_things_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotFound, match="Dockerfile or Containerfile in the build context"):
        open_context(str(empty))
    with pytest.raises(NotFound, match="nope: no such file"):
        open_context(str(tmp_path / "nope"))
    with pytest.raises(NotFound, match="Dockerfile other: no such file"):
        open_context(str(empty), "other", workdir=str(tmp_path))
    (tmp_path / "notatar").write_text("hello")
    with pytest.raises(InvalidArgument, match="neither a directory nor a tar archive"):
        open_context(str(tmp_path / "notatar"))
    (empty / "Dockerfile").mkdir()
    with pytest.raises(NotFound):
        open_context(str(empty))
    with pytest.raises(InvalidArgument, match="is a directory"):
        open_context(str(empty), str(empty / "Dockerfile"))


@pytest.mark.parametrize("members,what", [
    ([tb.file("../evil", b"x")], "escapes"),
    ([tb.file("a/../../evil", b"x")], "escapes"),
    ([tb.file("/tmp/evil", b"x")], "absolute"),
    ([tb.symlink("link", "../outside"), tb.file("link/evil", b"x")], "symlink"),
    ([tb.hardlink("h", "../../outside/secret")], "escapes"),
])
def test_hostile_tar_is_refused(tmp_path, members, what):
    outside = make_tree(tmp_path / "outside", {"secret": "host"})
    work = tmp_path / "work"
    work.mkdir()
    archive = tmp_path / "ctx.tar"
    archive.write_bytes(tb.build(tb.file("Dockerfile", b"FROM x\n"), *members))
    with pytest.raises(InvalidArgument, match=what):
        open_context(str(archive), tmpdir=str(work))
    assert os.listdir(work) == [] and os.listdir(outside) == ["secret"]
    assert (outside / "secret").read_text() == "host" and not (tmp_path / "evil").exists()


def test_archive_symlinks_never_reach_host_files(tmp_path):
    """A Dockerfile or ignore file in an archive that is a symlink out of it resolves inside the context."""
    outside = make_tree(tmp_path / "outside", {"Dockerfile": "FROM host-secret\n", "ignore": "a"})
    archive = tmp_path / "ctx.tar"
    archive.write_bytes(tb.build(tb.symlink("Dockerfile", str(outside / "Dockerfile")), tb.file("a", b"")))
    with pytest.raises(NotFound, match="Dockerfile or Containerfile"):
        open_context(str(archive))
    archive.write_bytes(tb.build(tb.file("Dockerfile", b"FROM x\n"), tb.file("a", b""),
                                 tb.symlink(".dockerignore", "../../../../../../../" + str(outside / "ignore"))))
    with open_context(str(archive)) as ctx:
        assert ctx.ignore_file is None and ctx.resolve_sources(["a"])[0].path == "a"


# -- COPY/ADD sources -------------------------------------------------------------------------------------
@pytest.fixture()
def tree(tmp_path):
    ctx_dir = make_tree(tmp_path / "ctx", {
        "Dockerfile": "FROM x\n", "a.txt": "a", "b.txt": "b", "c.md": "c", "secret.txt": "s",
        "src/main.py": "m", "src/util.py": "u", "src/data.bin": "d", "lib/x.py": "x",
        "node_modules/keep/k.js": "k", "node_modules/drop.js": "d", "build/out": "o", "a*b": "star",
        ".dockerignore": "secret.txt\nnode_modules\n!node_modules/keep\nbuild\n",
    })
    make_tree(tmp_path / "outside", {"passwd": "root"})
    links = {"srclink": "src", "alink": "a.txt", "up": "../outside/passwd", "abs_out": str(tmp_path / "outside/passwd"),
             "abs_in": str(ctx_dir / "b.txt"), "loop1": "loop2", "loop2": "loop1", "to_secret": "secret.txt"}
    for name, target in links.items():
        os.symlink(target, ctx_dir / name)
    with open_context(str(ctx_dir)) as ctx:
        yield ctx


@pytest.mark.parametrize("patterns,paths", [
    (["*.txt"], ["a.txt", "b.txt"]),  # secret.txt is ignored
    (["src/*.py"], ["src/main.py", "src/util.py"]),
    (["*/*.py"], ["lib/x.py", "src/main.py", "src/util.py"]),  # a matched symlink is not descended
    (["srclink/*.py"], ["src/main.py", "src/util.py"]),  # a literal one is followed
    (["s?c/ma*"], ["src/main.py"]),
    (["[ab].txt", "c.md"], ["a.txt", "b.txt", "c.md"]),
    (["a[*]b"], ["a*b"]),  # a class quotes a wildcard character
    (["*.none", "a.txt"], ["a.txt"]),  # a wildcard matching nothing is fine when something else matched
    (["/a.txt", "./b.txt", "src/../c.md"], ["a.txt", "b.txt", "c.md"]),  # all relative to the context
    (["node_*/*"], ["node_modules/keep"]),
    (["."], [""]),
])
def test_resolve_sources(tree, patterns, paths):
    assert [s.path for s in tree.resolve_sources(patterns)] == paths


def test_sources_follow_symlinks_inside(tree):
    [link] = tree.resolve_sources(["alink"])
    assert (link.name, link.real, link.is_dir) == ("alink", "a.txt", False)  # the name is the link's
    [d] = tree.resolve_sources(["srclink/"])
    assert (d.real, d.is_dir, d.host_path) == ("src", True, os.path.join(tree.root, "src"))
    assert tree.resolve_sources(["srclink/main.py"])[0].real == "src/main.py"
    assert tree.resolve_sources(["abs_in"])[0].real == "b.txt"  # absolute, but inside the context


@pytest.mark.parametrize("pattern,detail", [
    ("../x", ""), ("a/../../x", ""), ("up", " (up is a symlink to ../outside/passwd)"), ("abs_out", "abs_out is a"),
])
def test_sources_outside_the_context_are_forbidden(tree, pattern, detail):
    with pytest.raises(InvalidArgument) as e:
        tree.resolve_sources([pattern])
    assert str(e.value).startswith(f"COPY failed: forbidden path outside the build context: {pattern}")
    assert detail in str(e.value)


def test_missing_and_ignored_sources(tree):
    for name in ("nope", "secret.txt", "to_secret", "build", "build/out", "node_modules/drop.js"):
        with pytest.raises(NotFound, match=f"ADD failed: .*{name}: no such file or directory"):
            tree.resolve_sources([name], instruction="ADD")
    with pytest.raises(InvalidArgument, match="^COPY failed: no source files were specified$"):
        tree.resolve_sources(["*.none"])
    with pytest.raises(InvalidArgument, match="too many levels"):
        tree.resolve_sources(["loop1"])


def test_walk_shows_only_visible_entries(tree):
    [nm] = tree.resolve_sources(["node_modules"])  # excluded, but an exception lives inside
    assert [e.path for e in tree.walk(nm)] == ["", "keep", "keep/k.js"]
    [root] = tree.resolve_sources(["."])
    paths = [e.path for e in tree.walk(root)]
    assert "secret.txt" not in paths and "build" not in paths and "node_modules/drop.js" not in paths
    assert "node_modules/keep/k.js" in paths and "srclink" in paths
    assert paths == sorted(paths, key=lambda p: p.split("/"))  # parents first, siblings sorted


# -- checksums --------------------------------------------------------------------------------------------
def checksum(ctx_dir: Path, patterns: list[str], chown=None, digests=None) -> str:
    with open_context(str(ctx_dir), "-", stdin=io.BytesIO(b"FROM x\n"), digests=digests) as ctx:
        return ctx.checksum(ctx.resolve_sources(patterns), chown)


def test_checksum_ignores_times_but_not_content_modes_owners_or_names(tmp_path):
    ctx_dir = make_tree(tmp_path / "ctx", {"d/f": "data", "d/g": "g", "d/ignored": "i", "big": os.urandom(1 << 20),
                                           ".dockerignore": "d/ignored"})
    os.symlink("f", ctx_dir / "d/link")
    base = checksum(ctx_dir, ["d", "big"])
    assert base.startswith("sha256:") and base == checksum(ctx_dir, ["d", "big"])
    os.utime(ctx_dir / "d/f", ns=(1, 1))
    os.utime(ctx_dir / "d", ns=(1, 1))
    (ctx_dir / "d/ignored").write_text("changed")  # an ignored file is not read
    assert checksum(ctx_dir, ["d", "big"]) == base
    assert checksum(ctx_dir, ["d", "big"], chown=(0, 0)) == base  # None is 0:0
    assert checksum(ctx_dir, ["d", "big"], chown=(1000, 1000)) != base
    assert checksum(ctx_dir, ["big", "d"]) != base  # sources in another order copy differently
    changes = [
        lambda: (ctx_dir / "d/f").write_text("datA"),
        lambda: os.chmod(ctx_dir / "d/f", 0o600),
        lambda: os.chmod(ctx_dir / "d/f", 0o4644),  # setuid
        lambda: os.chmod(ctx_dir / "d", 0o700),
        lambda: (os.unlink(ctx_dir / "d/link"), os.symlink("g", ctx_dir / "d/link")),
        lambda: os.rename(ctx_dir / "d/g", ctx_dir / "d/h"),
        lambda: (ctx_dir / "d/new").write_text(""),
    ]
    for change in changes:
        before = checksum(ctx_dir, ["d", "big"])
        change()
        assert checksum(ctx_dir, ["d", "big"]) != before


def test_checksum_sees_content_rewritten_with_the_same_size_and_mtime(tmp_path):
    ctx_dir = make_tree(tmp_path / "ctx", {"f": "aaaa"})
    digests = FileDigests()  # shared: the memo must not hide the change
    before = checksum(ctx_dir, ["f"], digests=digests)
    st = os.stat(ctx_dir / "f")
    (ctx_dir / "f").write_text("bbbb")
    os.utime(ctx_dir / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert checksum(ctx_dir, ["f"], digests=digests) != before


def test_checksum_is_the_same_for_a_tar_of_the_same_tree(tmp_path):
    """Host owners and mtimes differ between the directory and the extracted tar: the sums do not."""
    files = {"Dockerfile": "FROM x\n", "app/a.py": "print(1)\n", "app/b/c": "c"}
    ctx_dir = make_tree(tmp_path / "ctx", files)
    for p in [ctx_dir / "app", ctx_dir / "app/b"]:
        os.chmod(p, 0o755)
    for p in [ctx_dir / "app/a.py", ctx_dir / "app/b/c"]:
        os.chmod(p, 0o644)
    archive = tmp_path / "ctx.tar.gz"
    members = [tb.file(n, d.encode(), uid=1234, gid=4321) for n, d in files.items()]
    archive.write_bytes(gzip.compress(tb.build(tb.directory("app"), tb.directory("app/b"), *members)))
    with open_context(str(ctx_dir)) as a, open_context(str(archive)) as b:
        if ROOT:
            assert os.stat(os.path.join(b.root, "app/a.py")).st_uid == 1234
        assert a.checksum(a.resolve_sources(["app"])) == b.checksum(b.resolve_sources(["app"]))
        assert stat.S_IMODE(os.stat(os.path.join(b.root, "app/b")).st_mode) == 0o755
