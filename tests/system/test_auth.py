"""login / logout and pulls from the registry that wants basic auth."""
from __future__ import annotations

import json

from testenv import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER

IMAGE = f"{AUTH_REGISTRY}/fixtures/busybox:latest"


def test_login_wrong_then_right_password(pinnace, fixtures_info):
    res = pinnace("pull", IMAGE, check=False)
    assert res.rc == 125 and ("unauthorized" in res.err.lower() or "authentication" in res.err.lower())
    res = pinnace("login", "-u", AUTH_USER, "--password-stdin", AUTH_REGISTRY, input="wrong\n", check=False)
    assert res.rc == 125 and "Traceback" not in res.err
    assert not (pinnace.home / "auth.json").exists()
    res = pinnace("login", "-u", AUTH_USER, "-p", AUTH_PASSWORD, AUTH_REGISTRY)
    assert "Login Succeeded" in res.out
    auth = json.loads((pinnace.home / "auth.json").read_text())
    assert AUTH_REGISTRY in auth["auths"]
    assert (pinnace.home / "auth.json").stat().st_mode & 0o077 == 0
    iid = pinnace("pull", "-q", IMAGE).out.strip()
    assert iid == fixtures_info["busybox"]["config"][7:]
    assert "Removed login credentials" in pinnace("logout", AUTH_REGISTRY).out
    assert pinnace("logout", AUTH_REGISTRY, check=False).rc == 125


def test_pull_with_creds_flag_and_docker_config(pinnace, fixtures_info):
    assert pinnace("pull", "-q", "--creds", f"{AUTH_USER}:{AUTH_PASSWORD}", IMAGE).rc == 0
    pinnace("rmi", IMAGE)
    # credentials in ~/.docker/config.json work too
    import base64
    docker = pinnace.home / ".docker"
    docker.mkdir()
    token = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    (docker / "config.json").write_text(json.dumps({"auths": {AUTH_REGISTRY: {"auth": token}}}))
    assert pinnace("pull", "-q", IMAGE).out.strip() == fixtures_info["busybox"]["config"][7:]


def test_registries_conf_blocks_a_registry(pinnace):
    conf = pinnace.home / ".config" / "containers"
    conf.mkdir(parents=True)
    (conf / "registries.conf").write_text(f'[[registry]]\nlocation = "{AUTH_REGISTRY}"\nblocked = true\n')
    res = pinnace("pull", "--creds", f"{AUTH_USER}:{AUTH_PASSWORD}", IMAGE, check=False)
    assert res.rc == 125 and "blocked" in res.err and len(res.err.strip().splitlines()) == 2  # "Trying…" + error
