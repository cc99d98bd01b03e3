"""Pulling the fixture images from the real registry as a user would (the CLI as a subprocess)."""
from __future__ import annotations

import os
import stat

import pytest
from testenv import REGISTRY

IMAGES = ["busybox", "busybox-layers", "busybox-multi", "debian"]


def _subuid_start() -> int | None:
    import pwd
    name = pwd.getpwuid(os.getuid()).pw_name
    for line in open("/etc/subuid"):
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (name, str(os.getuid())):
            return int(parts[1])
    return None


@pytest.mark.parametrize("name", IMAGES)
def test_pull_by_tag_and_digest(module_pinnace, fixtures_info, name):
    info = fixtures_info[name]
    ref = f"{REGISTRY}/fixtures/{name}:latest"
    out = module_pinnace("pull", ref).out.strip()
    amd64 = info["manifests"]["linux/amd64"] if "manifests" in info else info["digest"]
    expected_config = fixtures_info["busybox"]["config"] if name == "busybox-multi" else info["config"]
    assert out == expected_config.removeprefix("sha256:")
    by_digest = module_pinnace("pull", "-q", f"{REGISTRY}/fixtures/{name}@{info['digest']}").out.strip()
    assert by_digest == out
    data = module_pinnace("image", "inspect", ref).json()[0]
    assert data["Id"] == expected_config
    assert data["Digest"] == amd64
    assert f"{REGISTRY}/fixtures/{name}@{info['digest']}" in data["RepoDigests"]
    assert data["Architecture"] == "amd64"


def test_images_listing_formats(module_pinnace, fixtures_info):
    ref = f"{REGISTRY}/fixtures/busybox:latest"
    module_pinnace("pull", "-q", ref)
    table = module_pinnace("images").out.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    cfg = fixtures_info["busybox"]["config"]
    assert any(l.split()[:3] == [f"{REGISTRY}/fixtures/busybox", "latest", cfg[7:19]] for l in table[1:])
    assert cfg[7:19] in module_pinnace("images", "-q").out.split()
    js = module_pinnace("images", "--format", "json").json()
    entry = next(e for e in js if e["Id"] == cfg[7:])
    assert ref in entry["Names"] and entry["Size"] == fixtures_info["busybox"]["uncompressed_size"]
    tmpl = module_pinnace("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}",
                          "--filter", "reference=*fixtures/busybox:latest").out
    assert tmpl == f"{REGISTRY}/fixtures/busybox:latest {cfg[7:19]}\n"
    assert "sha256:" in module_pinnace("images", "--digests").out
    # `image ls` (typer path, an option the fast path does not take) prints the same table
    assert module_pinnace("image", "ls", "--filter=reference=*busybox*").out.splitlines()[0].startswith("REPOSITORY")


def test_platform_selection(pinnace, fixtures_info):
    ref = f"{REGISTRY}/fixtures/busybox-multi:latest"
    arm = pinnace("pull", "-q", "--platform", "linux/arm64", ref).out.strip()
    data = pinnace("image", "inspect", arm).json()[0]
    assert data["Architecture"] == "arm64" and data["Variant"] == "v8"
    assert data["Digest"] == fixtures_info["busybox-multi"]["manifests"]["linux/arm64/v8"]
    assert data["Config"]["Cmd"] == ["cat", "/README.txt"]
    amd = pinnace("pull", "-q", ref).out.strip()
    assert amd == fixtures_info["busybox"]["config"][7:]
    res = pinnace("pull", "--platform", "linux/s390x", ref, check=False)
    assert res.rc == 125 and "s390x" in res.err and "linux/amd64" in res.err
    assert "Traceback" not in res.err


def test_shared_layers_are_stored_once(pinnace, fixtures_info):
    pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox")
    pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox-layers")
    base = fixtures_info["busybox"]["diff_ids"][0]
    layers = set(os.listdir(pinnace.root / "layers"))
    assert base[7:] in layers
    # 1 shared base + 2 more layers of busybox-layers
    assert len(layers) == 3
    out = pinnace("pull", f"{REGISTRY}/fixtures/busybox-layers")
    assert "skipped: already exists" in out.err


def _stat_in_ns(pinnace, path: str) -> str:
    return pinnace("unshare", "stat", "-c", "%u:%g %a %h %i %F", path).out.strip()


