"""`push` to the fixture registries, checked from the outside: raw registry GETs (urllib), pulls into
another store, and skopeo (a second, independent client)."""
from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
import uuid

from testenv import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, REGISTRY

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
BUSYBOX = f"{REGISTRY}/fixtures/busybox:latest"
DEBIAN = f"{REGISTRY}/fixtures/debian:latest"
CREDS = f"{AUTH_USER}:{AUTH_PASSWORD}"


def repo(name: str) -> str:
    """A repository no other test (or earlier run) has pushed to."""
    return f"pushtest/{name}-{uuid.uuid4().hex[:10]}"


def _request(registry: str, path: str, method: str = "GET", accept: str = "", auth: bool = False):
    req = urllib.request.Request(f"http://{registry}{path}", method=method)
    if accept:
        req.add_header("Accept", accept)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(CREDS.encode()).decode())
    return urllib.request.urlopen(req, timeout=30)


def manifest(registry: str, repository: str, ref: str, auth: bool = False) -> tuple[str, dict, str]:
    """(Content-Type, parsed body, Docker-Content-Digest) of a manifest, as any client would GET it."""
    with _request(registry, f"/v2/{repository}/manifests/{ref}", accept=f"{OCI_MANIFEST}, {DOCKER_MANIFEST}",
                  auth=auth) as resp:
        return resp.headers["Content-Type"], json.loads(resp.read()), resp.headers["Docker-Content-Digest"]


def has_blob(registry: str, repository: str, digest: str) -> bool:
    try:
        with _request(registry, f"/v2/{repository}/blobs/{digest}", method="HEAD"):
            return True
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def skopeo(*args: str) -> str:
    proc = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def blob_lines(err: str) -> list[str]:
    return [l for l in err.splitlines() if l.startswith("Copying blob")]


# ------------------------------------------------------------------------------------------------------------

def test_push_mounts_keeps_digest_and_pulls_back(pinnace, fixtures_info):
    info = fixtures_info["busybox"]
    pinnace("pull", "-q", BUSYBOX)
    dest = f"{REGISTRY}/{repo('busybox')}:v1"
    pinnace("tag", BUSYBOX, dest)
    res = pinnace("push", dest)
    # unchanged format and blobs: the very manifest that was pulled, so the same digest
    assert res.out.strip() == info["digest"]
    # the layer came from the repository it was pulled from, by a cross-repository mount
    assert blob_lines(res.err) == [f"Copying blob {info['layers'][0]['digest'][7:19]} mounted from "
                                   f"{REGISTRY}/fixtures/busybox"]
    name = dest.removeprefix(f"{REGISTRY}/").rsplit(":", 1)[0]
    assert has_blob(REGISTRY, name, info["layers"][0]["digest"]) and has_blob(REGISTRY, name, info["config"])
    ctype, body, digest = manifest(REGISTRY, name, "v1")
    assert (ctype, digest) == (OCI_MANIFEST, info["digest"])
    pinnace("rmi", "-f", dest, BUSYBOX)
    assert pinnace("images", "-q").out.strip() == ""
    assert pinnace("pull", "-q", dest).out.strip() == info["config"][7:]
    assert pinnace("image", "inspect", dest).json()[0]["Digest"] == info["digest"]


def test_mount_prefers_the_images_own_name_over_past_push_destinations(pinnace, fixtures_info):
    """Past pushes are remembered as mount sources (RepoDigests); when those repositories lost the blob
    (deleted on the registry), the repository the image's name points at must still be tried."""
    info = fixtures_info["busybox"]
    layer = info["layers"][0]["digest"]
    pinnace("pull", "-q", BUSYBOX)
    # three earlier destinations whose names sort before fixtures/busybox, then deleted on the registry
    stale = [f"aaa-{repo('stale')}" for _ in range(3)]
    for name in stale:
        pinnace("push", BUSYBOX, f"{REGISTRY}/{name}:v1")
        _request(REGISTRY, f"/v2/{name}/blobs/{layer}", method="DELETE").close()
        assert not has_blob(REGISTRY, name, layer)
    assert len(pinnace("image", "inspect", BUSYBOX).json()[0]["RepoDigests"]) == 4
    res = pinnace("push", BUSYBOX, f"{REGISTRY}/{repo('fresh')}:v1")
    assert blob_lines(res.err) == [f"Copying blob {layer[7:19]} mounted from {REGISTRY}/fixtures/busybox"], res.err


