"""Manifests, indexes and configs (parsing, validation, media types) and platform selection."""
from __future__ import annotations

import json
import os

import pytest

from fakeregistry import fixtures_layout
from pinnace.errors import InvalidArgument, NotFound, RegistryError, UnsupportedMediaType
from pinnace.registry import manifest as m
from pinnace.registry.manifest import (ImageIndex, ImageManifest, layer_compression, parse_config, parse_manifest,
                                       select_platform, sha256_digest)
from pinnace.registry.platform import Platform, host_platform

D = "sha256:" + "a" * 64


def blob(digest: str) -> bytes:
    return (fixtures_layout() / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()


def doc(**overrides) -> dict:
    base = {"schemaVersion": 2, "mediaType": m.OCI_MANIFEST,
            "config": {"mediaType": m.OCI_CONFIG, "digest": D, "size": 10},
            "layers": [{"mediaType": m.OCI_LAYER_GZIP, "digest": D, "size": 20}]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def raw(d: dict) -> bytes:
    return json.dumps(d).encode()


# ------------------------------------------------------------------------------------------ manifests

@pytest.mark.parametrize("name", ["busybox", "busybox-layers", "debian"])
def test_fixture_manifests(fixtures_info, name):
    info = fixtures_info[name]
    data = blob(info["digest"])
    man = parse_manifest(data, info["mediaType"])
    assert isinstance(man, ImageManifest)
    assert man.digest == info["digest"] == sha256_digest(data)
    assert man.raw == data and man.media_type == m.OCI_MANIFEST
    assert man.config.digest == info["config"] and man.config.media_type == m.OCI_CONFIG
    assert [(x.digest, x.size, x.media_type) for x in man.layers] == \
        [(x["digest"], x["size"], x["mediaType"]) for x in info["layers"]]
    assert parse_manifest(data, None) == man  # the body's mediaType when no header
    assert parse_manifest(data, "application/json; charset=utf-8") == man  # … or a generic one


def test_fixture_index(fixtures_info):
    info = fixtures_info["busybox-multi"]
    index = parse_manifest(blob(info["digest"]), m.OCI_INDEX)
    assert isinstance(index, ImageIndex) and index.digest == info["digest"]
    assert {f"{d.platform['os']}/{d.platform['architecture']}" + (f"/{d.platform['variant']}" if d.platform.get("variant") else ""): d.digest
            for d in index.manifests} == info["manifests"]
    assert select_platform(index, Platform.parse("linux/amd64")).digest == info["manifests"]["linux/amd64"]
    assert select_platform(index, Platform.parse("linux/arm64/v8")).digest == info["manifests"]["linux/arm64/v8"]
    assert select_platform(index, Platform.parse("linux/arm64")).digest == info["manifests"]["linux/arm64/v8"]
    assert select_platform(index, Platform.parse("linux/aarch64")).digest == info["manifests"]["linux/arm64/v8"]
    with pytest.raises(NotFound, match=r"no image for platform linux/s390x in reg/x:1 \(available: linux/amd64, linux/arm64/v8\)"):
        select_platform(index, Platform.parse("linux/s390x"), name="reg/x:1")
    with pytest.raises(NotFound, match="linux/arm/v7"):
        select_platform(index, Platform.parse("linux/arm/v7"))


def test_docker_schema2_manifest_and_list():
    man = parse_manifest(raw(doc(mediaType=m.DOCKER_MANIFEST, layers=[
        {"mediaType": m.DOCKER_LAYER_GZIP, "digest": D, "size": 1},
        {"mediaType": m.DOCKER_LAYER_FOREIGN, "digest": D, "size": 2, "urls": ["https://x/y"]}])), m.DOCKER_MANIFEST)
    assert man.media_type == m.DOCKER_MANIFEST and man.layers[1].urls == ("https://x/y",)
    lst = parse_manifest(raw({"schemaVersion": 2, "mediaType": m.DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": m.DOCKER_MANIFEST, "digest": D, "size": 5, "platform": {"os": "linux", "architecture": "amd64"}},
    ]}), None)
    assert isinstance(lst, ImageIndex) and lst.media_type == m.DOCKER_MANIFEST_LIST
    assert lst.manifests[0].to_dict() == {"mediaType": m.DOCKER_MANIFEST, "digest": D, "size": 5,
                                          "platform": {"os": "linux", "architecture": "amd64"}}


def test_media_type_sniffed_when_absent():
    assert isinstance(parse_manifest(raw(doc(mediaType=None)), None), ImageManifest)
    assert isinstance(parse_manifest(raw({"schemaVersion": 2, "manifests": []}), "text/plain"), ImageIndex)
    assert parse_manifest(raw(doc(mediaType=None)), m.DOCKER_MANIFEST).media_type == m.DOCKER_MANIFEST


def test_schema1_rejected():
    body = raw({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []})
    for header in (m.DOCKER_SCHEMA1_SIGNED, m.DOCKER_SCHEMA1, None, "application/json"):
        with pytest.raises(UnsupportedMediaType, match="schema 1 manifests are not supported"):
            parse_manifest(body, header)


def test_unknown_media_types():
    with pytest.raises(UnsupportedMediaType, match="application/vnd.example.thing"):
        parse_manifest(raw(doc(mediaType="application/vnd.example.thing")), None)
    with pytest.raises(UnsupportedMediaType, match="unsupported manifest media type"):
        parse_manifest(raw(doc(mediaType=None)), "application/vnd.example.other+json")
    with pytest.raises(UnsupportedMediaType):
        parse_manifest(raw({"schemaVersion": 2}), None)  # nothing says what it is


@pytest.mark.parametrize("body,message", [
    (b"{not json", "invalid JSON"),
    (b"\xff\xfe", "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (raw(doc(mediaType=5)), "mediaType is not a string"),
    (raw(doc(schemaVersion=3)), "schemaVersion 3"),
    (raw(doc(layers={"a": 1})), "no layers list"),
    (raw(doc(config=None)), "no config descriptor"),
    (raw(doc(config="x")), "descriptor is not an object"),
    (raw(doc(layers=[{"mediaType": m.OCI_LAYER, "digest": "sha256:1234", "size": 1}])), "invalid descriptor digest"),
    (raw(doc(layers=[{"mediaType": m.OCI_LAYER, "digest": "sha512:" + "a" * 128, "size": 1}])), "invalid descriptor digest"),
    (raw(doc(layers=[{"mediaType": m.OCI_LAYER, "digest": D, "size": -1}])), "invalid size"),
    (raw(doc(layers=[{"mediaType": m.OCI_LAYER, "digest": D, "size": True}])), "invalid size"),
    (raw(doc(layers=[{"mediaType": m.OCI_LAYER, "digest": D, "size": "1"}])), "invalid size"),
    (raw(doc(layers=[{"digest": D, "size": 1}])), "without mediaType"),
    (raw(doc(layers=[{"mediaType": m.OCI_LAYER, "digest": D, "size": 1, "urls": "x"}])), "invalid urls"),
    (raw(doc(layers=[{"mediaType": m.OCI_LAYER, "digest": D, "size": 1, "annotations": {"a": 1}}])), "invalid annotations"),
    (raw({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": "x"}), "without a manifests list"),
    (raw({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": [
        {"mediaType": m.OCI_MANIFEST, "digest": D, "size": 1, "platform": {"os": "linux"}}]}), "invalid platform"),
])
def test_malformed_manifests(body, message):
    with pytest.raises(RegistryError, match=f"malformed manifest sha256:[0-9a-f]{{64}}: .*{message}") as info:
        parse_manifest(body, None)
    assert type(info.value) is RegistryError


def test_header_and_body_disagree():
    with pytest.raises(RegistryError, match="served as .*index.* but declares .*manifest"):
        parse_manifest(raw(doc()), m.OCI_INDEX)


def test_layer_compression():
    assert layer_compression(m.OCI_LAYER) is None
    assert layer_compression(m.DOCKER_LAYER) is None
    assert layer_compression(m.OCI_LAYER_NONDIST) is None
    for gz in (m.OCI_LAYER_GZIP, m.DOCKER_LAYER_GZIP, m.DOCKER_LAYER_FOREIGN, m.OCI_LAYER_NONDIST_GZIP):
        assert layer_compression(gz) == "gzip"
    for zst in (m.OCI_LAYER_ZSTD, m.OCI_LAYER_NONDIST_ZSTD):
        assert layer_compression(zst) == "zstd"
    for bad in ("application/vnd.oci.image.layer.v1.tar+bzip2", m.OCI_CONFIG, ""):
        with pytest.raises(UnsupportedMediaType, match="unsupported layer media type"):
            layer_compression(bad)


def test_manifest_accept_lists_all_four_oci_first():
    assert m.MANIFEST_ACCEPT[:2] == (m.OCI_MANIFEST, m.OCI_INDEX)
    assert set(m.MANIFEST_ACCEPT) == {m.OCI_MANIFEST, m.OCI_INDEX, m.DOCKER_MANIFEST, m.DOCKER_MANIFEST_LIST}


# ------------------------------------------------------------------------------------------ configs

def test_fixture_configs(fixtures_info):
    for name in ("busybox", "busybox-layers", "debian"):
        info = fixtures_info[name]
        config = parse_config(blob(info["config"]), expected_layers=len(info["layers"]))
        assert config["rootfs"]["diff_ids"] == info["diff_ids"]
        assert (config["os"], config["architecture"]) == ("linux", "amd64")


def cfg(**overrides) -> bytes:
    base = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D]}, "config": {}}
    base.update(overrides)
    return raw({k: v for k, v in base.items() if v is not None})


@pytest.mark.parametrize("data,message", [
    (b"nope", "invalid JSON"),
    (b"[]", "not a JSON object"),
    (cfg(architecture=None), "missing architecture"),
    (cfg(os=""), "missing os"),
    (cfg(rootfs=None), "rootfs.type"),
    (cfg(rootfs={"type": "layers"}), "diff_ids"),
    (cfg(rootfs={"type": "layers", "diff_ids": ["sha256:12"]}), "diff_ids"),
    (cfg(rootfs={"type": "layers", "diff_ids": D}), "diff_ids"),
    (cfg(config=[]), "config has the wrong type"),
    (cfg(history={}), "history has the wrong type"),
])
def test_malformed_configs(data, message):
    with pytest.raises(RegistryError, match=f"malformed image config .*{message}"):
        parse_config(data)


def test_config_layer_count():
    assert parse_config(cfg(), expected_layers=1)["os"] == "linux"
    with pytest.raises(RegistryError, match="1 diff_ids for 2 layers"):
        parse_config(cfg(), expected_layers=2)


def test_sha256_digest():
    assert sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# ------------------------------------------------------------------------------------------ platforms

@pytest.mark.parametrize("text,expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/arm/v7", Platform("linux", "arm", "v7")),
    ("Linux/AMD64", Platform("linux", "amd64")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("linux/armhf", Platform("linux", "arm", "v7")),
    ("arm64", Platform("linux", "arm64")),
    ("windows/amd64", Platform("windows", "amd64")),
])
def test_platform_parse(text, expected):
    assert Platform.parse(text) == expected


