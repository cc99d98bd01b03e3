"""Volumes, binds and tmpfs for a container (engine/container_mounts.py) against a real store and image:
copy-up, :U, anonymous image volumes, and the planned mounts as a container sees them."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from nsrun import ns_user
from testenv import PINNACE_BIN

from pinnace.engine.container_mounts import copy_tree, resolve_in_root

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "mounts_driver.py"
ROOTLESS = os.getuid() != 0


@pytest.fixture(scope="module")
def image(busybox_image):
    return busybox_image


def host_id(container_id: int) -> int:
    """The host uid of a container uid (the same rule for gids: the ranges are equal here)."""
    return ns_user().subuid + container_id - 1 if ROOTLESS and container_id else \
        (os.getuid() if ROOTLESS else container_id)


def plan(image, workdir: Path, **request) -> dict:
    pinnace, lowerdir, config = image
    request.update(root=str(pinnace.root), runroot=str(pinnace.runroot), image_config=config)
    env = {**pinnace.env, "PINNACE_TEST_ROOTLESS": "1" if ROOTLESS else "0"}
    res = subprocess.run([PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot), "unshare",
                          sys.executable, str(DRIVER), lowerdir, str(workdir), json.dumps(request)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def data_dir(image, name: str) -> Path:
    return image[0].root / "volumes" / name / "_data"


def scratch(image, name: str) -> Path:
    """A host directory inside the store's tmp/ (`system reset` removes it, subuid-owned files included)."""
    path = image[0].root / "tmp" / name
    path.mkdir(parents=True)
    return path


def tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid,
                                             os.readlink(p) if stat.S_ISLNK(st.st_mode) else st.st_size)
    return out


def test_copy_up_fills_an_empty_volume_once(image, tmp_path):
    layer_etc = Path(image[1].split(":")[-1]) / "etc"
    res = plan(image, tmp_path / "c1", volumes=["etcvol:/etc"])
    assert res["volumes"] == [{"name": "etcvol", "destination": "/etc", "anonymous": False}]
    data = data_dir(image, "etcvol")
    assert res["mounts"] == [{"destination": "/etc", "type": "bind", "source": str(data), "options": ["rbind"]}]
    assert tree(data) == tree(layer_etc) and len(tree(data)) >= 3           # names, modes, owners, sizes
    assert (data / "passwd").read_bytes() == (layer_etc / "passwd").read_bytes()
    assert stat.S_IMODE(data.stat().st_mode) == stat.S_IMODE(layer_etc.stat().st_mode)

    (data / "passwd").unlink()
    (data / "marker").write_text("mine")
    plan(image, tmp_path / "c2", volumes=["etcvol:/etc:ro"])                 # not empty: left alone
    assert sorted(p.name for p in data.iterdir()) == sorted(p.name for p in layer_etc.iterdir()
                                                            if p.name != "passwd") + ["marker"]
    for p in data.iterdir():
        p.unlink()
    plan(image, tmp_path / "c3", volumes=["etcvol:/etc"])                    # empty again: Docker copies again
    assert (data / "passwd").exists() and not (data / "marker").exists()

    plan(image, tmp_path / "c4", volumes=["nocopyvol:/etc:nocopy"])
    assert list(data_dir(image, "nocopyvol").iterdir()) == []


def test_copy_up_keeps_owners_and_U_chowns(image, tmp_path):
    plan(image, tmp_path / "c1", mounts=["type=volume,source=homevol,target=/home"])
    hello = data_dir(image, "homevol") / "app" / "hello.txt"
    assert hello.read_text().strip() == "hello from app"
    assert (hello.stat().st_uid, hello.stat().st_gid) == (host_id(1000), host_id(1000))

    bind = scratch(image, "bind-u")
    (bind / "sub").mkdir()
    (bind / "sub" / "f").write_text("x")
    outside = scratch(image, "outside") / "target"
    outside.write_text("not mine to chown")
    (bind / "link").symlink_to(outside)
    res = plan(image, tmp_path / "c2", user="1234:2345", volumes=["uvol:/etc:U", f"{bind}:/b:U"])
    assert res["mounts"][0]["source"] == str(data_dir(image, "uvol"))
    for root in (data_dir(image, "uvol"), bind):
        owners = {(st.st_uid, st.st_gid) for st in [root.lstat()] + [p.lstat() for p in root.rglob("*")]}
        assert owners == {(host_id(1234), host_id(2345))}, root
    assert (outside.stat().st_uid, outside.stat().st_gid) == (os.getuid(), os.getgid())  # link not followed


def test_missing_bind_source_is_refused_before_anything_is_created(image, tmp_path):
    res = plan(image, tmp_path / "c1", volumes=["newvol:/etc", "/nonexistent-src-xyz:/x"], image_volumes=["/var"])
    assert res == {"error": "bind source path does not exist: /nonexistent-src-xyz", "kind": "InvalidArgument"}
    res = plan(image, tmp_path / "c2", mounts=["type=bind,src=./missing,dst=/x"], cwd="/some/dir")
    assert res["error"] == "bind source path does not exist: /some/dir/missing"
    assert "newvol" not in image[0]("volume", "ls", "-q").out.split()
    assert not (image[0].root / "volumes" / "newvol").exists()
    res = plan(image, tmp_path / "c3", volumes=["/a:/x", "/b:/x"])
    assert res["error"] == "duplicate mount destination /x"