def test_second_push_skips_every_blob(pinnace, fixtures_info):
    pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox-layers")
    dest = f"{REGISTRY}/{repo('layers')}:latest"
    first = pinnace("push", f"{REGISTRY}/fixtures/busybox-layers", dest)
    assert len(blob_lines(first.err)) == 3 and all("mounted from" in l for l in blob_lines(first.err))
    second = pinnace("push", f"{REGISTRY}/fixtures/busybox-layers", dest)
    assert second.out == first.out
    lines = blob_lines(second.err)
    assert len(lines) == 3 and all(l.endswith("skipped: already exists") for l in lines), second.err
    assert sorted(l.split()[2] for l in lines) == sorted(d["digest"][7:19] for d in fixtures_info["busybox-layers"]["layers"])


def test_auth_registry_needs_login(pinnace, fixtures_info):
    pinnace("pull", "-q", BUSYBOX)
    name = repo("auth")
    res = pinnace("push", BUSYBOX, f"{AUTH_REGISTRY}/{name}:v1", check=False)
    assert res.rc == 125
    errors = [l for l in res.err.splitlines() if l.startswith("Error:")]
    assert errors == [f"Error: {AUTH_REGISTRY}: authentication required: run `pinnace login {AUTH_REGISTRY}` "
                      "(or give --creds)"]
    assert "Traceback" not in res.err
    res = pinnace("push", "--creds", f"{AUTH_USER}:wrong", BUSYBOX, f"{AUTH_REGISTRY}/{name}:v1", check=False)
    assert res.rc == 125 and "rejected" in res.err and "Traceback" not in res.err
    pinnace("login", "-u", AUTH_USER, "-p", AUTH_PASSWORD, AUTH_REGISTRY)
    res = pinnace("push", BUSYBOX, f"{AUTH_REGISTRY}/{name}:v1")
    assert res.out.strip() == fixtures_info["busybox"]["digest"]
    # another registry: nothing to mount from, the layer is uploaded
    assert blob_lines(res.err) == [f"Copying blob {fixtures_info['busybox']['layers'][0]['digest'][7:19]} done"]
    assert manifest(AUTH_REGISTRY, name, "v1", auth=True)[2] == fixtures_info["busybox"]["digest"]


