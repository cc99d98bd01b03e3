"""The distribution client against the fixture registries (Distribution 2.8 on 127.0.0.1:5000/5001)
and against FakeRegistry, which lies on request: every lie must surface as the right error."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import tarfile
import threading
import time

import pytest

from fakeregistry import FakeRegistry
from pinnace.errors import (AuthenticationError, DigestMismatch, InvalidArgument, ManifestUnknown, NotFound,
                            RegistryError, UnsupportedMediaType)
from pinnace.registry.client import BlobReader, RegistryClient
from pinnace.registry.config import RegistriesConfig, RegistryEntry
from pinnace.registry.manifest import (DOCKER_SCHEMA1_SIGNED, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST, ImageIndex,
                                       ImageManifest, parse_config, parse_manifest, select_platform)
from pinnace.registry.platform import Platform

REGISTRY = os.environ.get("PINNACE_TEST_REGISTRY", "127.0.0.1:5000")
AUTH_REGISTRY = os.environ.get("PINNACE_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
CREDS = ("tester", "secret")
IMAGES = ["busybox", "busybox-layers", "busybox-multi", "debian"]


def fast_client(host: str, **kw) -> RegistryClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("config", RegistriesConfig())  # the machine's registries.conf plays no part
    return RegistryClient(host, **kw)


@pytest.fixture(scope="module")
def client():
    with fast_client(REGISTRY) as c:
        yield c


@pytest.fixture
def fake():
    with FakeRegistry(images={"test/busybox": "busybox", "test/multi": "busybox-multi"}) as reg:
        yield reg


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ------------------------------------------------------------------------------------------ real registry

@pytest.mark.parametrize("name", IMAGES)
def test_manifest_by_tag_and_digest(client, fixtures_info, name):
    info = fixtures_info[name]
    by_tag = client.get_manifest(f"fixtures/{name}", "latest")
    assert by_tag.digest == info["digest"]
    assert by_tag.media_type == info["mediaType"]
    assert hashlib.sha256(by_tag.data).hexdigest() == info["digest"].split(":")[1]
    by_digest = client.get_manifest(f"fixtures/{name}", info["digest"])
    assert by_digest == by_tag
    parsed = parse_manifest(by_tag.data, by_tag.media_type)
    if name == "busybox-multi":
        assert isinstance(parsed, ImageIndex)
        return
    assert isinstance(parsed, ImageManifest)
    assert parsed.config.digest == info["config"]
    assert [(x.digest, x.size, x.media_type) for x in parsed.layers] == \
        [(x["digest"], x["size"], x["mediaType"]) for x in info["layers"]]
    config = parse_config(client.get_blob(f"fixtures/{name}", info["config"], expected_size=parsed.config.size),
                          expected_layers=len(parsed.layers))
    assert config["rootfs"]["diff_ids"] == info["diff_ids"]


@pytest.mark.parametrize("platform,arch", [("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64"),
                                           ("linux/arm64", "arm64")])
def test_index_platform_selection(client, fixtures_info, platform, arch):
    info = fixtures_info["busybox-multi"]
    fetched = client.get_manifest("fixtures/busybox-multi", "latest")
    index = parse_manifest(fetched.data, fetched.media_type)
    desc = select_platform(index, Platform.parse(platform))
    assert desc.digest == info["manifests"][platform if platform != "linux/arm64" else "linux/arm64/v8"]
    child = client.get_manifest("fixtures/busybox-multi", desc.digest)
    assert child.digest == desc.digest and len(child.data) == desc.size
    image = parse_manifest(child.data, child.media_type)
    config = parse_config(client.get_blob("fixtures/busybox-multi", image.config.digest))
    assert config["architecture"] == arch
    with pytest.raises(NotFound, match="available: linux/amd64, linux/arm64/v8"):
        select_platform(index, Platform.parse("linux/ppc64le"))


def test_blob_fetch_verified(client, fixtures_info, tmp_path):
    layer = fixtures_info["busybox"]["layers"][0]
    seen = []
    with open(tmp_path / "layer", "wb") as f:
        n = client.fetch_blob("fixtures/busybox", layer["digest"], f, expected_size=layer["size"], progress=seen.append)
    assert n == layer["size"] == (tmp_path / "layer").stat().st_size
    assert sha256_file(tmp_path / "layer") == layer["digest"]
    assert seen and seen[-1] == n and seen == sorted(seen)


def test_debian_layer_fetch(client, fixtures_info, tmp_path):
    layer = fixtures_info["debian"]["layers"][0]
    with open(tmp_path / "layer", "wb") as f:
        n = client.fetch_blob("fixtures/debian", layer["digest"], f, expected_size=layer["size"])
    assert n == layer["size"] > 40_000_000
    assert sha256_file(tmp_path / "layer") == layer["digest"]


def test_open_blob_streams_into_gzip_and_tar(client, fixtures_info):
    info = fixtures_info["busybox"]
    layer = info["layers"][0]
    with client.open_blob("fixtures/busybox", layer["digest"], expected_size=layer["size"]) as blob:
        assert isinstance(blob, BlobReader) and blob.size == layer["size"]
        diff = hashlib.sha256()
        with gzip.GzipFile(fileobj=blob) as gz:
            tar_bytes = gz.read()
        diff.update(tar_bytes)
        blob.verify()
        assert blob.bytes_read == layer["size"]
    assert "sha256:" + diff.hexdigest() == info["diff_ids"][0]
    names = tarfile.open(fileobj=io.BytesIO(tar_bytes)).getnames()
    assert "bin/busybox" in names and "home/app/hello.txt" in names


def test_unknown_repository_tag_and_blob(client):
    with pytest.raises(ManifestUnknown, match=f"manifest unknown: {REGISTRY}/fixtures/nope:latest"):
        client.get_manifest("fixtures/nope", "latest")
    with pytest.raises(ManifestUnknown, match=f"manifest unknown: {REGISTRY}/fixtures/busybox:no-such-tag"):
        client.get_manifest("fixtures/busybox", "no-such-tag")
    missing = "sha256:" + "0" * 64
    with pytest.raises(ManifestUnknown, match=f"{REGISTRY}/fixtures/busybox@{missing}"):
        client.get_manifest("fixtures/busybox", missing)
    with pytest.raises(RegistryError, match=f"blob unknown: {REGISTRY}/fixtures/busybox@{missing}"):
        client.open_blob("fixtures/busybox", missing)


def test_blob_exists(client, fixtures_info):
    assert client.blob_exists("fixtures/busybox", fixtures_info["busybox"]["layers"][0]["digest"])
    assert not client.blob_exists("fixtures/busybox", "sha256:" + "0" * 64)


def test_invalid_arguments_never_reach_the_network(client):
    with pytest.raises(InvalidArgument):
        client.get_manifest("../etc", "latest")
    with pytest.raises(InvalidArgument):
        client.get_manifest("fixtures/busybox", "bad/tag")
    with pytest.raises(InvalidArgument):
        client.open_blob("fixtures/busybox", "sha256:1234")


def test_basic_auth_registry():
    with fast_client(AUTH_REGISTRY, credentials=CREDS) as c:
        c.ping()
        assert c.get_manifest("fixtures/busybox", "latest").media_type == OCI_MANIFEST
    with fast_client(AUTH_REGISTRY, credentials=("tester", "wrong")) as c:
        with pytest.raises(AuthenticationError, match=f"^{AUTH_REGISTRY}: unauthorized: authentication required "
                                                       r"\(credentials for tester rejected\)$"):
            c.ping()
        with pytest.raises(AuthenticationError, match=f"^{AUTH_REGISTRY}/fixtures/busybox:latest: unauthorized: .*rejected"):
            c.get_manifest("fixtures/busybox", "latest")
    with fast_client(AUTH_REGISTRY) as c:
        with pytest.raises(AuthenticationError, match=f"{AUTH_REGISTRY}/fixtures/busybox:latest: unauthorized: authentication required \\(no credentials given\\)"):
            c.get_manifest("fixtures/busybox", "latest")


def test_ping_open_registry(client):
    client.ping()


def test_tls_verify_true_refuses_plain_http():
    with fast_client(REGISTRY, tls_verify=True, retries=0) as c:
        with pytest.raises(RegistryError, match=f"cannot reach {REGISTRY}: .*SSL.*TLS verification must be turned off"):
            c.ping()


def test_config_can_turn_off_loopback_default():
    config = RegistriesConfig(registries=(RegistryEntry(REGISTRY, REGISTRY, insecure=False),))
    with fast_client(REGISTRY, config=config, retries=0) as c:
        with pytest.raises(RegistryError, match="cannot reach"):
            c.ping()


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with fast_client(f"127.0.0.1:{port}", retries=2, backoff=0.05) as c:
        with pytest.raises(RegistryError, match=f"cannot reach 127.0.0.1:{port}: .*[Cc]onnection refused"):
            c.ping()
    assert time.monotonic() - started >= 0.05 + 0.1  # it waited between attempts


# ------------------------------------------------------------------------------------------ fake registry

def test_fake_serves_the_fixture_images(fake, fixtures_info):
    c = fast_client(fake.host)
    assert c.get_manifest("test/busybox", "latest").digest == fixtures_info["busybox"]["digest"]
    assert c.get_manifest("test/multi", "latest").media_type == OCI_INDEX
    accept = fake.requests_to("/manifests/")[0].headers["Accept"]
    assert accept == ", ".join(MANIFEST_ACCEPT)


def test_corrupt_manifest_by_digest(fake, fixtures_info):
    digest = fixtures_info["busybox"]["digest"]
    fake.add_fault("corrupt", path="/manifests/")
    with pytest.raises(DigestMismatch, match=f"manifest {fake.host}/test/busybox@{digest}: content hashes to sha256:"):
        fast_client(fake.host).get_manifest("test/busybox", digest)


def test_corrupt_manifest_by_tag_disagrees_with_header(fake, fixtures_info):
    fake.add_fault("corrupt", path="/manifests/")
    with pytest.raises(DigestMismatch, match=f"registry says {fixtures_info['busybox']['digest']} but content hashes to"):
        fast_client(fake.host).get_manifest("test/busybox", "latest")


def test_manifest_without_digest_header_by_tag(fake, fixtures_info):
    fake.add_fault("no-digest", path="/manifests/")
    assert fast_client(fake.host).get_manifest("test/busybox", "latest").digest == fixtures_info["busybox"]["digest"]


def test_unknown_and_malformed_manifests(fake):
    c = fast_client(fake.host)
    fake.add_fault("media-type", path="/manifests/", media_type="application/vnd.example.unknown+json", times=1)
    fetched = c.get_manifest("test/busybox", "latest")
    assert fetched.media_type == "application/vnd.example.unknown+json"
    with pytest.raises(UnsupportedMediaType, match="unsupported manifest media type 'application/vnd.example.unknown"):
        parse_manifest(fetched.data, fetched.media_type)
    fake.add_fault("body", path="/manifests/", body=b'{"schemaVersion": 2, "layers": [', times=1)
    fetched = c.get_manifest("test/busybox", "latest")
    with pytest.raises(RegistryError, match="malformed manifest .*invalid JSON"):
        parse_manifest(fetched.data, fetched.media_type)
    fake.add_fault("body", path="/manifests/", body=b'{"schemaVersion": 1, "signatures": []}',
                   media_type=DOCKER_SCHEMA1_SIGNED, times=1)
    with pytest.raises(UnsupportedMediaType, match="schema 1 manifests are not supported"):
        c.get_manifest("test/busybox", "latest")
    fake.add_fault("body", path="/manifests/", body=b" " * (5 << 20), times=1)
    with pytest.raises(RegistryError, match="exceeds the 4194304-byte limit"):
        c.get_manifest("test/busybox", "latest")


def test_generic_content_type_uses_the_body(fake):
    fake.add_fault("media-type", path="/manifests/", media_type="application/octet-stream")
    assert fast_client(fake.host).get_manifest("test/multi", "latest").media_type == OCI_INDEX


def test_corrupt_blob(fake, fixtures_info, tmp_path):
    layer = fixtures_info["busybox"]["layers"][0]
    fault = fake.add_fault("corrupt", path="/blobs/")
    c = fast_client(fake.host)
    with c.open_blob("test/busybox", layer["digest"]) as blob:
        got = 0
        with pytest.raises(DigestMismatch, match=f"blob {layer['digest']}: content hashes to sha256:[0-9a-f]{{64}}"):
            while chunk := blob.read(65536):
                got += len(chunk)
        assert got < layer["size"]  # the last chunk was withheld: nobody saw the whole bad blob
        with pytest.raises(DigestMismatch):
            blob.read(1)  # and it stays failed
    with open(tmp_path / "x", "wb") as f, pytest.raises(DigestMismatch):
        c.fetch_blob("test/busybox", layer["digest"], f)
    assert fault.hits == 2  # a mismatch is not retried: the registry's content is wrong


def test_verify_catches_what_a_partial_reader_left(fake, fixtures_info):
    layer = fixtures_info["busybox"]["layers"][0]
    fake.add_fault("corrupt", path="/blobs/")
    with fast_client(fake.host).open_blob("test/busybox", layer["digest"]) as blob:
        assert len(blob.read(1000)) == 1000
        with pytest.raises(DigestMismatch):
            blob.verify()


def test_truncated_blob(fake, fixtures_info, tmp_path):
    layer = fixtures_info["busybox"]["layers"][0]
    fake.add_fault("truncate", path="/blobs/")
    c = fast_client(fake.host, retries=2)
    with c.open_blob("test/busybox", layer["digest"]) as blob:
        with pytest.raises(RegistryError, match=rf"blob {layer['digest']} .* truncated: got {layer['size'] // 2} of {layer['size']} bytes"):
            blob.read()
    with open(tmp_path / "x", "wb") as f, pytest.raises(RegistryError, match="truncated"):
        c.fetch_blob("test/busybox", layer["digest"], f)
    assert len(fake.requests_to("/blobs/")) == 1 + 3  # open_blob once, fetch_blob 1 + 2 retries


def test_truncated_blob_is_fetched_again(fake, fixtures_info, tmp_path):
    layer = fixtures_info["busybox"]["layers"][0]
    fake.add_fault("truncate", path="/blobs/", times=2)
    seen = []
    with open(tmp_path / "x", "wb") as f:
        f.write(b"prefix")  # fetch_blob rewinds to where dest was, not to 0
        n = fast_client(fake.host).fetch_blob("test/busybox", layer["digest"], f, progress=seen.append)
    assert n == layer["size"]
    data = (tmp_path / "x").read_bytes()
    assert data[:6] == b"prefix" and "sha256:" + hashlib.sha256(data[6:]).hexdigest() == layer["digest"]
    assert seen.count(0) == 2 and seen[-1] == n  # progress went back to 0 on each restart


def test_truncated_blob_not_retried_into_unseekable_dest(fake, fixtures_info):
    layer = fixtures_info["busybox"]["layers"][0]
    fake.add_fault("truncate", path="/blobs/", times=1)
    r, w = os.pipe()
    threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(r, 65536), b"")], daemon=True).start()
    with open(w, "wb") as dest, pytest.raises(RegistryError, match="truncated"):
        fast_client(fake.host).fetch_blob("test/busybox", layer["digest"], dest)


def test_size_disagreement(fake, fixtures_info):
    layer = fixtures_info["busybox"]["layers"][0]
    with pytest.raises(RegistryError, match=f"registry announces {layer['size']} bytes, the manifest says 10"):
        fast_client(fake.host).open_blob("test/busybox", layer["digest"], expected_size=10)


def test_chunked_blobs(fake, fixtures_info):
    layer = fixtures_info["busybox"]["layers"][0]
    fake.add_fault("chunked", path="/blobs/")
    c = fast_client(fake.host)
    with c.open_blob("test/busybox", layer["digest"]) as blob:
        assert blob.size is None
        assert len(blob.read()) == layer["size"]
    assert len(c.get_blob("test/busybox", layer["digest"], expected_size=layer["size"])) == layer["size"]
    with c.open_blob("test/busybox", layer["digest"], expected_size=layer["size"] - 10) as blob:
        with pytest.raises(RegistryError, match=f"more than the expected {layer['size'] - 10} bytes"):
            blob.read()
    with c.open_blob("test/busybox", layer["digest"], expected_size=layer["size"] + 10) as blob:
        with pytest.raises(RegistryError, match=f"truncated: got {layer['size']} of {layer['size'] + 10} bytes"):
            blob.read()
    assert c.get_manifest("test/busybox", "latest").digest == fixtures_info["busybox"]["digest"]  # pool still sane
    fake.clear_faults()
    fake.add_fault("chunked", path="/blobs/", body=b"trailing junk")
    with c.open_blob("test/busybox", layer["digest"], expected_size=layer["size"]) as blob:
        with pytest.raises(RegistryError, match=f"more than the expected {layer['size']} bytes"):
            blob.read(layer["size"])  # exactly the right bytes, but the stream does not end there


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_errors_are_retried(fake, fixtures_info, status):
    fault = fake.add_fault("status", path="/manifests/", status=status, times=3)
    assert fast_client(fake.host, retries=3).get_manifest("test/busybox", "latest").digest == fixtures_info["busybox"]["digest"]
    assert fault.hits == 3 and len(fake.requests_to("/manifests/")) == 4


def test_persistent_500_is_reported(fake):
    fake.add_fault("status", path="/manifests/", status=500, message="disk on fire")
    with pytest.raises(RegistryError, match=f"manifest {fake.host}/test/busybox:latest: HTTP 500: unknown: disk on fire"):
        fast_client(fake.host, retries=2).get_manifest("test/busybox", "latest")
    assert len(fake.requests_to("/manifests/")) == 3


def test_retry_after_is_honoured(fake):
    fake.add_fault("status", path="/manifests/", status=429, times=1, headers={"Retry-After": "1"})
    started = time.monotonic()
    fast_client(fake.host).get_manifest("test/busybox", "latest")
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("status,error", [(400, RegistryError), (403, AuthenticationError), (405, RegistryError)])
def test_client_errors_are_not_retried(fake, status, error):
    fake.add_fault("status", path="/manifests/", status=status)
    with pytest.raises(error, match=f"HTTP {status}"):
        fast_client(fake.host).get_manifest("test/busybox", "latest")
    assert len(fake.requests_to("/manifests/")) == 1


def test_status_404_and_401_faults(fake):
    c = fast_client(fake.host)
    fake.add_fault("status", path="/manifests/", status=404, code="MANIFEST_UNKNOWN", times=1)
    with pytest.raises(ManifestUnknown, match=f"manifest unknown: {fake.host}/test/busybox:latest"):
        c.get_manifest("test/busybox", "latest")
    fake.add_fault("status", path="/manifests/", status=401, times=1)  # 401 without a challenge
    with pytest.raises(AuthenticationError, match="unauthorized"):
        c.get_manifest("test/busybox", "latest")


def test_dropped_connections_are_retried(fake, fixtures_info):
    fake.add_fault("disconnect", path="/manifests/", times=2)
    assert fast_client(fake.host).get_manifest("test/busybox", "latest").digest == fixtures_info["busybox"]["digest"]
    assert len(fake.requests_to("/manifests/")) == 3


def test_bearer_token_flow(fixtures_info):
    with FakeRegistry(images={"test/busybox": "busybox", "test/layers": "busybox-layers"}, auth="bearer") as reg:
        c = fast_client(reg.host)  # anonymous pull
        assert c.get_manifest("test/busybox", "latest").digest == fixtures_info["busybox"]["digest"]
        c.get_manifest("test/busybox", "latest")
        layer = fixtures_info["busybox"]["layers"][0]
        assert c.get_blob("test/busybox", layer["digest"], expected_size=layer["size"])[:2] == b"\x1f\x8b"
        tokens = reg.requests_to("^/token")
        assert len(tokens) == 1  # cached for the scope
        assert "scope=repository%3Atest%2Fbusybox%3Apull" in tokens[0].path and "Authorization" not in tokens[0].headers
        c.get_manifest("test/layers", "latest")  # a new scope: a new token, fetched before asking
        assert len(reg.requests_to("^/token")) == 2
        assert len(reg.requests_to("^/v2/test/layers/")) == 1


def test_bearer_scope_built_when_challenge_lacks_it(fixtures_info):
    with FakeRegistry(images={"test/busybox": "busybox"}, auth="bearer", challenge_scope=False,
                      token_field="access_token") as reg:
        assert fast_client(reg.host).get_manifest("test/busybox", "latest").digest == fixtures_info["busybox"]["digest"]
        assert "scope=repository%3Atest%2Fbusybox%3Apull" in reg.requests_to("^/token")[0].path


def test_bearer_with_credentials():
    with FakeRegistry(images={"test/busybox": "busybox"}, auth="bearer", anonymous_pull=False) as reg:
        with pytest.raises(AuthenticationError, match=f"{reg.host}: unauthorized: authentication required"):
            fast_client(reg.host).get_manifest("test/busybox", "latest")
        with pytest.raises(AuthenticationError, match=f"{reg.host}: unauthorized: incorrect username or password"):
            fast_client(reg.host, credentials=("tester", "nope")).ping()
        c = fast_client(reg.host, credentials=CREDS)
        c.ping()
        c.get_manifest("test/busybox", "latest")
        token_request = reg.requests_to("^/token")[-1]
        assert token_request.headers["Authorization"].startswith("Basic ")


def test_basic_auth_on_fake():
    with FakeRegistry(images={"test/busybox": "busybox"}, auth="basic") as reg:
        fast_client(reg.host, credentials=CREDS).get_manifest("test/busybox", "latest")
        with pytest.raises(AuthenticationError, match="unauthorized"):
            fast_client(reg.host, credentials=("tester", "nope")).get_manifest("test/busybox", "latest")


def test_redirect_to_other_host_drops_credentials(fixtures_info, tmp_path):
    layer = fixtures_info["busybox"]["layers"][0]
    with FakeRegistry(images={"test/busybox": "busybox"}, auth="basic") as reg:
        reg.add_fault("redirect", path="/blobs/")
        with open(tmp_path / "x", "wb") as f:
            fast_client(reg.host, credentials=CREDS).fetch_blob("test/busybox", layer["digest"], f)
        assert sha256_file(tmp_path / "x") == layer["digest"]
        (storage,) = reg.requests_to("^/storage/", server="storage")
        assert "Authorization" not in storage.headers
        assert reg.requests_to("/blobs/")[-1].headers["Authorization"].startswith("Basic ")


def test_redirect_on_same_host_keeps_credentials(fixtures_info):
    layer = fixtures_info["busybox"]["layers"][0]
    with FakeRegistry(images={"test/busybox": "busybox"}, auth="basic") as reg:
        reg.add_fault("redirect-same", path="/blobs/")
        data = fast_client(reg.host, credentials=CREDS).get_blob("test/busybox", layer["digest"])
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        (storage,) = reg.requests_to("^/storage/")
        assert storage.server == "registry" and storage.headers["Authorization"].startswith("Basic ")


def test_one_client_many_threads(fixtures_info):
    blobs = [(name, x) for name in ("busybox", "busybox-layers") for x in fixtures_info[name]["layers"]]
    blobs.append(("busybox", {"digest": fixtures_info["busybox"]["config"], "size": None}))
    results, errors = [], []
    with FakeRegistry(images={"test/busybox": "busybox", "test/busybox-layers": "busybox-layers"},
                      auth="bearer") as reg:
        c = fast_client(reg.host)

        def work(repo, layer):
            try:
                for _ in range(3):
                    data = c.get_blob(f"test/{repo}", layer["digest"], expected_size=layer["size"])
                    results.append("sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"])
            except Exception as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=b) for b in blobs * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(results) == len(blobs) * 6 and all(results)


# ------------------------------------------------------------------------------------------ challenges

def test_parse_challenges():
    from pinnace.registry.transport import parse_challenges
    (c,) = parse_challenges(['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                             'scope="repository:library/busybox:pull,push"'])
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                        "scope": "repository:library/busybox:pull,push"}
    basic, bearer = parse_challenges(['Basic realm="Registry Realm", Bearer realm="http://x/t", service=s'])
    assert (basic.scheme, basic.params) == ("basic", {"realm": "Registry Realm"})
    assert (bearer.scheme, bearer.params) == ("bearer", {"realm": "http://x/t", "service": "s"})
    (odd,) = parse_challenges(['BEARER realm="a\\"b"'])
    assert odd.params == {"realm": 'a"b'}
    assert [c.scheme for c in parse_challenges(["Basic", "Negotiate abc=="])] == ["basic", "negotiate"]
    assert parse_challenges([""]) == []
