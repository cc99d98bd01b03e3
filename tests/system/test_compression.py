"""gzip, zstd and uncompressed layers in one image, pulled from a registry and saved back out."""
from __future__ import annotations

import pytest

import gzip
import hashlib
import io
import json
import tarfile

import zstandard
from fakeregistry import FakeRegistry

pytestmark = pytest.mark.anyuser  # rootless as the test user, and again as root


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _mixed_layout(path) -> dict:
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tars = [_layer({"gz.txt": b"gzip\n"}), _layer({"zst.txt": b"zstd\n"}), _layer({"plain.txt": b"plain\n"})]
    packed = [(gzip.compress(tars[0], mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip"),
              (zstandard.ZstdCompressor().compress(tars[1]), "application/vnd.oci.image.layer.v1.tar+zstd"),
              (tars[2], "application/vnd.oci.image.layer.v1.tar")]
    for data, _ in packed:
        (blobs / _digest(data)[7:]).write_bytes(data)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [_digest(t) for t in tars]},
                         "history": [{"created_by": f"layer {i}"} for i in range(3)]}).encode()
    (blobs / _digest(config)[7:]).write_bytes(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _digest(config), "size": len(config)},
                           "layers": [{"mediaType": mt, "digest": _digest(d), "size": len(d)} for d, mt in packed]
                           }).encode()
    (blobs / _digest(manifest)[7:]).write_bytes(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "mixed"}}]}))
    return {"config": _digest(config), "manifest": _digest(manifest)}


def test_pull_gzip_zstd_and_plain_layers(pinnace, tmp_path):
    expected = _mixed_layout(tmp_path / "layout")
    with FakeRegistry(tmp_path / "layout", images={"test/mixed": "mixed"}) as reg:
        ref = f"{reg.host}/test/mixed:latest"
        iid = pinnace("pull", "-q", ref).out.strip()
    assert "sha256:" + iid == expected["config"]
    mnt = pinnace("image", "mount", ref).out.strip()
    out = pinnace("unshare", "cat", f"{mnt}/gz.txt", f"{mnt}/zst.txt", f"{mnt}/plain.txt").out
    assert out == "gzip\nzstd\nplain\n"
    pinnace("image", "unmount", ref)
    # saving to oci-archive keeps every blob as pulled (same manifest digest), and the archive loads back
    archive = tmp_path / "mixed.tar"
    pinnace("save", "--format", "oci-archive", "-o", str(archive), ref)
    pinnace("rmi", ref)
    pinnace("load", "-i", str(archive))
    assert pinnace("image", "inspect", "--format", "{{.Digest}}", ref).out.strip() == expected["manifest"]
    # a docker-archive holds uncompressed layers; it loads to the same image ID
    pinnace("save", "-o", str(tmp_path / "mixed-docker.tar"), ref)
    pinnace("rmi", ref)
    pinnace("load", "-i", str(tmp_path / "mixed-docker.tar"))
    assert pinnace("image", "inspect", "--format", "{{.Id}}", ref).out.strip() == expected["config"]


def test_import_zstd_tarball(pinnace, tmp_path):
    data = zstandard.ZstdCompressor().compress(_layer({"etc/hello": b"zstd import\n"}))
    iid = pinnace("import", "-", "zimport:1", input=data).out.strip()
    assert iid
    mnt = pinnace("image", "mount", "zimport:1").out.strip()
    assert pinnace("unshare", "cat", f"{mnt}/etc/hello").out == "zstd import\n"
