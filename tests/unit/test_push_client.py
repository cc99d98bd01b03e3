"""The push side of the distribution client and the engine's push planning.

The client tests talk to the fixture registry (Distribution 2.8 on 127.0.0.1:5000), since what matters
is how a real registry answers: chunk offsets, mounts, digest and manifest checks. The planning tests
(compression choice, manifests, destinations) are pure.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pinnace.engine.contract import ImagePushOptions
from pinnace.engine.push import PreparedLayer, _check_options, build_manifest, destination, target_compression
from pinnace.errors import DigestMismatch, InvalidArgument, RegistryError
from pinnace.registry import push as push_mod
from pinnace.registry.config import RegistriesConfig
from pinnace.registry.push import EXISTS, MOUNTED, UPLOADED, PushClient
from pinnace.storage.images import ImageRecord, LayerRef

REGISTRY = os.environ.get("PINNACE_TEST_REGISTRY", "127.0.0.1:5000")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def client():
    with PushClient(REGISTRY, config=RegistriesConfig(), backoff=0.01) as c:
        yield c


@pytest.fixture
def name() -> str:
    return f"pushtest/client-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------------------ real registry

def test_chunked_upload(client, name, monkeypatch):
    monkeypatch.setattr(push_mod, "MONOLITHIC_MAX", 1000)
    monkeypatch.setattr(push_mod, "CHUNK_SIZE", 4096)
    data = os.urandom(10_000)
    digest = digest_of(data)
    seen = []
    result = client.push_blob(name, digest, len(data), lambda: io.BytesIO(data), progress=seen.append)
    assert result.outcome == UPLOADED and seen == [4096, 8192, 10_000]
    assert client.get_blob(name, digest) == data


class _StrictUploads(BaseHTTPRequestHandler):
    """Blob uploads as the spec describes them, Content-Range checked (Distribution 2.8 ignores it, so
    the resume path needs this stand-in): PATCH at the wrong offset → 416, GET → Range of what is held."""

    uploads: dict[str, bytearray] = {}
    blobs: dict[str, bytes] = {}

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, headers: dict | None = None) -> None:
        self.send_response(status)
        for k, v in {"Content-Length": "0", **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()

    def _upload(self) -> tuple[str, bytearray]:
        uid = self.path.split("?")[0].rsplit("/", 1)[1]
        return uid, self.uploads[uid]

    def do_GET(self) -> None:
        if self.path == "/v2/":
            return self._answer(200)
        uid, held = self._upload()
        self._answer(204, {"Range": f"0-{len(held) - 1}", "Location": f"/v2/r/blobs/uploads/{uid}"})

    def do_POST(self) -> None:
        uid = uuid.uuid4().hex
        self.uploads[uid] = bytearray()
        self._answer(202, {"Location": f"/v2/r/blobs/uploads/{uid}"})

    def do_PATCH(self) -> None:
        uid, held = self._upload()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        start, end = map(int, self.headers["Content-Range"].split("-"))
        if start != len(held) or end - start + 1 != len(body):
            return self._answer(416, {"Range": f"0-{len(held) - 1}"})
        held += body
        self._answer(202, {"Location": f"/v2/r/blobs/uploads/{uid}", "Range": f"0-{len(held) - 1}"})

    def do_PUT(self) -> None:
        uid, held = self._upload()
        held += self.rfile.read(int(self.headers["Content-Length"]))
        digest = self.path.split("digest=")[1]
        if digest_of(bytes(held)) != digest:
            return self._answer(400)
        self.blobs[digest] = bytes(held)
        self._answer(201, {"Docker-Content-Digest": digest})


def test_chunk_resumes_where_the_registry_stands():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StrictUploads)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with PushClient(f"127.0.0.1:{server.server_port}", config=RegistriesConfig(), backoff=0.01) as c:
            data = os.urandom(6000)
            session = c.start_upload("r")
            session.write(data[:3000])
            session.offset = 0     # as if an attempt had got through without us knowing
            session.write(data)    # 416 → ask where the upload stands → send the last 3000 bytes only
            assert session.offset == 6000
            session.finish(digest_of(data))
            assert _StrictUploads.blobs[digest_of(data)] == data
    finally:
        server.shutdown()
        server.server_close()


def test_exists_mount_and_mount_fallback(client, name):
    data = os.urandom(2000)
    digest = digest_of(data)
    assert client.push_blob(name, digest, len(data), lambda: io.BytesIO(data)).outcome == UPLOADED
    assert client.push_blob(name, digest, len(data), lambda: io.BytesIO(data)).outcome == EXISTS
    target = name + "-copy"
    result = client.push_blob(target, digest, len(data), lambda: io.BytesIO(b""), mount_from=["pushtest/none", name])
    assert (result.outcome, result.source) == (MOUNTED, name)   # the first candidate's 202 was given up
    assert client.blob_exists(target, digest)
    # a source that does not have the blob: the 202 session is used for an ordinary upload
    fresh = os.urandom(100)
    result = client.push_blob(target, digest_of(fresh), 100, lambda: io.BytesIO(fresh), mount_from=["pushtest/none"])
    assert result.outcome == UPLOADED and client.get_blob(target, digest_of(fresh)) == fresh


def test_registry_rejections(client, name):
    data = os.urandom(500)
    with pytest.raises(DigestMismatch, match="does not match"):
        client.push_blob(name, digest_of(b"something else"), len(data), lambda: io.BytesIO(data))
    with pytest.raises(RegistryError, match="500 bytes expected, the local copy has 499"):
        client.push_blob(name, digest_of(data), 500, lambda: io.BytesIO(data[:499]))
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    client.push_blob(name, digest_of(config), len(config), lambda: io.BytesIO(config))
    missing = {"mediaType": GZ, "digest": digest_of(b"never pushed"), "size": 12}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                      "size": len(config)}, "layers": [missing]}
    with pytest.raises(RegistryError, match="rejected by the registry: manifest_blob_unknown"):
        client.put_manifest(name, "v1", json.dumps(doc).encode(), OCI_MANIFEST)
    with pytest.raises(RegistryError, match="rejected by the registry: manifest_invalid"):
        client.put_manifest(name, "v1", b"{not json", OCI_MANIFEST)
    doc["layers"] = []
    raw = json.dumps(doc).encode()
    assert client.put_manifest(name, "v1", raw, OCI_MANIFEST) == digest_of(raw)
    assert client.get_manifest(name, "v1").data == raw
    with pytest.raises(InvalidArgument):
        client.put_manifest(name, "bad tag", raw, OCI_MANIFEST)


# ------------------------------------------------------------------------------------------ planning

def _record(media_type: str = OCI_MANIFEST, layer_type: str = GZ) -> ImageRecord:
    layers = (LayerRef("sha256:" + "1" * 64, "sha256:" + "a" * 64, layer_type),)
    return ImageRecord("sha256:" + "c" * 64, "sha256:" + "d" * 64, media_type, None, "amd64", "linux", None, 0, layers)


def test_compression_choice():
    gz, plain, zst = (LayerRef("x", "y", t) for t in (GZ, "application/vnd.oci.image.layer.v1.tar",
                                                     "application/vnd.oci.image.layer.v1.tar+zstd"))
    assert target_compression(gz, OCI_MANIFEST, None) == "gzip"
    assert target_compression(plain, OCI_MANIFEST, None) == "gzip"      # commit's uncompressed layers
    assert target_compression(zst, OCI_MANIFEST, None) == "zstd"
    assert target_compression(zst, DOCKER_MANIFEST, None) == "gzip"     # schema 2 has no zstd
    assert target_compression(gz, OCI_MANIFEST, "zstd") == "zstd"
    with pytest.raises(InvalidArgument, match="zstd compression needs --format oci"):
        _check_options(ImagePushOptions("x", format="v2s2", compression="zstd"))
    with pytest.raises(InvalidArgument, match="unsupported compression"):
        _check_options(ImagePushOptions("x", compression="bzip2"))


def test_manifest_kept_or_rebuilt():
    config = b'{"architecture":"amd64"}'
    rec = _record()
    rec = ImageRecord(digest_of(config), rec.manifest_digest, OCI_MANIFEST, None, "amd64", "linux", None, 0, rec.layers)
    stored = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "annotations": {"a": "b"},
                         "config": {}, "layers": [{"mediaType": GZ, "digest": "sha256:" + "a" * 64, "size": 5,
                                                   "annotations": {"k": "v"}}]}).encode()
    same = [PreparedLayer("sha256:" + "a" * 64, 5, "gzip", rec.layers[0].diff_id, False)]
    assert build_manifest(rec, stored, OCI_MANIFEST, config, same) is stored
    v2 = json.loads(build_manifest(rec, stored, DOCKER_MANIFEST, config, same))
    assert v2["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert v2["layers"] == [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                             "digest": "sha256:" + "a" * 64, "size": 5}] and "annotations" not in v2
    zst = [PreparedLayer("sha256:" + "b" * 64, 4, "zstd", rec.layers[0].diff_id, True)]
    oci = json.loads(build_manifest(rec, stored, OCI_MANIFEST, config, zst))
    assert oci["annotations"] == {"a": "b"} and oci["config"]["digest"] == digest_of(config)
    assert oci["layers"] == [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                              "digest": "sha256:" + "b" * 64, "size": 4}]


def test_destinations():
    assert str(destination("busybox", None, "docker.io/library/busybox:latest")) == "docker.io/library/busybox:latest"
    assert str(destination("x", "docker://127.0.0.1:5000/a/b", None)) == "127.0.0.1:5000/a/b:latest"
    assert str(destination("x", "quay.io/a/b:v2", None)) == "quay.io/a/b:v2"
    with pytest.raises(InvalidArgument, match="DESTINATION"):
        destination("abc123", None, None)
    with pytest.raises(InvalidArgument, match="only registries"):
        destination("x", "oci-archive:/tmp/x.tar", None)


def test_parallel_gzip_is_one_deterministic_member():
    import gzip
    import zlib

    from pinnace.engine.push_layers import ParallelGzip
    data = os.urandom(1 << 20) + b"layer " * 400_000 + os.urandom(1000)   # several blocks, some compressible
    outputs = []
    for workers in (1, 3):
        out = io.BytesIO()
        g = ParallelGzip(out, workers=workers)
        for i in range(0, len(data), 300_000):
            g.write(data[i:i + 300_000])
        g.close()
        outputs.append(out.getvalue())
    assert outputs[0] == outputs[1]                   # the thread count does not change the blob
    blob = outputs[0]
    assert gzip.decompress(blob) == data
    d = zlib.decompressobj(31)                        # a single member: nothing after its trailer
    assert d.decompress(blob) == data and d.eof and d.unused_data == b""
    assert len(blob) < len(data) // 2
