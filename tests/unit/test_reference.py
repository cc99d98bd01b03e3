"""Image references, and the per-registry settings looked up by them: credentials (auth.json /
Docker config.json) and registries.conf."""
from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from pinnace.errors import InvalidArgument
from pinnace.registry.auth import (auth_file_path, load_credentials, remove_all_credentials, remove_credentials,
                                   save_credentials)
from pinnace.registry.config import RegistriesConfig, is_loopback, load_registries_config
from pinnace.registry.reference import Reference, is_digest, parse_reference, registry_api_host

D = "sha256:" + "a" * 64
D2 = "sha256:" + "0123456789abcdef" * 4

# ------------------------------------------------------------------------------------------ references

NORMALISED = [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("library/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/library/busybox:musl", "docker.io", "library/busybox", "musl", None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("registry-1.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None),
    ("user/repo", "docker.io", "user/repo", "latest", None),
    ("user/repo/deeper", "docker.io", "user/repo/deeper", "latest", None),
    ("quay.io/podman/stable:v4", "quay.io", "podman/stable", "v4", None),
    ("localhost/foo", "localhost", "foo", "latest", None),
    ("localhost:5000/foo/bar:tag", "localhost:5000", "foo/bar", "tag", None),
    ("127.0.0.1:5000/fixtures/busybox", "127.0.0.1:5000", "fixtures/busybox", "latest", None),
    ("[::1]:5000/foo:1", "[::1]:5000", "foo", "1", None),
    ("[2001:db8::1]/foo", "[2001:db8::1]", "foo", "latest", None),
    ("example.com/a/b/c", "example.com", "a/b/c", "latest", None),
    ("my-registry.local:443/team/app", "my-registry.local:443", "team/app", "latest", None),
    ("Registry.Example/app", "Registry.Example", "app", "latest", None),  # uppercase → a registry
    ("user/a.b_c__d-e--f:Tag_1.0-x", "docker.io", "user/a.b_c__d-e--f", "Tag_1.0-x", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),  # no slash: a name and a tag
    (f"busybox@{D}", "docker.io", "library/busybox", None, D),
    (f"busybox:1@{D}", "docker.io", "library/busybox", "1", D),
    (f"localhost:5000/x@{D2}", "localhost:5000", "x", None, D2),
]


@pytest.mark.parametrize("text,registry,repository,tag,digest", NORMALISED)
def test_normalisation(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert parse_reference(str(ref)) == ref  # the canonical form is stable


def test_canonical_strings():
    assert str(parse_reference("busybox")) == "docker.io/library/busybox:latest"
    assert str(parse_reference(f"localhost:5000/a/b@{D}")) == f"localhost:5000/a/b@{D}"
    assert str(parse_reference(f"busybox:1@{D}")) == f"docker.io/library/busybox:1@{D}"
    assert parse_reference("quay.io/a/b:c").name == "quay.io/a/b"


INVALID = [
    ("", "empty"),
    ("UPPER", "lowercase"),
    ("docker.io/Library/busybox", "lowercase"),
    ("busybox:", "invalid tag"),
    (":tag", "empty name"),
    ("busybox:-bad", "invalid tag"),
    ("busybox:.bad", "invalid tag"),
    ("busybox:" + "a" * 129, "invalid tag"),
    ("busybox@sha256:abc", "invalid digest"),
    ("busybox@sha256:" + "A" * 64, "invalid digest"),
    ("busybox@md5:" + "a" * 32, "unsupported digest algorithm 'md5'"),
    ("busybox@sha512:" + "a" * 128, "unsupported digest algorithm 'sha512'"),
    ("busybox@", "invalid digest"),
    ("a//b", "component"),
    ("-a", "component"),
    ("a-", "component"),
    ("a..b", "component"),
    ("a/b/", "component"),
    ("name with space", "invalid"),
    ("host:port:extra/x", "invalid registry"),
    ("-host.com/x", "invalid registry"),
    ("localhost/", "empty repository"),
    ("a" * 64, "64-byte hexadecimal"),
    ("x/" + "a" * 256, "255"),
]


@pytest.mark.parametrize("text,message", INVALID)
def test_invalid_references(text, message):
    with pytest.raises(InvalidArgument, match=message.replace(".", r"\.")) as info:
        parse_reference(text)
    if text:
        assert repr(text)[:40].rstrip("'") in str(info.value)  # the message names what was given


def test_default_tag():
    assert parse_reference("busybox", default_tag=None).tag is None
    assert parse_reference("busybox", default_tag="edge").tag == "edge"
    assert parse_reference("busybox:1", default_tag=None).tag == "1"
    assert parse_reference(f"busybox@{D}", default_tag="edge").tag is None  # never with a digest


def test_with_tag_and_digest():
    ref = parse_reference("quay.io/a/b:1")
    assert str(ref.with_tag("2")) == "quay.io/a/b:2"
    assert str(ref.with_digest(D)) == f"quay.io/a/b:1@{D}"
    assert str(ref.with_digest(D).with_tag(None)) == f"quay.io/a/b@{D}"
    assert ref.with_tag("2") != ref and ref.tag == "1"  # frozen: a new object
    with pytest.raises(InvalidArgument):
        ref.with_tag("bad tag")
    with pytest.raises(InvalidArgument):
        ref.with_digest("sha256:123")


def test_is_digest_and_api_host():
    assert is_digest(D) and is_digest(D2)
    assert not is_digest("sha256:" + "a" * 63)
    assert not is_digest("sha512:" + "a" * 128)
    assert not is_digest("a" * 64)
    assert not is_digest(D + "\n")
    assert registry_api_host("docker.io") == "registry-1.docker.io"
    assert registry_api_host("index.docker.io") == "registry-1.docker.io"
    assert registry_api_host("quay.io") == "quay.io"
    assert registry_api_host("127.0.0.1:5000") == "127.0.0.1:5000"


def test_reference_is_hashable_record():
    assert len({parse_reference("busybox"), parse_reference("docker.io/library/busybox:latest")}) == 1
    assert Reference("r", "a", "t", None).name == "r/a"


def test_reference_module_imports_no_network_code():
    import subprocess
    import sys
    code = ("import sys, pinnace.registry.reference; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('urllib3', 'http', 'ssl', 'json', 'socket')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------ credentials

@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME with no auth-related environment."""
    for var in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG",
                "CONTAINERS_REGISTRIES_CONF"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _write(path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def test_auth_file_path_order(home, monkeypatch):
    assert auth_file_path() == home / ".config/containers/auth.json"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "cfg"))
    assert auth_file_path() == home / "cfg/containers/auth.json"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    assert auth_file_path() == home / "run/containers/auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "mine.json"))
    assert auth_file_path() == home / "mine.json"


def test_save_load_round_trip(home, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    assert load_credentials("127.0.0.1:5001") is None
    path = save_credentials("127.0.0.1:5001", "tester", "s3:cr:et")
    assert path == home / "run/containers/auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_credentials("127.0.0.1:5001") == ("tester", "s3:cr:et")  # ':' in passwords survive
    assert load_credentials("127.0.0.1:5001/any/repo") == ("tester", "s3:cr:et")
    assert load_credentials("127.0.0.1:5000") is None
    # the file is what podman writes: base64 user:password under the registry key
    assert json.loads(path.read_text()) == {"auths": {"127.0.0.1:5001": {"auth": _auth("tester", "s3:cr:et")}}}
    assert not [p for p in path.parent.iterdir() if p.name != "auth.json"]  # no temp files left


def test_save_keeps_other_entries_and_keys(home):
    path = home / "auth.json"
    _write(path, {"auths": {"quay.io": {"auth": _auth("q", "1")}}, "credHelpers": {"x.io": "pass"}})
    save_credentials("docker.io", "d", "2", path)
    save_credentials("index.docker.io", "d", "3", path)  # the same registry: replaced, not added
    doc = json.loads(path.read_text())
    assert doc["credHelpers"] == {"x.io": "pass"}
    assert doc["auths"] == {"quay.io": {"auth": _auth("q", "1")}, "docker.io": {"auth": _auth("d", "3")}}


def test_remove_credentials(home):
    path = home / "auth.json"
    _write(path, {"auths": {"quay.io": {"auth": _auth("q", "1")}, "https://index.docker.io/v1/": {"auth": _auth("d", "2")}}})
    assert remove_credentials("docker.io", path) is True
    assert remove_credentials("docker.io", path) is False
    assert list(json.loads(path.read_text())["auths"]) == ["quay.io"]
    assert remove_credentials("nothing.example", home / "missing.json") is False
    save_credentials("a.io", "a", "1", path)
    assert remove_all_credentials(path) == 2
    assert json.loads(path.read_text()) == {"auths": {}}
    assert remove_all_credentials(path) == 0


def test_lookup_order_and_docker_config(home, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    docker = home / ".docker/config.json"
    _write(docker, {"auths": {"https://index.docker.io/v1/": {"auth": _auth("hub", "h")},
                              "https://ghcr.io": {"auth": _auth("gh", "g")},
                              "quay.io": {"auth": _auth("dq", "dq")},
                              "helper.io": {}}})
    assert load_credentials("docker.io") == ("hub", "h")
    assert load_credentials("ghcr.io") == ("gh", "g")
    assert load_credentials("quay.io") == ("dq", "dq")
    assert load_credentials("helper.io") is None  # held by a credential helper: not ours to run
    # ~/.config/containers/auth.json comes before Docker's file, the runtime auth.json before both
    _write(home / ".config/containers/auth.json", {"auths": {"quay.io": {"auth": _auth("cq", "cq")}}})
    assert load_credentials("quay.io") == ("cq", "cq")
    _write(home / "run/containers/auth.json", {"auths": {"quay.io": {"auth": _auth("rq", "rq")}}})
    assert load_credentials("quay.io") == ("rq", "rq")
    monkeypatch.setenv("DOCKER_CONFIG", str(home / "elsewhere"))
    assert load_credentials("docker.io") is None
    _write(home / "elsewhere/config.json", {"auths": {"docker.io": {"username": "u", "password": "p"}}})
    assert load_credentials("docker.io") == ("u", "p")


def test_namespaced_credentials_most_specific_first(home):
    _write(home / ".config/containers/auth.json", {"auths": {
        "quay.io": {"auth": _auth("all", "1")},
        "quay.io/team": {"auth": _auth("team", "2")},
        "quay.io/team/app": {"auth": _auth("app", "3")},
    }})
    assert load_credentials("quay.io/team/app") == ("app", "3")
    assert load_credentials("quay.io/team/other") == ("team", "2")
    assert load_credentials("quay.io/elsewhere/x") == ("all", "1")
    assert load_credentials("quay.io") == ("all", "1")


@pytest.mark.parametrize("content,message", [
    ("{not json", "malformed credentials file"),
    ('["a"]', "malformed credentials file"),
    ('{"auths": []}', "malformed credentials file"),
])
def test_malformed_credentials_files(home, content, message):
    path = home / ".config/containers/auth.json"
    _write(path, content)
    with pytest.raises(InvalidArgument, match=message) as info:
        load_credentials("quay.io")
    assert str(path) in str(info.value)
    with pytest.raises(InvalidArgument, match=str(path)):
        save_credentials("quay.io", "u", "p", path)  # never overwrite a file we could not read
    assert path.read_text() == content


@pytest.mark.parametrize("entry,message", [
    ('"x"', "not an object"),
    ('{"auth": "%%%"}', "invalid 'auth'"),
    ('{"auth": "%s"}' % base64.b64encode(b"nocolon").decode(), "not base64 of user:password"),
])
def test_malformed_credentials_entries(home, entry, message):
    path = home / ".config/containers/auth.json"
    _write(path, '{"auths": {"quay.io": %s, "ok.io": {"auth": "%s"}}}' % (entry, _auth("a", "b")))
    with pytest.raises(InvalidArgument, match=message) as info:
        load_credentials("quay.io")
    assert str(path) in str(info.value) and "'quay.io'" in str(info.value)
    assert load_credentials("ok.io") == ("a", "b")  # other entries stay usable
    save_credentials("quay.io", "u", "p", path)  # logging in again repairs the entry
    assert load_credentials("quay.io") == ("u", "p")


def test_unwritable_credentials_file(home):
    target = Path("/sys/pinnace-test/auth.json")  # sysfs refuses new entries, even to root
    with pytest.raises(InvalidArgument, match="cannot write credentials file /sys/pinnace-test/auth.json"):
        save_credentials("quay.io", "u", "p", target)


# ------------------------------------------------------------------------------------------ registries.conf

def test_registries_conf_v2(home, monkeypatch):
    conf = home / "registries.conf"
    conf.write_text('''
unqualified-search-registries = ["docker.io", "quay.io"]

[[registry]]
location = "registry.internal:5000"
insecure = true

[[registry]]
prefix = "*.corp.example"
location = "mirror.corp.example"
insecure = true

[[registry]]
location = "blocked.example"
blocked = true

[[registry]]
location = "localhost:5000"
insecure = false
''')
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    cfg = load_registries_config()
    assert cfg.path == conf
    assert cfg.unqualified_search_registries == ("docker.io", "quay.io")
    assert cfg.is_insecure("registry.internal:5000")
    assert not cfg.is_insecure("registry.internal")  # another port is another registry
    assert cfg.is_insecure("a.corp.example")
    assert not cfg.is_insecure("quay.io")
    assert cfg.is_blocked("blocked.example") and not cfg.is_blocked("quay.io")
    assert not cfg.is_insecure("localhost:5000")  # an explicit `insecure = false` beats the loopback default
    assert cfg.is_insecure("localhost:5001")


def test_loopback_is_insecure_by_default():
    cfg = RegistriesConfig()
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000", "[::1]"):
        assert cfg.is_insecure(host), host
        assert is_loopback(host), host
    for host in ("docker.io", "quay.io", "10.0.0.1:5000", "localhost.example.com", "[2001:db8::1]:5000"):
        assert not cfg.is_insecure(host), host


def test_registries_conf_v1_and_file_order(home, monkeypatch):
    assert load_registries_config(home / "nope.conf").registries == ()  # an absent file is an empty config
    user = home / ".config/containers/registries.conf"
    user.parent.mkdir(parents=True)
    user.write_text('[registries.insecure]\nregistries = ["old.example:5000"]\n'
                    '[registries.search]\nregistries = ["docker.io"]\n')
    cfg = load_registries_config()  # no env: ~/.config/containers/registries.conf
    assert cfg.path == user
    assert cfg.is_insecure("old.example:5000") and cfg.unqualified_search_registries == ("docker.io",)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "other"))
    assert load_registries_config().path != user


@pytest.mark.parametrize("content,message", [
    ("[[registry]\nlocation = 1", "malformed registries configuration"),
    ('[[registry]]\nlocation = 5', "needs a location"),
    ('[[registry]]\nlocation = "a.io"\ninsecure = "yes"', "must be true or false"),
    ('registry = "x"', "array of tables"),
    ('unqualified-search-registries = "docker.io"', "list of strings"),
])
def test_malformed_registries_conf(home, monkeypatch, content, message):
    conf = home / "registries.conf"
    conf.write_text(content)
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    with pytest.raises(InvalidArgument, match=message) as info:
        load_registries_config()
    assert str(conf) in str(info.value)


def test_missing_explicit_registries_conf(home, monkeypatch):
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(home / "absent.conf"))
    with pytest.raises(InvalidArgument, match="absent.conf"):
        load_registries_config()
