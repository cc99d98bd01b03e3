"""save / load / import: archive round trips keep digests; the fixture archives load."""
from __future__ import annotations

import io
import os
import json
import tarfile

import pytest
from testenv import FIXTURES_DIR, REGISTRY

pytestmark = pytest.mark.anyuser  # rootless as the test user, and again as root

LAYERS = f"{REGISTRY}/fixtures/busybox-layers:latest"


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_save_rmi_load_round_trip(pinnace, fixtures_info, tmp_path, fmt):
    pinnace("pull", "-q", LAYERS)
    before = pinnace("image", "inspect", LAYERS).json()[0]
    archive = tmp_path / "img.tar"
    pinnace("save", "--format", fmt, "-o", str(archive), LAYERS)
    pinnace("rmi", LAYERS)
    res = pinnace("load", "-i", str(archive))
    assert f"Loaded image: {LAYERS}" in res.out
    after = pinnace("image", "inspect", LAYERS).json()[0]
    assert after["Id"] == before["Id"] == fixtures_info["busybox-layers"]["config"]
    assert after["RootFS"] == before["RootFS"]
    if fmt == "oci-archive":
        assert after["Digest"] == before["Digest"] == fixtures_info["busybox-layers"]["digest"]
    # the loaded image is whole: its merged filesystem has the fixture content
    mnt = pinnace("image", "mount", LAYERS).out.strip()
    assert pinnace("unshare", "cat", f"{mnt}/data/sub/new.txt").out == "new\n"


def test_save_to_stdout_and_load_from_stdin(pinnace, fixtures_info):
    pinnace("pull", "-q", LAYERS)
    data = pinnace.popen("save", LAYERS, stdout=-1).communicate()[0]
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert "manifest.json" in names
    pinnace("rmi", LAYERS)
    out = pinnace("load", input=data).out
    assert LAYERS in out


@pytest.mark.parametrize("name", ["busybox", "busybox-layers", "busybox-multi", "debian"])
@pytest.mark.parametrize("kind", ["oci", "docker"])
def test_load_fixture_archives(module_pinnace, fixtures_info, name, kind):
    path = FIXTURES_DIR / f"{name}.{kind}.tar"
    module_pinnace("load", "-i", str(path))
    expected = fixtures_info["busybox" if name == "busybox-multi" else name]["config"]
    got = module_pinnace("image", "inspect", f"{name}:latest").json()[0]["Id"]
    assert got == expected


def test_import_tarball_with_changes(pinnace, tmp_path):
    src = tmp_path / "rootfs.tar"
    with tarfile.open(src, "w:gz") as t:
        for name, body in (("etc/motd", b"hello\n"), ("bin/tool", b"#!/bin/sh\necho hi\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o755
            t.addfile(info, io.BytesIO(body))
    iid = pinnace("import", "-c", 'CMD ["/bin/tool"]', "-c", "ENV A=b", "-m", "from test",
                  str(src), "imported:v1").out.strip()
    data = pinnace("image", "inspect", "imported:v1").json()[0]
    assert data["Id"] == "sha256:" + iid
    assert data["Config"]["Cmd"] == ["/bin/tool"] and "A=b" in data["Config"]["Env"]
    assert data["History"][0]["comment"] == "from test"
    mnt = pinnace("image", "mount", "imported:v1").out.strip()
    assert pinnace("unshare", "cat", f"{mnt}/etc/motd").out == "hello\n"
    # import from stdin
    iid2 = pinnace("import", "-", input=src.read_bytes()).out.strip()
    assert iid2  # dangling image
    res = pinnace("import", "-c", "FROB x", str(src), check=False)
    assert res.rc == 125 and "FROB" in res.err


def test_load_rejects_garbage(pinnace, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    res = pinnace("load", "-i", str(junk), check=False)
    assert res.rc == 125 and "archive" in res.err and "Traceback" not in res.err
    t = tmp_path / "empty.tar"
    with tarfile.open(t, "w") as tf:
        info = tarfile.TarInfo("manifest.json")
        body = json.dumps([{"Config": "missing.json", "Layers": []}]).encode()
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
    res = pinnace("load", "-i", str(t), check=False)
    assert res.rc == 125 and "missing.json" in res.err
    assert pinnace("images", "-q").out == ""


def _docker_archive(path, manifest_json: bytes, extra: dict | None = None) -> None:
    with tarfile.open(path, "w") as t:
        for name, body in {"manifest.json": manifest_json, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))


def test_load_rejects_malformed_manifests_in_one_line(pinnace, tmp_path):
    for body in (b"[1]", b'[{"Config": 5}]', b"{}"):
        _docker_archive(tmp_path / "m.tar", body)
        res = pinnace("load", "-i", str(tmp_path / "m.tar"), check=False)
        assert res.rc == 125 and len(res.err.splitlines()) == 1 and "Traceback" not in res.err, res.err
    res = pinnace("load", "-i", "/etc/passwd", check=False)
    assert res.rc == 125 and len(res.err.splitlines()) == 1, res.err


def test_zero_layer_image(pinnace, tmp_path):
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    _docker_archive(tmp_path / "z.tar", json.dumps([{"Config": "c.json", "RepoTags": ["empty:1"], "Layers": []}]).encode(),
                    {"c.json": config})
    pinnace("load", "-i", str(tmp_path / "z.tar"))
    mnt = pinnace("image", "mount", "empty:1").out.strip()
    assert pinnace("unshare", "ls", "-A", mnt).out == ""


def test_failed_import_keeps_nothing(pinnace, tmp_path):
    res = pinnace("import", "/etc/passwd", "x:1", check=False)
    assert res.rc == 125 and len(res.err.splitlines()) == 1
    res = pinnace("import", "-", "Bad/Name", input=b"whatever", check=False)
    assert res.rc == 125
    blobs = pinnace.root / "blobs" / "sha256"
    assert not blobs.exists() or os.listdir(blobs) == []


def test_image_with_many_layers_mounts(pinnace, tmp_path):
    # 100 layers: beyond what one page of mount(2) options can name; the new mount API takes them one by one
    import hashlib
    layers, diff_ids = {}, []
    for i in range(100):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            body = f"layer {i}\n".encode()
            info = tarfile.TarInfo(f"layers/l{i:03d}.txt")
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
            if i == 99:
                over = tarfile.TarInfo("layers/l000.txt")  # the top layer overrides the bottom one
                over.size = 4
                t.addfile(over, io.BytesIO(b"top\n"))
        data = buf.getvalue()
        layers[f"{i:03d}/layer.tar"] = data
        diff_ids.append("sha256:" + hashlib.sha256(data).hexdigest())
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps([{"Config": "c.json", "RepoTags": ["many:1"], "Layers": sorted(layers)}]).encode()
    _docker_archive(tmp_path / "many.tar", manifest, {"c.json": config, **layers})
    pinnace("load", "-i", str(tmp_path / "many.tar"))
    mnt = pinnace("image", "mount", "many:1").out.strip()
    listing = pinnace("unshare", "ls", f"{mnt}/layers").out.split()
    assert len(listing) == 100
    assert pinnace("unshare", "cat", f"{mnt}/layers/l000.txt", f"{mnt}/layers/l099.txt").out == "top\nlayer 99\n"
