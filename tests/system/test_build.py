"""`build`: every Dockerfile instruction against the fixture busybox (debian for bash), checked the way a
user sees the result — `image inspect` of the config and history, `history`, `save`, and `run` of the
built image to look at its files — plus multi-stage builds, contexts, flags and bad input.

Expected values follow Docker (BuildKit's Dockerfile frontend): history `created_by` strings, `empty_layer`
on metadata-only steps, one layer per RUN/COPY/ADD. One store per module (busybox pulled once); every test
builds under its own tags.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import platform
import re
import tarfile
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from testenv import REGISTRY

pytestmark = pytest.mark.anyuser  # rootless as the test user, and again as root

BUSYBOX = f"{REGISTRY}/fixtures/busybox:latest"
DEBIAN = f"{REGISTRY}/fixtures/debian:latest"
COMMENT = "buildkit.dockerfile.v0"
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


# -- helpers -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(module_pinnace):
    """The module's store with the busybox fixture pulled once."""
    module_pinnace("pull", "-q", BUSYBOX)
    return module_pinnace


def dockerfile(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n").replace("@BUSYBOX@", BUSYBOX).replace("@DEBIAN@", DEBIAN)


def make_context(root: Path, text: str | None, files: dict | None = None, name: str = "Dockerfile") -> Path:
    """A context directory: the Dockerfile and files {relative path: str | bytes | (content, mode)}."""
    root.mkdir(parents=True, exist_ok=True)
    if text is not None:
        (root / name).write_text(dockerfile(text))
    for rel, content in (files or {}).items():
        mode = 0o644
        if isinstance(content, tuple):
            content, mode = content
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(path, mode)
    return root


def tag() -> str:
    return f"localhost/bt-{uuid.uuid4().hex[:10]}"


def build(p, ctx, *args: str, check: bool = True, input=None, t: str | None = None):
    """`build -t TAG ARGS CONTEXT`; returns (result, tag)."""
    t = t or tag()
    res = p("build", "-t", t, *args, str(ctx), check=check, input=input)
    return res, t


def image_id(res) -> str:
    return res.out.strip().splitlines()[-1]


def inspect(p, ref: str) -> dict:
    return p("image", "inspect", ref).json()[0]


def look(p, ref: str, script: str, *run_args: str) -> str:
    """Output of `sh -c SCRIPT` in a container of the image (whatever its ENTRYPOINT)."""
    return p("run", "--rm", *run_args, "--entrypoint", "/bin/sh", ref, "-c", script).out


def new_history(p, ref: str) -> list[dict]:
    """The history entries this build added on top of the fixture busybox (2 entries)."""
    return inspect(p, ref)["History"][2:]


def created_by(p, ref: str) -> list[str]:
    return [h["created_by"] for h in new_history(p, ref)]


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def tar_file(name: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, 1_700_000_000
    return info, data


def tar_dir(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, gid
    return info, None


def context_tar(files: dict[str, str], mode: str = "w") -> bytes:
    return tar_bytes([tar_file(name, data.encode()) for name, data in files.items()], mode)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A web server on 127.0.0.1 (a thread of this test process) serving files from a directory;
    yields (directory, port, list of request paths it got)."""
    root = tmp_path_factory.mktemp("www")
    seen: list[str] = []

    class Handler(_Quiet):
        def do_GET(self) -> None:
            seen.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, server.server_address[1], seen
    server.shutdown()
    server.server_close()


# -- FROM --------------------------------------------------------------------------------------------------

def test_from_arg_before_from_and_stage_names(store, tmp_path):
    ctx = make_context(tmp_path, """
        ARG REPO=@REPO@
        ARG VERSION=latest
        FROM ${REPO}:${VERSION} AS Base1
        RUN echo from-arg > /f
        FROM base1 AS second
        RUN cat /f > /g
        """.replace("@REPO@", BUSYBOX.rsplit(":", 1)[0]))
    _, t = build(store, ctx)
    assert look(store, t, "cat /g") == "from-arg\n"
    # the second stage starts from the first: its history and layers continue the first's
    assert created_by(store, t) == ["RUN /bin/sh -c echo from-arg > /f # buildkit",
                                    "RUN /bin/sh -c cat /f > /g # buildkit"]
    assert len(inspect(store, t)["RootFS"]["Layers"]) == 3


def test_from_scratch(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM scratch
        COPY --from=@BUSYBOX@ /bin/busybox /bin/busybox
        COPY hello.txt /
        """, {"hello.txt": "from scratch\n"})
    _, t = build(store, ctx)
    out = store("run", "--rm", "--entrypoint", "/bin/busybox", t, "sh", "-c", "cat /hello.txt; /bin/busybox ls /").out
    lines = out.splitlines()
    assert lines[0] == "from scratch" and {"bin", "hello.txt"} <= set(lines[1:])
    # nothing of busybox's rootfs but the one binary
    assert not {"usr", "home", "root", "var", "tmp", "linuxrc"} & set(lines[1:]), out
    data = inspect(store, t)
    assert data["Os"] == "linux" and data["Architecture"] == HOST_ARCH
    assert len(data["RootFS"]["Layers"]) == 2
    # BuildKit's empty image: PATH and WorkingDir "/"
    assert data["Config"]["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert data["Config"].get("WorkingDir") == "/"
    assert [h["created_by"] for h in data["History"]] == ["COPY /bin/busybox /bin/busybox # buildkit",
                                                          "COPY hello.txt / # buildkit"]


# -- RUN ---------------------------------------------------------------------------------------------------

def test_run_shell_and_exec_forms(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        RUN echo shell-form $((1+2)) > /shell
        RUN ["/bin/busybox", "sh", "-c", "echo \\"$0\\" > /exec", "zero-arg"]
        RUN cat <<EOF > /inline
        inline heredoc
        EOF
        """)
    _, t = build(store, ctx)
    assert look(store, t, "cat /shell /exec /inline") == "shell-form 3\nzero-arg\ninline heredoc\n"
    assert len(inspect(store, t)["RootFS"]["Layers"]) == 1 + 3
    history = created_by(store, t)
    assert history[:2] == ["RUN /bin/sh -c echo shell-form $((1+2)) > /shell # buildkit",
                           'RUN /bin/busybox sh -c echo "$0" > /exec zero-arg # buildkit']


def test_run_heredocs(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        RUN <<EOF
        echo line1 > /heredoc
        echo line2 >> /heredoc
        EOF
        RUN <<EOF
        #!/bin/sh
        echo from-shebang-script > /shebang
        EOF
        RUN <<-EOF
        \techo tabs-stripped > /chomped
        EOF
        """)
    _, t = build(store, ctx)
    assert look(store, t, "cat /heredoc /shebang /chomped") == "line1\nline2\nfrom-shebang-script\ntabs-stripped\n"
    history = new_history(store, t)
    assert len(history) == 3 and all(h["created_by"].startswith("RUN ") and not h.get("empty_layer") for h in history)


def test_run_mount_tmpfs_and_bind(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", """
        FROM @BUSYBOX@ AS first
        RUN echo in-first-stage > /first.txt
        FROM @BUSYBOX@
        RUN --mount=type=tmpfs,target=/scratch echo temp > /scratch/t && cat /scratch/t > /tmpfs-seen
        RUN --mount=type=bind,source=data.txt,target=/mnt/data.txt cat /mnt/data.txt > /bind-seen
        RUN --mount=type=bind,target=/ctx (touch /ctx/new-file 2>/dev/null && echo writable || echo read-only) > /bind-ro
        RUN --mount=type=bind,from=first,source=/first.txt,target=/other cat /other > /from-stage-seen
        """, {"data.txt": "context data\n"})
    _, t = build(store, ctx)
    out = look(store, t, "cat /tmpfs-seen /bind-seen /bind-ro /from-stage-seen; "
                         "for f in /scratch/t /mnt/data.txt /ctx/data.txt /ctx/Dockerfile /ctx/created-by-run /other; "
                         "do [ -s $f ] && echo \"in the image: $f\"; done; echo END")
    # what the mounts showed, and nothing of them in the image
    assert out.splitlines() == ["temp", "context data", "read-only", "in-first-stage", "END"]
    assert sorted(os.listdir(ctx)) == ["Dockerfile", "data.txt"]


def test_run_mount_bind_rw_writes_are_discarded(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", """
        FROM @BUSYBOX@
        RUN --mount=type=bind,target=/ctx,rw echo scribble > /ctx/data.txt && echo x > /ctx/created && cat /ctx/data.txt > /seen
        """, {"data.txt": "context data\n"})
    _, t = build(store, ctx)
    # the command could write (and saw its write) ...
    assert look(store, t, "cat /seen; ls /ctx 2>/dev/null | wc -l") == "scribble\n0\n"
    # ... but the writes are thrown away (Docker): the build context is untouched
    assert (ctx / "data.txt").read_text() == "context data\n"
    assert sorted(os.listdir(ctx)) == ["Dockerfile", "data.txt"]


def test_run_mount_cache_is_kept_across_builds(store, tmp_path):
    cache_id = f"cache-{uuid.uuid4().hex[:8]}"
    first = make_context(tmp_path / "a", f"""
        FROM @BUSYBOX@
        RUN --mount=type=cache,id={cache_id},target=/var/cache/app echo written-by-first > /var/cache/app/f
        """)
    second = make_context(tmp_path / "b", f"""
        FROM @BUSYBOX@
        RUN --mount=type=cache,id={cache_id},target=/cache cat /cache/f > /seen-by-second
        """)
    _, t1 = build(store, first)
    _, t2 = build(store, second)
    assert look(store, t2, "cat /seen-by-second") == "written-by-first\n"
    # the cache's content is not part of either image
    assert look(store, t1, "ls -A /var/cache/app 2>/dev/null | wc -l").strip() == "0"
    assert look(store, t2, "ls -A /cache 2>/dev/null | wc -l").strip() == "0"


def test_run_mount_secret_never_stored(store, tmp_path):
    value = f"s3cr3t-{uuid.uuid4().hex}"
    secret = tmp_path / "token.txt"
    secret.write_text(value)
    ctx = make_context(tmp_path / "ctx", """
        FROM @BUSYBOX@
        RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /sum-default
        RUN --mount=type=secret,id=tok,target=/custom/place sha256sum /custom/place | cut -d' ' -f1 > /sum-target
        RUN --mount=type=secret,id=tok,env=TOKEN printf %s "$TOKEN" | sha256sum | cut -d' ' -f1 > /sum-env
        """)
    res, t = build(store, ctx, "--secret", f"id=tok,src={secret}")
    digest = hashlib.sha256(value.encode()).hexdigest()
    # visible during RUN: each step saw exactly the secret's content
    out = look(store, t, "cat /sum-default /sum-target /sum-env; ls /run/secrets /custom 2>&1; echo \"env=[$TOKEN]\"")
    assert out.splitlines()[:3] == [digest] * 3
    assert "tok" not in out.split() and "place" not in out.split() and "env=[]" in out
    # absent from every layer, the config and the history
    archive = tmp_path / "image.tar"
    store("save", "-o", str(archive), t)
    assert value.encode() not in archive.read_bytes()
    layers = 0
    with tarfile.open(archive) as tf:
        for m in tf.getmembers():
            if m.name.endswith("layer.tar"):
                layers += 1
                with tarfile.open(fileobj=tf.extractfile(m), mode="r:*") as layer:
                    for entry in layer.getmembers():
                        assert not entry.name.endswith(("secrets/tok", "custom/place")), entry.name
                        if entry.isfile():
                            assert value.encode() not in layer.extractfile(entry).read(), entry.name
    assert layers == 1 + 3
    assert value not in json.dumps(inspect(store, t)) and value not in res.out + res.err
    assert value not in store("history", "--no-trunc", t).out


def test_run_uses_build_args_and_env_without_storing_args(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        ARG STAGE_ARG=from-arg
        ENV STAGE_ENV=from-env
        RUN echo "$STAGE_ARG $STAGE_ENV" > /seen
        """)
    _, t = build(store, ctx)
    assert look(store, t, "cat /seen; echo \"[$STAGE_ARG][$STAGE_ENV]\"") == "from-arg from-env\n[][from-env]\n"
    env = inspect(store, t)["Config"]["Env"]
    assert "STAGE_ENV=from-env" in env and not any(e.startswith("STAGE_ARG") for e in env)
    # BuildKit records the args in scope in RUN's created_by ("|N K=V … cmd")
    assert 'RUN |1 STAGE_ARG=from-arg /bin/sh -c echo "$STAGE_ARG $STAGE_ENV" > /seen # buildkit' in \
        created_by(store, t)


# -- metadata instructions ---------------------------------------------------------------------------------

def test_cmd_and_entrypoint(store, tmp_path):
    only_ep = make_context(tmp_path / "a", """
        FROM @BUSYBOX@
        ENTRYPOINT ["/bin/echo", "ep"]
        """)
    ep_after_cmd = make_context(tmp_path / "b", """
        FROM @BUSYBOX@
        CMD ["default-arg"]
        ENTRYPOINT ["/bin/echo", "ep"]
        """)
    shell_forms = make_context(tmp_path / "c", """
        FROM @BUSYBOX@
        CMD echo shell-form $0
        """)
    _, a = build(store, only_ep)
    _, b = build(store, ep_after_cmd)
    _, c = build(store, shell_forms)
    ca, cb, cc = (inspect(store, x)["Config"] for x in (a, b, c))
    # ENTRYPOINT resets the CMD inherited from busybox (["sh"]), not one set in the same stage
    assert ca["Entrypoint"] == ["/bin/echo", "ep"] and ca.get("Cmd") is None
    assert cb["Entrypoint"] == ["/bin/echo", "ep"] and cb["Cmd"] == ["default-arg"]
    assert cc["Cmd"] == ["/bin/sh", "-c", "echo shell-form $0"]
    assert store("run", "--rm", a).out == "ep\n"
    assert store("run", "--rm", a, "more").out == "ep more\n"
    assert store("run", "--rm", b).out == "ep default-arg\n"
    assert store("run", "--rm", c).out == "shell-form /bin/sh\n"
    assert created_by(store, a) == ['ENTRYPOINT ["/bin/echo" "ep"]']
    assert created_by(store, b) == ['CMD ["default-arg"]', 'ENTRYPOINT ["/bin/echo" "ep"]']
    assert created_by(store, c) == ['CMD ["/bin/sh" "-c" "echo shell-form $0"]']
    assert all(h["empty_layer"] is True and h["comment"] == COMMENT for h in new_history(store, b))


def test_label_maintainer_and_label_flag(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        MAINTAINER Jane Doe <jane@example.com>
        ENV VER=1.2
        LABEL a=1 "b c"="d e" version=$VER
        LABEL io.pinnace.fixture=overridden multi="x\\
        y"
        """)
    _, t = build(store, ctx, "--label", "from.cli=yes", "--label", "a=cli-wins")
    data = inspect(store, t)
    assert data["Author"] == "Jane Doe <jane@example.com>"
    assert data["Config"]["Labels"] == {"a": "cli-wins", "b c": "d e", "version": "1.2", "multi": "xy",
                                        "io.pinnace.fixture": "overridden", "from.cli": "yes",
                                        "io.pinnace.fixture.busybox-static": data["Config"]["Labels"][
                                            "io.pinnace.fixture.busybox-static"]}
    assert data["Labels"] == data["Config"]["Labels"]
    assert created_by(store, t) == ["MAINTAINER Jane Doe <jane@example.com>", "ENV VER=1.2",
                                    "LABEL a=1 b c=d e version=1.2", "LABEL io.pinnace.fixture=overridden multi=xy"]
    assert store("images", "--filter", "label=from.cli=yes", "--format", "{{.ID}}").out.strip() == \
        data["Id"].removeprefix("sha256:")[:12]


def test_expose(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        ENV LOW=8080
        EXPOSE 80 53/udp ${LOW}-8081/tcp
        """)
    _, t = build(store, ctx)
    assert inspect(store, t)["Config"]["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}, "8080/tcp": {}, "8081/tcp": {}}
    # Go's %v of the port set: keys sorted
    assert created_by(store, t)[-1] == "EXPOSE map[53/udp:{} 80/tcp:{} 8080/tcp:{} 8081/tcp:{}]"


def test_env_forms_and_substitution(store, tmp_path):
    ctx = make_context(tmp_path, r"""
        FROM @BUSYBOX@
        ENV A=1 B="two words"
        ENV C three words
        ENV D=${UNSET:-dflt} E=${A:-no} F=${A:+set} G=${UNSET:+set} H=${B}x
        ENV I="$A"'$A' J=\$A
        RUN echo "$B|$C|$D|$F|$H" > /seen
        """)
    _, t = build(store, ctx)
    env = inspect(store, t)["Config"]["Env"]
    assert env[1:] == ["A=1", "B=two words", "C=three words", "D=dflt", "E=1", "F=set", "G=", "H=two wordsx",
                       "I=1$A", "J=$A"]
    assert look(store, t, "cat /seen; echo \"$C\"") == "two words|three words|dflt|set|two wordsx\nthree words\n"
    assert created_by(store, t)[:2] == ["ENV A=1 B=two words", "ENV C=three words"]


def test_env_substitution_uses_values_from_before_the_instruction(store, tmp_path):
    # the example of Docker's reference ("Environment replacement"): def is hello, ghi is bye
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        ENV abc=hello
        ENV abc=bye def=$abc
        ENV ghi=$abc
        """)
    _, t = build(store, ctx)
    assert inspect(store, t)["Config"]["Env"][1:] == ["abc=bye", "def=hello", "ghi=bye"]


def test_add_local_tar_chown_chmod(store, tmp_path):
    archive = tar_bytes([tar_dir("top/", uid=1000, gid=1000), tar_file("top/inner.txt", b"inner\n", 0o600, 1000, 1000),
                         tar_file("top/deeper/x.txt", b"x\n")], "w:gz")
    plain = tar_bytes([tar_file("p.txt", b"plain member\n", 0o644, 7, 7)])
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        ADD archive.tar.gz /ext/
        ADD --chown=4321:4321 plain.tar /ext-chown
        ADD --chmod=0755 script.sh /usr/local/bin/myscript
        ADD --chown=app:app notes.txt /files/
        """, {"archive.tar.gz": archive, "plain.tar": plain, "script.sh": ("#!/bin/sh\necho script ran\n", 0o600),
              "notes.txt": "notes\n"})
    _, t = build(store, ctx)
    out = look(store, t, "cat /ext/top/inner.txt /ext-chown/p.txt /files/notes.txt; myscript; "
                         "stat -c '%n %u:%g %a' /ext/top /ext/top/inner.txt /ext/top/deeper/x.txt /ext-chown/p.txt "
                         "/usr/local/bin/myscript /files/notes.txt; ls /ext")
    assert out.splitlines() == [
        "inner", "plain member", "notes", "script ran",
        "/ext/top 1000:1000 755",            # owners and modes of the archive are kept
        "/ext/top/inner.txt 1000:1000 600",
        "/ext/top/deeper/x.txt 0:0 644",
        "/ext-chown/p.txt 4321:4321 644",    # --chown overrides them
        "/usr/local/bin/myscript 0:0 755",
        "/files/notes.txt 1000:1000 644",
        "top",                               # extracted, the archive itself is not there
    ]
    assert created_by(store, t) == ["ADD archive.tar.gz /ext/ # buildkit",
                                    "ADD --chown=4321:4321 plain.tar /ext-chown # buildkit",
                                    "ADD --chmod=0755 script.sh /usr/local/bin/myscript # buildkit",
                                    "ADD --chown=app:app notes.txt /files/ # buildkit"]


def test_add_url(store, tmp_path, http_root):
    root, port, seen = http_root
    (root / "remote.txt").write_text("served over http\n")
    (root / "remote.tar.gz").write_bytes(tar_bytes([tar_file("member.txt", b"m\n")], "w:gz"))
    base = f"http://127.0.0.1:{port}"
    ctx = make_context(tmp_path, f"""
        FROM @BUSYBOX@
        ADD {base}/remote.txt /dl/
        ADD {base}/remote.tar.gz /dl/
        ADD --chown=app:app --chmod=0644 {base}/remote.txt /dl/owned.txt
        """)
    _, t = build(store, ctx)
    assert "/remote.txt" in seen and "/remote.tar.gz" in seen
    out = look(store, t, "cat /dl/remote.txt; stat -c '%n %F %u:%g %a' /dl/remote.txt /dl/remote.tar.gz /dl/owned.txt")
    assert out.splitlines() == ["served over http",
                                "/dl/remote.txt regular file 0:0 600",       # downloads are 0600
                                "/dl/remote.tar.gz regular file 0:0 600",    # a remote archive is not extracted
                                "/dl/owned.txt regular file 1000:1000 644"]
    assert created_by(store, t)[0] == f"ADD {base}/remote.txt /dl/ # buildkit"


def test_copy_flags_sources_and_heredocs(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@ AS src
        RUN mkdir /out && echo from-stage > /out/s.txt && chown 1000:1000 /out/s.txt
        FROM @BUSYBOX@
        ARG WHO=app
        ENV GREETING=hi
        COPY f.txt /plain/
        COPY --chown=${WHO}:app --chmod=0640 f.txt /owned/named.txt
        COPY --chown=1234:5678 dir /numeric/
        COPY --link f.txt /linked.txt
        COPY --from=src /out/s.txt /from-stage.txt
        COPY --from=@BUSYBOX@ /home/app/hello.txt /from-image.txt
        COPY <<EOF /heredoc.txt
        $GREETING ${WHO}
        EOF
        COPY <<'EOF' /literal.txt
        $GREETING
        EOF
        """, {"f.txt": ("file\n", 0o604), "dir/a.txt": "a\n", "dir/sub/b.txt": "b\n"})
    _, t = build(store, ctx)
    files = ["/plain/f.txt", "/owned/named.txt", "/numeric", "/numeric/a.txt", "/numeric/sub/b.txt", "/linked.txt",
             "/from-stage.txt", "/from-image.txt", "/heredoc.txt", "/literal.txt"]
    out = look(store, t, "stat -c '%n %u:%g %a' " + " ".join(files) +
               "; cat /from-stage.txt /from-image.txt /heredoc.txt /literal.txt /numeric/sub/b.txt")
    assert out.splitlines() == [
        "/plain/f.txt 0:0 604",               # context files: owned by root, mode kept
        "/owned/named.txt 1000:1000 640",
        "/numeric 1234:5678 755",
        "/numeric/a.txt 1234:5678 644",
        "/numeric/sub/b.txt 1234:5678 644",
        "/linked.txt 0:0 604",
        "/from-stage.txt 1000:1000 644",      # --from keeps owners
        "/from-image.txt 1000:1000 644",
        "/heredoc.txt 0:0 644",
        "/literal.txt 0:0 644",
        "from-stage", "hello from app", "hi app", "$GREETING", "b",
    ]
    history = [h for h in created_by(store, t) if h.startswith("COPY")]
    assert history == [   # BuildKit leaves --from and --link out
        "COPY f.txt /plain/ # buildkit",
        "COPY --chown=app:app --chmod=0640 f.txt /owned/named.txt # buildkit",
        "COPY --chown=1234:5678 dir /numeric/ # buildkit",
        "COPY f.txt /linked.txt # buildkit",
        "COPY /out/s.txt /from-stage.txt # buildkit",
        "COPY /home/app/hello.txt /from-image.txt # buildkit",
        "COPY <<EOF /heredoc.txt # buildkit",
        "COPY <<EOF /literal.txt # buildkit",
    ]
    assert len(inspect(store, t)["RootFS"]["Layers"]) == 1 + 8


def test_volume_user_workdir(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        WORKDIR /srv
        WORKDIR app
        RUN pwd > /pwd
        USER app
        WORKDIR /home/app/work/deep
        RUN id -u > /home/app/work/uid && touch owned-by-app
        VOLUME ["/data", "/logs"]
        VOLUME /more
        """)
    _, t = build(store, ctx)
    cfg = inspect(store, t)["Config"]
    assert cfg["WorkingDir"] == "/home/app/work/deep" and cfg["User"] == "app"
    assert cfg["Volumes"] == {"/data": {}, "/logs": {}, "/more": {}}
    out = look(store, t, "id -u; pwd; cat /pwd /home/app/work/uid; "
                         "stat -c '%n %u:%g %a' /srv/app /home/app/work /home/app/work/deep owned-by-app")
    assert out.splitlines() == ["1000", "/home/app/work/deep", "/srv/app", "1000",
                                "/srv/app 0:0 755",
                                "/home/app/work 1000:1000 755",     # created by WORKDIR as the USER
                                "/home/app/work/deep 1000:1000 755",
                                "owned-by-app 1000:1000 644"]
    history = created_by(store, t)
    assert history[:2] == ["WORKDIR /srv", "WORKDIR /srv/app"]
    assert "USER app" in history and "WORKDIR /home/app/work/deep" in history
    assert history[-2:] == ["VOLUME [/data /logs]", "VOLUME [/more]"]


def test_arg_scoping_build_args_and_unused_warning(store, tmp_path):
    ctx = make_context(tmp_path, """
        ARG G=global
        FROM @BUSYBOX@
        RUN echo "G=[$G]" > /g1
        ARG G
        RUN echo "G=[$G]" > /g2
        ARG V=default-${G}
        RUN echo "V=[$V]" > /v
        ARG X=from-arg
        ENV X=from-env
        RUN echo "X=[$X]" > /x
        """)
    _, plain = build(store, ctx)
    assert look(store, plain, "cat /g1 /g2 /v /x") == "G=[]\nG=[global]\nV=[default-global]\nX=[from-env]\n"
    res, over = build(store, ctx, "--build-arg", "G=cli", "--build-arg", "V=over", "--build-arg", "UNUSED_ARG=1")
    assert look(store, over, "cat /g1 /g2 /v /x") == "G=[]\nG=[cli]\nV=[over]\nX=[from-env]\n"
    env = inspect(store, over)["Config"]["Env"]
    assert not any(e.startswith(("G=", "V=")) for e in env) and "X=from-env" in env
    warnings = [l for l in (res.out + res.err).splitlines() if "not consumed" in l.lower()]
    assert len(warnings) == 1, res.out + res.err
    words = set(re.findall(r"\w+", warnings[0]))
    assert "UNUSED_ARG" in words and not words & {"G", "V"}


def test_arg_steps_are_in_history(store, tmp_path):
    ctx = make_context(tmp_path, """
        ARG G=global
        FROM @BUSYBOX@
        ARG G
        ARG V=default-${G} W
        RUN true
        """)
    _, t = build(store, ctx, "--build-arg", "W=given")
    history = new_history(store, t)
    assert [h["created_by"] for h in history] == ["ARG G=global", "ARG V=default-global W=given",
                                                  "RUN |3 G=global V=default-global W=given /bin/sh -c true # buildkit"]
    assert [h.get("empty_layer", False) for h in history] == [True, True, False]


def test_onbuild_triggers_run_in_the_child(store, tmp_path):
    parent_ctx = make_context(tmp_path / "parent", """
        FROM @BUSYBOX@
        ONBUILD RUN echo triggered > /trig
        ONBUILD ENV FROM_TRIGGER=yes
        RUN echo parent > /parent
        """)
    _, parent = build(store, parent_ctx)
    pcfg = inspect(store, parent)
    assert pcfg["Config"]["OnBuild"] == ["RUN echo triggered > /trig", "ENV FROM_TRIGGER=yes"]
    assert look(store, parent, "ls /trig 2>/dev/null; cat /parent") == "parent\n"   # not run in the parent
    child_ctx = make_context(tmp_path / "child", f"""
        FROM {parent}
        RUN echo child > /child
        """)
    res, child = build(store, child_ctx)
    ccfg = inspect(store, child)
    assert look(store, child, "cat /parent /trig /child; echo $FROM_TRIGGER") == "parent\ntriggered\nchild\nyes\n"
    assert not ccfg["Config"].get("OnBuild")   # triggers fire once: the child does not pass them on
    assert "FROM_TRIGGER=yes" in ccfg["Config"]["Env"]
    grandchild_ctx = make_context(tmp_path / "grandchild", f"FROM {child}\nRUN true\n")
    _, grandchild = build(store, grandchild_ctx)
    assert len(inspect(store, grandchild)["History"]) == len(ccfg["History"]) + 1   # no trigger ran again
    # BuildKit records no history entry for ONBUILD
    assert [h["created_by"] for h in pcfg["History"][2:]] == ["RUN /bin/sh -c echo parent > /parent # buildkit"]


def test_stopsignal_and_healthcheck(store, tmp_path):
    full = make_context(tmp_path / "a", """
        FROM @BUSYBOX@
        STOPSIGNAL SIGUSR1
        HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 CMD wget -q -O- localhost || exit 1
        """)
    none = make_context(tmp_path / "b", """
        FROM @BUSYBOX@
        HEALTHCHECK CMD ["/bin/true"]
        HEALTHCHECK NONE
        """)
    exec_form = make_context(tmp_path / "c", """
        FROM @BUSYBOX@
        HEALTHCHECK --interval=1m30s CMD ["/bin/true", "arg"]
        """)
    _, a = build(store, full)
    _, b = build(store, none)
    _, c = build(store, exec_form)
    ca, cb, cc = (inspect(store, x)["Config"] for x in (a, b, c))
    assert ca["StopSignal"] == "SIGUSR1"
    # durations in nanoseconds, zero values left out
    assert ca["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"], "Interval": 30_000_000_000,
                                 "Timeout": 3_000_000_000, "StartPeriod": 5_000_000_000, "Retries": 3}
    assert cb["Healthcheck"] == {"Test": ["NONE"]}
    assert cc["Healthcheck"] == {"Test": ["CMD", "/bin/true", "arg"], "Interval": 90_000_000_000}
    assert created_by(store, a) == [
        "STOPSIGNAL SIGUSR1",
        """HEALTHCHECK &{["CMD-SHELL" "wget -q -O- localhost || exit 1"] "30s" "3s" "5s" "0s" '\\x03'}"""]


def test_shell_changes_runs_shell(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        RUN echo "$0" > /default-shell
        SHELL ["/bin/ash", "-c"]
        RUN echo "$0" > /new-shell
        CMD echo hi
        """)
    _, t = build(store, ctx)
    cfg = inspect(store, t)["Config"]
    assert cfg["Shell"] == ["/bin/ash", "-c"] and cfg["Cmd"] == ["/bin/ash", "-c", "echo hi"]
    assert look(store, t, "cat /default-shell /new-shell") == "/bin/sh\n/bin/ash\n"
    assert created_by(store, t)[1:3] == ["SHELL [/bin/ash -c]", 'RUN /bin/ash -c echo "$0" > /new-shell # buildkit']


def test_shell_bash_on_debian(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @DEBIAN@
        SHELL ["/bin/bash", "-o", "pipefail", "-c"]
        RUN arr=(a b c); echo "${#arr[@]} ${BASH_VERSION%%.*}" > /bash-out
        RUN false | true || echo pipefail-active > /pipefail
        """)
    _, t = build(store, ctx)
    out = store("run", "--rm", t, "cat", "/bash-out", "/pipefail").out.split()
    assert out[0] == "3" and out[1].isdigit() and int(out[1]) >= 5 and out[2] == "pipefail-active"


# -- history and layers ------------------------------------------------------------------------------------

def test_history_empty_layers_and_one_layer_per_filesystem_step(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        ENV A=1
        RUN echo one > /one
        LABEL l=v
        COPY f.txt /f.txt
        EXPOSE 80
        ADD g.txt /g.txt
        WORKDIR /
        USER root
        CMD ["sh"]
        """, {"f.txt": "f\n", "g.txt": "g\n"})
    _, t = build(store, ctx)
    data = inspect(store, t)
    history = data["History"]
    assert len(history) == 2 + 9
    assert [(h["created_by"], h.get("empty_layer", False)) for h in history[2:]] == [
        ("ENV A=1", True),
        ("RUN /bin/sh -c echo one > /one # buildkit", False),
        ("LABEL l=v", True),
        ("COPY f.txt /f.txt # buildkit", False),
        ("EXPOSE map[80/tcp:{}]", True),
        ("ADD g.txt /g.txt # buildkit", False),
        ("WORKDIR /", True),
        ("USER root", True),
        ('CMD ["sh"]', True),
    ]
    assert all(h["comment"] == COMMENT and h["created"] for h in history[2:])
    layers = data["RootFS"]["Layers"]
    assert len(layers) == 1 + 3 == sum(1 for h in history if not h.get("empty_layer"))
    # `history` shows the same, newest first, with 0 B for the metadata steps
    rows = store("history", "--no-trunc", "--format", "{{.CreatedBy}}|{{.Size}}", t).out.splitlines()
    assert [r.rsplit("|", 1)[0] for r in rows[:9]] == [h["created_by"] for h in reversed(history[2:])]
    sizes = [int(r.rsplit("|", 1)[1]) for r in rows[:9]]
    assert [s > 0 for s in sizes] == [not h.get("empty_layer", False) for h in reversed(history[2:])]


# -- multi-stage -------------------------------------------------------------------------------------------

MULTI = """
    FROM @BUSYBOX@ AS first
    RUN echo zero > /zero
    FROM @BUSYBOX@ AS broken
    RUN echo BROKEN-STAGE-RAN; exit 7
    FROM @BUSYBOX@ AS other
    RUN echo other > /other
    FROM first AS final
    COPY --from=other /other /other
    COPY --from=0 /zero /zero-copy
    RUN cat /zero /other /zero-copy > /all
    """


def test_multistage_builds_only_needed_stages(store, tmp_path):
    ctx = make_context(tmp_path, MULTI)
    res, t = build(store, ctx)
    assert "BROKEN-STAGE-RAN" not in res.out + res.err   # not needed by the target: never run
    assert look(store, t, "cat /all") == "zero\nother\nzero\n"
    data = inspect(store, t)
    assert len(data["RootFS"]["Layers"]) == 1 + 1 + 3   # busybox, first's RUN, the final stage's 3 steps
    assert [h["created_by"] for h in data["History"][2:]] == [
        "RUN /bin/sh -c echo zero > /zero # buildkit", "COPY /other /other # buildkit",
        "COPY /zero /zero-copy # buildkit", "RUN /bin/sh -c cat /zero /other /zero-copy > /all # buildkit"]


def test_multistage_target(store, tmp_path):
    ctx = make_context(tmp_path, MULTI)
    res, t = build(store, ctx, "--target", "other")
    assert "BROKEN-STAGE-RAN" not in res.out and "zero" not in res.out
    assert look(store, t, "cat /other; ls /zero /all 2>/dev/null | wc -l") == "other\n0\n"
    res, _ = build(store, ctx, "--target", "BROKEN", check=False)
    assert res.rc == 1 and "BROKEN-STAGE-RAN" in res.out.splitlines() and "exit code: 7" in res.err


# -- contexts ----------------------------------------------------------------------------------------------

def test_dockerignore_with_exceptions(store, tmp_path):
    ctx = make_context(tmp_path, """
        FROM @BUSYBOX@
        COPY . /ctx/
        """, {
        ".dockerignore": "# a comment\n*.log\n!keep.log\nsecret\n!secret/public.txt\ntmp?ile\n**/*.md\n",
        "keep.log": "k\n", "a.log": "a\n", "sub/b.log": "b\n", "real.txt": "r\n", "secret/key": "k\n",
        "secret/public.txt": "p\n", "tmpfile": "t\n", "docs/readme.md": "m\n", "docs/notes.txt": "n\n",
    })
    _, t = build(store, ctx)
    found = look(store, t, "cd /ctx && find . | sort").split()
    assert found == [".", "./.dockerignore", "./Dockerfile", "./docs", "./docs/notes.txt", "./keep.log",
                     "./real.txt", "./secret", "./secret/public.txt", "./sub", "./sub/b.log"]
    # an ignored file is not in the context at all
    (tmp_path / "Dockerfile").write_text(dockerfile("FROM @BUSYBOX@\nCOPY a.log /\n"))
    res, _ = build(store, ctx, check=False)
    assert res.rc != 0 and "a.log" in res.err and "Dockerfile:2" in res.err


def test_containerfile_fallback_and_dash_f(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", "FROM @BUSYBOX@\nRUN echo containerfile > /which\n", name="Containerfile")
    _, t = build(store, ctx)
    assert look(store, t, "cat /which") == "containerfile\n"
    other = tmp_path / "elsewhere" / "Other.dockerfile"
    other.parent.mkdir()
    other.write_text(dockerfile("FROM @BUSYBOX@\nCOPY Containerfile /copied\nRUN echo other > /which\n"))
    _, t = build(store, ctx, "-f", str(other))
    assert look(store, t, "cat /which; head -1 /copied") == f"other\nFROM {BUSYBOX}\n"
    # -f - : the Dockerfile from stdin, the context from the directory
    res, t = build(store, ctx, "-f", "-", input=dockerfile("FROM @BUSYBOX@\nCOPY Containerfile /c\nRUN echo stdin > /which\n"))
    assert look(store, t, "cat /which; test -f /c && echo has-context") == "stdin\nhas-context\n"


def test_tar_contexts(store, tmp_path):
    files = {"Dockerfile": dockerfile("FROM @BUSYBOX@\nCOPY data.txt /data.txt\n"), "data.txt": "from a tarball\n"}
    archive = tmp_path / "ctx.tar"
    archive.write_bytes(context_tar(files))
    _, t = build(store, archive)
    assert look(store, t, "cat /data.txt") == "from a tarball\n"
    # `-`: a (gzip) tar on stdin
    files["data.txt"] = "from stdin\n"
    res = store("build", "-t", (t2 := tag()), "-", input=context_tar(files, "w:gz"))
    assert look(store, t2, "cat /data.txt") == "from stdin\n" and res.rc == 0
    # `-` with a bare Dockerfile: no context
    store("image", "build", "-t", (t3 := tag()), "-", input=dockerfile("FROM @BUSYBOX@\nRUN echo bare > /b\n"))
    assert look(store, t3, "cat /b") == "bare\n"


# -- flags -------------------------------------------------------------------------------------------------

def test_quiet_iidfile_and_platform(store, tmp_path):
    ctx = make_context(tmp_path / "ctx", "FROM @BUSYBOX@\nRUN echo visible-output\n")
    iidfile = tmp_path / "iid"
    res, t = build(store, ctx, "-q", "--no-cache", "--iidfile", str(iidfile), "--platform", f"linux/{HOST_ARCH}")
    assert re.fullmatch(r"(sha256:)?[0-9a-f]{64}\n", res.out), res.out   # only the ID
    iid = res.out.strip().removeprefix("sha256:")
    assert iidfile.read_text() == "sha256:" + iid
    assert inspect(store, t)["Id"] == "sha256:" + iid
    loud = store("build", "--no-cache", str(ctx)).out
    assert "visible-output" in loud.splitlines() and "STEP 2/2: RUN echo visible-output" in loud


def test_network_default_reaches_host_and_none_does_not(store, tmp_path, http_root):
    root, port, seen = http_root
    name = f"ping-{uuid.uuid4().hex[:8]}.txt"
    (root / name).write_text("pong\n")
    text = f"""
        FROM @BUSYBOX@
        RUN (wget -q -O - http://host.containers.internal:{port}/{name} || echo unreachable) > /got
        """
    _, t = build(store, make_context(tmp_path / "a", text))
    assert look(store, t, "cat /got") == "pong\n" and seen.count("/" + name) == 1
    _, t = build(store, make_context(tmp_path / "b", text), "--network", "none")
    assert look(store, t, "cat /got") == "unreachable\n" and seen.count("/" + name) == 1


# -- bad input ---------------------------------------------------------------------------------------------

OTHER_PLATFORM = "linux/arm64" if HOST_ARCH != "arm64" else "linux/amd64"
BAD = [  # (id, Dockerfile, build flags, what the one error line must say)
    ("unknown-instruction", "FROM @BUSYBOX@\nRUN true\nFOO bar\n", (), ("Dockerfile:3", "unknown instruction", "FOO")),
    ("json-non-string", 'FROM @BUSYBOX@\nCMD ["echo", 1]\n', (), ("Dockerfile:2", "strings")),
    ("copy-from-missing-stage", "FROM @BUSYBOX@\nCOPY --from=7 /x /y\n", (), ("Dockerfile:2", "stage", "7")),
    ("target-missing", "FROM @BUSYBOX@ AS one\nRUN true\n", ("--target", "nosuch"), ("stage", "nosuch")),
    ("copy-outside-context", "FROM @BUSYBOX@\nCOPY ../outside.txt /x\n", (), ("Dockerfile:2", "outside.txt")),
    ("empty-base", "ARG BASE\nFROM ${BASE}\nRUN true\n", (), ("Dockerfile:2", "${BASE}")),
    ("other-platform", "FROM @BUSYBOX@\nRUN true\n", ("--platform", OTHER_PLATFORM), ("platform", OTHER_PLATFORM)),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_one_line_error(store, tmp_path, case):
    _, text, args, expected = case
    (tmp_path / "outside.txt").write_text("must not be copied\n")
    ctx = make_context(tmp_path / "ctx", text)
    res, t = build(store, ctx, *args, check=False)
    assert res.rc != 0
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.err
    assert all(part in lines[0] for part in expected), lines[0]
    assert store("image", "inspect", t, check=False).rc != 0


def test_failing_run_reports_exit_code_and_tags_nothing(store, tmp_path):
    ctx = make_context(tmp_path, "FROM @BUSYBOX@\nRUN echo first-build > /v\n")
    _, t = build(store, ctx)
    old = inspect(store, t)["Id"]
    (tmp_path / "Dockerfile").write_text(dockerfile("""
        FROM @BUSYBOX@
        RUN echo before > /before
        RUN echo about-to-fail; exit 3
        RUN echo NEVER-RUN
        """))
    res, _ = build(store, ctx, check=False, t=t)
    assert res.rc == 1
    assert "about-to-fail" in res.out.splitlines() and "NEVER-RUN" not in res.out
    err = res.err.strip().splitlines()
    assert len(err) == 1 and "Dockerfile:3" in err[0]
    assert 'process "/bin/sh -c echo about-to-fail; exit 3" did not complete successfully: exit code: 3' in err[0]
    assert inspect(store, t)["Id"] == old   # the name still means the last good build
    res, t2 = build(store, ctx, check=False)
    assert res.rc == 1 and store("image", "inspect", t2, check=False).rc != 0
    assert t2 not in store("images", "--format", "{{.Repository}}").out
    assert store("ps", "-a", "-q").out.strip() == ""   # no step container left behind


def test_pull_policies(store, tmp_path):
    layers = f"{REGISTRY}/fixtures/busybox-layers:latest"
    ctx = make_context(tmp_path / "a", f"FROM {layers}\nRUN cat /data/a.txt > /seen\n")
    res, _ = build(store, ctx, "--pull", "never", check=False)
    assert res.rc != 0 and "busybox-layers" in res.err and store("image", "inspect", layers, check=False).rc != 0
    # missing (the default): a base that is not in the store is pulled
    _, t = build(store, ctx)
    assert look(store, t, "cat /seen") == "alpha\n"
    assert store("image", "inspect", layers, check=False).rc == 0
    # always: pulled again even though it is there; same base, same result
    _, t = build(store, make_context(tmp_path / "b", "FROM @BUSYBOX@\nRUN echo pulled > /p\n"), "--pull", "always")
    assert look(store, t, "cat /p") == "pulled\n"


def test_several_tags(store, tmp_path):
    ctx = make_context(tmp_path, "FROM @BUSYBOX@\nLABEL several=tags\n")
    one, two = tag(), tag() + ":v2"
    res, _ = build(store, ctx, "-t", two, t=one)
    iid = image_id(res)
    assert f"Successfully tagged {one}:latest" in res.out and f"Successfully tagged {two}" in res.out
    assert sorted(inspect(store, iid)["RepoTags"]) == sorted([one + ":latest", two])
