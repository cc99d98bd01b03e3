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
    # like Podman: untag without names removes every name, repo digests too: the image is dangling
    assert pinnace("images", "--format", "{{.Repository}}:{{.Tag}}").out == "<none>:<none>\n"
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
    res = pinnace("image", "prune", check=False)  # no terminal, no --force: refuses, removes nothing
    assert res.rc == 125 and "--force" in res.err
    # an image pulled by digest is named by it: not dangling, not pruned
    digest = fixtures_info["busybox"]["digest"]
    pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox@{digest}")
    assert pinnace("images", "-q", "--filter", "dangling=true").out == ""
    assert pinnace("image", "prune", "-f").out == ""
    pinnace("rmi", f"{REGISTRY}/fixtures/busybox@{digest}")
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
    # like Docker, --force only untags an image a container uses: its layers stay
    res = pinnace("rmi", "-f", BUSYBOX)
    assert f"Untagged: {BUSYBOX}" in res.out and "Deleted" not in res.out
    assert pinnace("images", "-q").out.strip() == iid[:12]
    assert pinnace("system", "check").rc == 0


def test_refuses_a_runroot_another_user_owns(pinnace, tmp_path):
    if os.getuid() == 0:
        raise AssertionError("rootless test run as root")
    # e.g. /tmp/pinnace-run-UID made in advance by someone else: /tmp (root's) stands in for it
    import subprocess
    from testenv import PINNACE_BIN
    res = subprocess.run([PINNACE_BIN, "--root", str(pinnace.root), "--runroot", "/tmp", "pull", "-q", BUSYBOX],
                         capture_output=True, text=True, env=pinnace.env)
    assert res.returncode == 125 and "not a directory owned by you" in res.stderr


def test_reset_and_store_dirs_leave_foreign_files_alone(pinnace, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    (shared / "keep.txt").write_text("not pinnace's\n")
    os.chmod(shared, 0o755)
    import subprocess
    from testenv import PINNACE_BIN
    base = [PINNACE_BIN, "--root", str(shared), "--runroot", str(pinnace.runroot)]
    assert subprocess.run(base + ["pull", "-q", BUSYBOX], capture_output=True, env=pinnace.env).returncode == 0
    assert os.stat(shared).st_mode & 0o777 == 0o755  # an existing directory keeps its mode
    assert subprocess.run(base + ["system", "reset", "-f"], capture_output=True, env=pinnace.env).returncode == 0
    assert sorted(os.listdir(shared)) == ["keep.txt"]


def test_mounted_image_is_not_removed_unless_forced(pinnace):
    iid = pinnace("pull", "-q", LAYERS).out.strip()
    mnt = pinnace("image", "mount", LAYERS).out.strip()
    res = pinnace("rmi", LAYERS, check=False)
    assert res.rc == 2 and "mounted" in res.err
    assert pinnace("image", "prune", "-a", "-f").out == ""  # mounted means in use
    res = pinnace("rmi", "-f", LAYERS)
    assert f"Deleted: {iid}" in res.out
    assert pinnace("unshare", "sh", "-c", f"grep -c ' {mnt} ' /proc/self/mountinfo || true").out.strip() == "0"


def test_tag_and_digest_together(pinnace, fixtures_info):
    digest = fixtures_info["busybox"]["digest"]
    iid = pinnace("pull", "-q", f"{REGISTRY}/fixtures/busybox:latest@{digest}").out.strip()
    data = pinnace("image", "inspect", iid).json()[0]
    assert data["RepoTags"] == []  # the digest decides, as with Docker and Podman
    assert f"{REGISTRY}/fixtures/busybox@{digest}" in data["RepoDigests"]
    res = pinnace("tag", iid, f"mine:1@{digest}", check=False)
    assert res.rc == 125 and "digest" in res.err


def test_images_takes_a_repository_argument(pinnace):
    pinnace("pull", "-q", BUSYBOX)
    pinnace("pull", "-q", LAYERS)
    fast = pinnace("images", "--format", "{{.Repository}}", f"{REGISTRY}/fixtures/busybox").out
    assert fast == f"{REGISTRY}/fixtures/busybox\n"
    # --log-level is not taken by the fast path: this runs through typer
    typer_path = pinnace("--log-level", "warn", "image", "ls", "--format={{.Repository}}", "*layers*").out
    assert typer_path == f"{REGISTRY}/fixtures/busybox-layers\n"


def test_inspect_shows_what_it_found(pinnace):
    pinnace("pull", "-q", BUSYBOX)
    res = pinnace("image", "inspect", BUSYBOX, "nosuch:1", check=False)
    assert res.rc == 125 and "nosuch" in res.err
    assert len(res.json()) == 1
    assert pinnace("image", "inspect", "--format", "{{.Config.Labels.nosuch}}", BUSYBOX).out == "<no value>\n"
    bad = pinnace("image", "inspect", "--format", "{{.Id", BUSYBOX, check=False)
    assert bad.rc == 125 and "unclosed" in bad.err
