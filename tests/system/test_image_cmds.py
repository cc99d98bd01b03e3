"""Local image management: tag, untag, rmi, prune, history, system df/check/reset."""
from __future__ import annotations

import os

from testenv import REGISTRY

BUSYBOX = f"{REGISTRY}/fixtures/busybox:latest"
LAYERS = f"{REGISTRY}/fixtures/busybox-layers:latest"


def test_tag_untag_and_short_names(pinnace, fixtures_info):
    iid = pinnace("pull", "-q", BUSYBOX).out.strip()
    pinnace("tag", BUSYBOX, "mybox", "example.com/team/box:v1")
    names = pinnace("image", "inspect", "mybox").json()[0]["RepoTags"]
    assert sorted(names) == sorted([BUSYBOX, "docker.io/library/mybox:latest", "example.com/team/box:v1"])
    # short name, full name and ID prefix all find the same image
    for ref in ("mybox", "docker.io/library/mybox", iid[:8], "sha256:" + iid):
        assert pinnace("image", "inspect", "--format", "{{.Id}}", ref).out.strip() == "sha256:" + iid
    pinnace("untag", "mybox", "docker.io/library/mybox:latest")
    assert pinnace("image", "inspect", "mybox", check=False).rc == 125
    pinnace("untag", iid)
    # like Podman: an untagged image still shows the repository it was pulled from
    assert pinnace("images", "--format", "{{.Repository}}:{{.Tag}}").out == f"{REGISTRY}/fixtures/busybox:<none>\n"
    assert pinnace("images", "-q", "--filter", "dangling=true").out.strip() == iid[:12]
    bad = pinnace("tag", iid, "team/UpperCase", check=False)
    assert bad.rc == 125 and "Error:" in bad.err and "Traceback" not in bad.err


def test_rmi_semantics_and_exit_codes(pinnace, fixtures_info):
    iid = pinnace("pull", "-q", BUSYBOX).out.strip()
    pinnace("tag", BUSYBOX, "second:tag")
    # by ID with two names: refused unless forced (podman exit code 2 = conflict)
    res = pinnace("rmi", iid[:12], check=False)
    assert res.rc == 2 and "must force" in res.err
    # by name: only that name goes
    res = pinnace("rmi", "second:tag")
    assert "Untagged: docker.io/library/second:tag" in res.out and "Deleted" not in res.out
    res = pinnace("rmi", "nosuch:image", check=False)
    assert res.rc == 1 and "no such image" in res.err
    res = pinnace("rmi", BUSYBOX)
    assert f"Deleted: {iid}" in res.out
    assert pinnace("images", "-q").out == ""
    # unreferenced layers and blobs went with it
    assert os.listdir(pinnace.root / "layers") == []
    assert os.listdir(pinnace.root / "blobs" / "sha256") == []


def test_rmi_keeps_layers_other_images_use(pinnace, fixtures_info):
    pinnace("pull", "-q", BUSYBOX)
    pinnace("pull", "-q", LAYERS)
    pinnace("rmi", LAYERS)
    base = fixtures_info["busybox"]["diff_ids"][0]
    assert os.listdir(pinnace.root / "layers") == [base[7:]]
    assert pinnace("system", "check").rc == 0
    pinnace("image", "mount", BUSYBOX)  # still usable


def test_prune_and_history(pinnace, fixtures_info):
    pinnace("pull", "-q", LAYERS)
    hist = pinnace("history", LAYERS).out.splitlines()
    assert hist[0].split()[:2] == ["ID", "CREATED"]
    assert len(hist) == 1 + 6  # six history entries, newest first
    assert hist[1].startswith(fixtures_info["busybox-layers"]["config"][7:19])
    js = pinnace("history", "--format", "json", LAYERS).json()
    assert sum(1 for e in js if e["Size"] > 0) == 3
    assert pinnace("image", "prune", "-f").out == ""  # nothing dangling
    pinnace("untag", LAYERS)
    pruned = pinnace("image", "prune", "-f").out.split()
    assert pruned == [fixtures_info["busybox-layers"]["config"][7:]]
    assert pinnace("images", "-q").out == ""


def test_system_df_check_reset(pinnace, fixtures_info):
    pinnace("pull", "-q", BUSYBOX)
    df = pinnace("system", "df", "--format", "json").json()
    images = next(r for r in df if r["Type"] == "Images")
    assert images["Total"] == 1 and images["Size"] == fixtures_info["busybox"]["uncompressed_size"]
    assert "ok" in pinnace("system", "check").out
    res = pinnace("system", "reset", check=False)  # no terminal and no --force: refuses
    assert res.rc == 125 and "--force" in res.err
    pinnace("system", "reset", "--force")
    assert pinnace("images", "-q").out == ""
    assert not (pinnace.root / "layers").exists()


def test_rmi_refuses_an_image_a_container_uses(pinnace, fixtures_info):
    import sqlite3
    iid = pinnace("pull", "-q", BUSYBOX).out.strip()
    # Containers arrive with the container engine; until then the row it will write is inserted directly
    # (the same table and columns the engine's state database defines).
    with sqlite3.connect(pinnace.root / "state.db") as db:
        db.execute("INSERT INTO containers (id, name, image_id) VALUES ('c1', 'web', ?)", ("sha256:" + iid,))
    res = pinnace("rmi", BUSYBOX, check=False)
    assert res.rc == 2 and "in use by container(s) web" in res.err
    assert pinnace("images", "--format", "{{.Containers}}").out == "1\n"
    assert pinnace("image", "prune", "-a", "-f").out == ""  # in use: not pruned
    res = pinnace("rmi", "-f", BUSYBOX)
    assert f"Deleted: {iid}" in res.out


def test_refuses_a_runroot_another_user_owns(pinnace, tmp_path):
    if os.getuid() == 0:
        raise AssertionError("rootless test run as root")
    # e.g. /tmp/pinnace-run-UID made in advance by someone else: /tmp (root's) stands in for it
    import subprocess
    from testenv import PINNACE_BIN
    res = subprocess.run([PINNACE_BIN, "--root", str(pinnace.root), "--runroot", "/tmp", "pull", "-q", BUSYBOX],
                         capture_output=True, text=True, env=pinnace.env)
    assert res.returncode == 125 and "not a directory owned by you" in res.stderr