def test_formats_set_the_media_types(pinnace, fixtures_info):
    info = fixtures_info["busybox"]
    pinnace("pull", "-q", BUSYBOX)
    name = repo("formats")
    oci = pinnace("push", "--format", "oci", BUSYBOX, f"{REGISTRY}/{name}:oci").out.strip()
    v2 = pinnace("push", "--format=v2s2", BUSYBOX, f"docker://{REGISTRY}/{name}:v2s2").out.strip()
    assert oci == info["digest"] and v2 != oci
    ctype, body, digest = manifest(REGISTRY, name, "v2s2")
    assert ctype == DOCKER_MANIFEST and digest == v2
    assert body["mediaType"] == DOCKER_MANIFEST
    assert body["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json",
                              "digest": info["config"], "size": body["config"]["size"]}
    assert [(l["mediaType"], l["digest"]) for l in body["layers"]] == [
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", info["layers"][0]["digest"])]
    ctype, body, _ = manifest(REGISTRY, name, "oci")
    assert ctype == OCI_MANIFEST and body["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [l["mediaType"] for l in body["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"]
    # the Docker manifest pulls back as the same image (same config), and pushing it unchanged keeps it
    pinnace("rmi", "-f", BUSYBOX)
    assert pinnace("pull", "-q", f"{REGISTRY}/{name}:v2s2").out.strip() == info["config"][7:]
    assert pinnace("push", f"{REGISTRY}/{name}:v2s2", f"{REGISTRY}/{name}:again").out.strip() == v2
    res = pinnace("push", "--format", "v2s2", "--compression-format", "zstd", BUSYBOX, f"{REGISTRY}/{name}:x",
                  check=False)
    assert res.rc == 125 and "zstd compression needs --format oci" in res.err
    res = pinnace("push", "--format", "v3", f"{REGISTRY}/{name}:v2s2", f"{REGISTRY}/{name}:x", check=False)
    assert res.rc == 125 and "unsupported manifest format" in res.err


def test_zstd_push_pull_run_and_cache(pinnace, module_pinnace, fixtures_info):
    info = fixtures_info["busybox"]
    pinnace("pull", "-q", BUSYBOX)
    name = repo("zstd")
    digest = pinnace("push", "--compression-format", "zstd", BUSYBOX, f"{REGISTRY}/{name}:z").out.strip()
    _, body, _ = manifest(REGISTRY, name, "z")
    assert [l["mediaType"] for l in body["layers"]] == ["application/vnd.oci.image.layer.v1.tar+zstd"]
    assert body["config"]["digest"] == info["config"]  # same image, other layer encoding
    zstd_blob = body["layers"][0]["digest"]
    with _request(REGISTRY, f"/v2/{name}/blobs/{zstd_blob}") as resp:
        assert resp.read(4) == b"\x28\xb5\x2f\xfd"
    # another store pulls it and runs it
    ref = f"{REGISTRY}/{name}:z"
    assert module_pinnace("pull", "-q", ref).out.strip() == info["config"][7:]
    assert module_pinnace("run", "--rm", ref, "cat", "/home/app/hello.txt").out == "hello from app\n"
    # The zstd blob is kept in the store: a second push to another registry sends it without compressing
    # again — proven by breaking the gzip blob it was made from (same size, other bytes).
    gz = pinnace.root / "blobs" / "sha256" / info["layers"][0]["digest"][7:]
    assert (pinnace.root / "blobs" / "sha256" / zstd_blob[7:]).exists()
    size = gz.stat().st_size
    gz.chmod(0o644)
    gz.write_bytes(b"\0" * size)
    res = pinnace("push", "--creds", CREDS, "--compression-format", "zstd", BUSYBOX, f"{AUTH_REGISTRY}/{name}:z")
    assert res.out.strip() == digest
    assert blob_lines(res.err) == [f"Copying blob {zstd_blob[7:19]} done"]


def test_digestfile_and_skopeo(pinnace, tmp_path, fixtures_info):
    pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox-layers")
    name = repo("skopeo")
    digestfile = tmp_path / "digest"
    out = pinnace("push", "-q", "--digestfile", str(digestfile), "--format", "v2s2",
                  f"{REGISTRY}/fixtures/busybox-layers", f"{REGISTRY}/{name}:v1")
    assert out.err == ""  # -q: no progress
    assert digestfile.read_text() == out.out.strip() == manifest(REGISTRY, name, "v1")[2]
    data = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{REGISTRY}/{name}:v1"))
    assert data["Digest"] == digestfile.read_text()
    assert data["Layers"] == [l["digest"] for l in fixtures_info["busybox-layers"]["layers"]]
    skopeo("copy", "--src-tls-verify=false", f"docker://{REGISTRY}/{name}:v1", f"oci:{tmp_path / 'oci'}:v1")
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert len(index["manifests"]) == 1
    for layer in fixtures_info["busybox-layers"]["layers"]:
        assert (tmp_path / "oci" / "blobs" / "sha256" / layer["digest"][7:]).stat().st_size == layer["size"]


def test_committed_image_is_compressed_and_pushed(pinnace, module_pinnace, tmp_path, fixtures_info):
    pinnace("pull", "-q", BUSYBOX)
    pinnace("run", "--name", "to-push", BUSYBOX, "sh", "-c", "echo pushed > /f && rm /home/app/hello.txt")
    pinnace("commit", "to-push", "localhost/committed:v1")
    pinnace("rm", "to-push")
    name = repo("committed")
    res = pinnace("push", "localhost/committed:v1", f"{REGISTRY}/{name}:v1")
    _, body, digest = manifest(REGISTRY, name, "v1")
    assert digest == res.out.strip()
    # the container's layer was stored uncompressed by commit: it goes out gzip-compressed
    assert [l["mediaType"] for l in body["layers"]] == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 2
    new_layer = body["layers"][1]["digest"]
    with _request(REGISTRY, f"/v2/{name}/blobs/{new_layer}") as resp:
        assert resp.read(2) == b"\x1f\x8b"
    # the base layer is mounted from where the base image came from, the new one is uploaded
    assert sorted(blob_lines(res.err)) == sorted([
        f"Copying blob {fixtures_info['busybox']['layers'][0]['digest'][7:19]} mounted from {REGISTRY}/fixtures/busybox",
        f"Copying blob {new_layer[7:19]} done"])
    ref = f"{REGISTRY}/{name}:v1"
    assert module_pinnace("run", "--rm", ref, "sh", "-c", "cat /f; ls /home/app/hello.txt || true").out == "pushed\n"
    # skopeo reads it too (it checks every layer against the config's diff_ids)
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'oci'}:v1")
    # a second push finds the compressed blob in the store and the registry: nothing compressed, nothing sent
    again = pinnace("push", "localhost/committed:v1", f"{REGISTRY}/{name}:v1")
    assert again.out == res.out and all(l.endswith("already exists") for l in blob_lines(again.err))


def test_push_debian_uploads_in_chunks(pinnace, module_pinnace, fixtures_info):
    info = fixtures_info["debian"]
    pinnace("pull", "-q", DEBIAN)
    name = repo("debian")
    # another registry: the 48 MB layer is really uploaded (chunked: it is above the monolithic limit)
    res = pinnace("push", "--creds", CREDS, DEBIAN, f"{AUTH_REGISTRY}/{name}:v1")
    assert res.out.strip() == info["digest"]
    assert blob_lines(res.err) == [f"Copying blob {info['layers'][0]['digest'][7:19]} done"]
    data = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", CREDS, f"docker://{AUTH_REGISTRY}/{name}:v1"))
    assert data["Digest"] == info["digest"] and data["Layers"] == [info["layers"][0]["digest"]]
    module_pinnace("login", "-u", AUTH_USER, "-p", AUTH_PASSWORD, AUTH_REGISTRY)
    ref = f"{AUTH_REGISTRY}/{name}:v1"
    assert module_pinnace("pull", "-q", ref).out.strip() == info["config"][7:]
    assert module_pinnace("run", "--rm", ref, "cat", "/etc/debian_version").out.startswith("12.")


def test_errors_are_one_line(pinnace, fixtures_info):
    def error(*args: str) -> str:
        res = pinnace(*args, check=False)
        assert res.rc == 125 and "Traceback" not in res.err, res.err
        lines = [l for l in res.err.splitlines() if l.startswith("Error:")]
        assert len(lines) == 1, res.err
        return lines[0]
    assert "no such image" in error("push", "nosuch:v1", f"{REGISTRY}/{repo('x')}:v1")
    pinnace("pull", "-q", BUSYBOX)
    assert "cannot reach 127.0.0.1:1" in error("push", BUSYBOX, "127.0.0.1:1/x/y:v1")
    assert "DESTINATION" in error("push", fixtures_info["busybox"]["config"][7:19])
    assert "digest reference" in error("push", BUSYBOX, f"{REGISTRY}/x@{fixtures_info['busybox']['digest']}")
    assert "only registries" in error("push", BUSYBOX, "oci:/tmp/x")
    # a local blob that no longer matches its digest: the registry refuses it (DIGEST_INVALID)
    layer = fixtures_info["busybox"]["layers"][0]["digest"]
    blob = pinnace.root / "blobs" / "sha256" / layer[7:]
    blob.chmod(0o644)
    blob.write_bytes(b"\0" * blob.stat().st_size)
    message = error("push", "--creds", CREDS, BUSYBOX, f"{AUTH_REGISTRY}/{repo('bad')}:v1")
    assert layer in message and "does not match" in message


def test_layers_without_blobs_are_exported_from_their_directories(pinnace, module_pinnace):
    """The fallback for images whose layer blobs are gone: the unpacked layer is written back as a tar
    (layer_export). Fixture tars do not come back byte for byte, so the pushed config differs (a
    warning says so) — but the image is complete and consistent: another store pulls (every diff-id
    checked) and runs it."""
    src = f"{REGISTRY}/fixtures/busybox-layers"
    pinnace("pull", "-q", src)
    pinnace("run", "--name", "exp", src, "sh", "-c", "echo x > /data/new && ln /data/new /data/new2 && rm /data/a.txt")
    pinnace("commit", "exp", "localhost/exported:v1")
    pinnace("rm", "exp")
    digest = pinnace("image", "inspect", "localhost/exported:v1").json()[0]["Digest"]
    blobs = pinnace.root / "blobs" / "sha256"
    for layer in json.loads((blobs / digest[7:]).read_bytes())["layers"]:
        (blobs / layer["digest"][7:]).unlink(missing_ok=True)
    ref = f"{REGISTRY}/{repo('exported')}:v1"
    res = pinnace("push", "localhost/exported:v1", ref)
    assert "exported from their directories" in res.err and len(blob_lines(res.err)) == 4
    module_pinnace("pull", "-q", ref)
    out = module_pinnace("run", "--rm", ref, "sh", "-c",
                         "cat /data/new2; stat -c %h /data/new; ls /data/a.txt; cat /data/sub/new.txt").out
    assert out == "x\n2\nnew\n"