def test_merged_view_of_layers_matches_fixture(pinnace):
    pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox-layers")
    mnt = pinnace("image", "mount", f"{REGISTRY}/fixtures/busybox-layers").out.strip()
    data = f"{mnt}/data"
    listing = pinnace("unshare", "ls", "-A", data).out.split()
    assert sorted(listing) == ["a.txt", "abs-link", "empty", "hardlink-to-a", "link-to-a", "owned-by-app.txt",
                               "setuid-bin", "sub", "xattr.txt"]
    assert pinnace("unshare", "ls", "-A", f"{data}/sub").out.split() == ["new.txt"]
    assert pinnace("unshare", "cat", f"{data}/a.txt", f"{data}/sub/new.txt").out == "alpha\nnew\n"
    a = _stat_in_ns(pinnace, f"{data}/a.txt").split()
    h = _stat_in_ns(pinnace, f"{data}/hardlink-to-a").split()
    assert a[3] == h[3] and a[2] == "2", (a, h)  # same inode, nlink 2
    assert _stat_in_ns(pinnace, f"{data}/setuid-bin").split()[1] == "4755"
    assert _stat_in_ns(pinnace, f"{data}/owned-by-app.txt").split()[:2] == ["1000:1000", "640"]
    assert pinnace("unshare", "readlink", f"{data}/link-to-a", f"{data}/abs-link").out.split() == ["a.txt", "/data/a.txt"]
    xattr = pinnace("unshare", "python3", "-c",
                    f"import os; print(os.getxattr('{data}/xattr.txt', 'user.pinnace').decode())").out.strip()
    assert xattr == "fixture"
    # from outside the namespace, uid 1000 is the subordinate id start + 999
    layer_dir = next(p for p in (pinnace.root / "layers").iterdir()
                     if (p / "data" / "owned-by-app.txt").exists())
    st = os.lstat(layer_dir / "data" / "owned-by-app.txt")
    if os.getuid() != 0:
        assert st.st_uid == _subuid_start() + 999
    else:
        assert st.st_uid == 1000
    # the whiteouts are overlay whiteouts (0:0 char devices), not .wh. files
    found = [os.lstat(p) for p in (pinnace.root / "layers").rglob("b.txt")]
    assert len(found) == 2  # the file in layer 2, its whiteout in layer 3
    whiteouts = [st for st in found if stat.S_ISCHR(st.st_mode)]
    assert len(whiteouts) == 1 and whiteouts[0].st_rdev == 0
    assert not list((pinnace.root / "layers").rglob(".wh.*"))
    pinnace("image", "unmount", f"{REGISTRY}/fixtures/busybox-layers")
    assert pinnace("image", "mount").out == ""


def test_pull_progress_lines_and_quiet(pinnace, fixtures_info):
    res = pinnace("pull", f"{REGISTRY}/fixtures/busybox")
    assert "Copying blob" in res.err and "Writing manifest" in res.err
    assert res.out.strip() == fixtures_info["busybox"]["config"][7:]
    res = pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox")
    assert res.err == "" and res.out.strip() == fixtures_info["busybox"]["config"][7:]


def test_info_reports_rootless_setup(pinnace):
    info = pinnace("info", "--format", "json").json()
    assert info["store"]["graphRoot"] == str(pinnace.root)
    assert info["store"]["graphDriverName"] == "overlay"
    expected_config = "/etc/pinnace" if os.getuid() == 0 else str(pinnace.home / ".config" / "pinnace")
    assert info["store"]["configDir"] == expected_config  # platformdirs, honouring XDG_CONFIG_HOME
    assert info["host"]["rootless"] == (os.getuid() != 0)
    if os.getuid() != 0:
        assert info["host"]["idMappings"]["uidmap"][1]["host_id"] == _subuid_start()
    assert pinnace("info", "--format", "{{.store.graphDriverName}}").out == "overlay\n"
    assert "kernel" in pinnace("info").out


def test_single_uid_fallback_warns_once_and_records_lost_owners(pinnace, fixtures_info):
    if os.getuid() == 0:
        pytest.fail("rootless test run as root")
    env = {"PINNACE_IGNORE_SUBUID": "1"}  # as if /etc/subuid had no range for this user
    res = pinnace("pull", f"{REGISTRY}/fixtures/busybox-layers", env=env)
    assert res.err.count("WARNING") == 1 and "/etc/subuid" in res.err
    data = pinnace("image", "inspect", f"{REGISTRY}/fixtures/busybox-layers", env=env).json()[0]
    # /home/app, /home/app/hello.txt (layer 1) and /data/owned-by-app.txt (layer 2) belonged to uid 1000
    assert data["GraphDriver"]["Data"]["LostOwners"] == 3
    res = pinnace("pull", f"{REGISTRY}/fixtures/busybox", env=env)
    assert "WARNING" not in res.err  # once per store
    mnt = pinnace("image", "mount", f"{REGISTRY}/fixtures/busybox-layers", env=env).out.strip()
    assert pinnace("unshare", "stat", "-c", "%u:%g", f"{mnt}/data/owned-by-app.txt", env=env).out.strip() == "0:0"
    mappings = pinnace("unshare", "cat", "/proc/self/uid_map", env=env).out.split()
    assert mappings == ["0", str(os.getuid()), "1"]


def test_info_explains_inaccessible_devices(pinnace, tmp_path):
    from pinnace.engine.system import device_access
    # .ci/run makes both 0666 (as normal distributions ship them): info says so
    assert pinnace("info", "--format", "json").json()["host"]["devices"] == {"/dev/fuse": "ok", "/dev/net/tun": "ok"}
    assert "modprobe" in device_access(str(tmp_path / "missing-device"))
    if os.getuid() != 0:
        private = tmp_path / "private"
        private.write_text("")
        private.chmod(0o000)
        message = device_access(str(private))
        assert "mode 0000" in message and f"sudo chmod 666 {private}" in message