def test_a_failed_plan_removes_the_anonymous_volumes_it_created(image, tmp_path):
    if ROOTLESS:
        stubborn = Path("/etc/hostname")       # root's file: unmapped in the user namespace, cannot be chowned
    else:
        stubborn = scratch(image, "immutable") / "f"
        stubborn.write_text("x")
        subprocess.run(["chattr", "+i", str(stubborn)], check=True)   # not even root may chown it
    before = set(image[0]("volume", "ls", "-q").out.split())
    try:
        res = plan(image, tmp_path / "c1", image_volumes=["/var"], volumes=[f"{stubborn}:/deep/er/f:U"])
    finally:
        if not ROOTLESS:
            subprocess.run(["chattr", "-i", str(stubborn)], check=True)
    assert res["kind"] == "StorageError" and f"cannot change the owner of {stubborn}" in res["error"]
    assert set(image[0]("volume", "ls", "-q").out.split()) == before


def test_image_volumes_become_labelled_anonymous_volumes(image, tmp_path):
    before = set(image[0]("volume", "ls", "-q").out.split())
    res = plan(image, tmp_path / "c1", volumes=["named1:/etc"], tmpfs=["/tmp"], image_volumes=["/etc", "/var", "/tmp/"])
    anonymous = [v for v in res["volumes"] if v["anonymous"]]
    assert [v["destination"] for v in anonymous] == ["/var"]   # /etc and /tmp are covered by flags
    name = anonymous[0]["name"]
    assert re.fullmatch(r"[0-9a-f]{64}", name)
    assert res["labels"] == {"named1": {}, name: {"io.pinnace.anonymous": "true"}}
    assert set(image[0]("volume", "ls", "-q").out.split()) - before == {"named1", name}
    inspect = image[0]("volume", "inspect", name).json()[0]
    assert inspect["Labels"] == {"io.pinnace.anonymous": "true"}
    assert [m["destination"] for m in res["mounts"]] == ["/etc", "/tmp", "/var"]
    assert res["mounts"][1] == {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                                "options": ["noexec", "nosuid", "nodev"]}


def test_the_container_sees_the_planned_mounts(image, tmp_path):
    src = scratch(image, "ro-src")
    (src / "f").write_text("from the host\n")
    single = scratch(image, "single") / "config.txt"
    single.write_text("one file\n")
    script = ("cat /ro/f; touch /ro/new 2>/dev/null && echo RO-WRITABLE; cat /cfg/config.txt;"
              " echo written > /vol/out; grep ' /t ' /proc/mounts; grep ' /sized ' /proc/mounts;"
              " touch /t/x && echo TMPFS-OK")
    res = plan(image, tmp_path / "c1", volumes=[f"{src}:/ro:ro", "runvol:/vol", f"{single}:/cfg/config.txt:ro"],
               tmpfs=["/t"], mounts=["type=tmpfs,target=/sized,tmpfs-size=1m,tmpfs-mode=700"],
               run=["sh", "-c", script])
    out = res["output"]
    assert res["exit"] == 0, out
    assert "from the host" in out and "one file" in out and "TMPFS-OK" in out
    assert "RO-WRITABLE" not in out
    assert (data_dir(image, "runvol") / "out").read_text() == "written\n"
    t_opts = next(l for l in out.splitlines() if " /t " in l).split()[3].split(",")
    assert {"nosuid", "nodev", "noexec"} <= set(t_opts)
    sized = next(l for l in out.splitlines() if " /sized " in l).split()[3].split(",")
    assert "size=1024k" in sized and "mode=700" in sized


def test_copy_tree_preserves_what_a_volume_needs(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "ro-dir").mkdir(parents=True)
    (src / "ro-dir" / "f").write_bytes(b"data" * 5000)
    os.chmod(src / "ro-dir" / "f", 0o4750)
    os.link(src / "ro-dir" / "f", src / "hard")
    (src / "abs-link").symlink_to("/etc/passwd")                    # copied as a link, never followed
    os.mkfifo(src / "fifo", 0o640)
    os.setxattr(src / "hard", "user.note", b"kept")
    os.utime(src / "ro-dir" / "f", ns=(10**18, 10**18))
    os.chmod(src / "ro-dir", 0o555)
    dst.mkdir()
    copy_tree(str(src), str(dst))
    assert tree(dst) == tree(src)
    assert os.stat(dst / "hard").st_ino == os.stat(dst / "ro-dir" / "f").st_ino
    assert os.getxattr(dst / "hard", "user.note") == b"kept"
    assert os.stat(dst / "ro-dir" / "f").st_mtime_ns == 10**18
    assert (dst / "ro-dir" / "f").read_bytes() == b"data" * 5000
    os.chmod(src / "ro-dir", 0o755)
    os.chmod(dst / "ro-dir", 0o755)


def test_resolve_in_root_follows_links_inside_the_root_only(tmp_path):
    (tmp_path / "run" / "lock").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "run").symlink_to("/run")                  # absolute: relative to the root
    (tmp_path / "up").symlink_to("../../../..")                    # cannot climb out
    (tmp_path / "loop").symlink_to("loop")
    assert resolve_in_root(str(tmp_path), "/var/run/lock") == str(tmp_path / "run" / "lock")
    assert resolve_in_root(str(tmp_path), "/up/run") == str(tmp_path / "run")
    assert resolve_in_root(str(tmp_path), "/loop/x") is None
    assert resolve_in_root(str(tmp_path), "/missing/x") is None