@pytest.mark.parametrize("text", ["", "linux", "junk", "linux/", "/amd64", "linux/amd64/v8/x", "beos/amd64",
                                  "linux/amd 64", "linux//v7"])
def test_platform_parse_rejects_junk(text):
    with pytest.raises(InvalidArgument, match="invalid platform"):
        Platform.parse(text)


def test_platform_str():
    assert str(Platform("linux", "arm64", "v8")) == "linux/arm64/v8"
    assert str(Platform.parse("linux/amd64")) == "linux/amd64"


def test_host_platform():
    machine = os.uname().machine
    expected = {"x86_64": "linux/amd64", "aarch64": "linux/arm64/v8", "armv7l": "linux/arm/v7"}.get(machine)
    assert expected is not None, f"add this machine ({machine}) to the test"
    assert str(host_platform()) == expected


@pytest.mark.parametrize("want,desc,ok", [
    ("linux/amd64", {"os": "linux", "architecture": "amd64"}, True),
    ("linux/amd64", {"os": "linux", "architecture": "amd64", "variant": "v3"}, True),  # ignored unless asked
    ("linux/amd64/v3", {"os": "linux", "architecture": "amd64", "variant": "v3"}, True),
    ("linux/amd64/v3", {"os": "linux", "architecture": "amd64"}, False),
    ("linux/amd64", {"os": "windows", "architecture": "amd64"}, False),
    ("linux/amd64", {"os": "linux", "architecture": "arm64"}, False),
    ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, True),  # v8 is the default
    ("linux/arm64/v8", {"os": "linux", "architecture": "arm64"}, True),
    ("linux/arm64/v8", {"os": "linux", "architecture": "arm64", "variant": "8"}, True),
    ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v9"}, False),
    ("linux/arm/v7", {"os": "linux", "architecture": "arm"}, True),  # v7 is the default for arm
    ("linux/arm/v7", {"os": "linux", "architecture": "arm", "variant": "v6"}, False),
    ("linux/arm/v6", {"os": "linux", "architecture": "arm", "variant": "v6"}, True),
    ("linux/amd64", {"os": "unknown", "architecture": "unknown"}, False),  # attestation entries
    ("linux/amd64", None, False),
    ("linux/amd64", {"os": "linux"}, False),
    ("linux/amd64", {"os": "linux", "architecture": "amd64", "variant": 3}, False),
])
def test_platform_matches(want, desc, ok):
    assert Platform.parse(want).matches(desc) is ok
