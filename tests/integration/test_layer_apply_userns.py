"""The busybox-layers fixture applied layer by layer inside the holder's user namespace, then stacked
with the kernel's overlayfs (`userxattr`) in the holder's mount namespace: the merged /data must be
exactly what the fixture README lists (what podman/containers-storage produces)."""
from __future__ import annotations

import json
import os

import pytest
import tarbuild as tb
from nsrun import NsArea

APPLY_AND_MOUNT = """
import stat
from pinnace.runtime import syscalls
from pinnace.storage.compression import HashingReader, open_decompressed
from pinnace.storage.layer_apply import apply_layer

info = userns.ensure_joined(RUNROOT)
blobs = json.loads(ARGS[0])
layers, diff_ids = [], []
for i, blob in enumerate(blobs, 1):
    d = BASE / f"l{i}"
    d.mkdir()
    with open(blob, "rb") as f:
        hashing = HashingReader(open_decompressed(f, "gzip"))
        report = apply_layer(hashing, d)
    assert report.lost_owners == 0 and report.skipped_devices == (), report
    layers.append(str(d))
    diff_ids.append(hashing.digest())
merged = BASE / "merged"
merged.mkdir()
syscalls.mount("overlay", merged, "overlay", 0, "lowerdir=" + ":".join(reversed(layers)) + ",userxattr")
entries = {}
for dirpath, dirnames, filenames in os.walk(merged / "data"):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        e = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "ino": st.st_ino,
             "nlink": st.st_nlink}
        if stat.S_ISLNK(st.st_mode):
            e["link"] = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            e["content"] = open(p, "rb").read().decode(errors="replace")
            e["xattrs"] = {k: os.getxattr(p, k).decode() for k in os.listxattr(p)}
        entries["/" + os.path.relpath(p, merged)] = e
busybox = os.lstat(merged / "bin/busybox")
home = os.lstat(merged / "home/app/hello.txt")
out = {"entries": entries, "diff_ids": diff_ids, "root_entries": sorted(os.listdir(merged)),
       "busybox": [oct(busybox.st_mode), busybox.st_uid], "hello": [home.st_uid, home.st_gid],
       "sh": os.readlink(merged / "bin/sh")}
syscalls.umount2(merged, syscalls.MNT_DETACH)
print(json.dumps(out))
"""


@pytest.fixture
def ns(tmp_path):
    area = NsArea(tmp_path)
    yield area
    area.cleanup()


def test_busybox_layers_merge_like_podman(ns: NsArea, fixtures_info: dict):
    image = fixtures_info["busybox-layers"]
    blobs = [str(tb.fixture_blob(layer["digest"])) for layer in image["layers"]]
    res = json.loads(ns.run(APPLY_AND_MOUNT, json.dumps(blobs), timeout=120).stdout)
    assert res["diff_ids"] == image["diff_ids"]
    e = res["entries"]

    assert sorted(e) == [
        "/data/a.txt", "/data/abs-link", "/data/empty", "/data/hardlink-to-a", "/data/link-to-a",
        "/data/owned-by-app.txt", "/data/setuid-bin", "/data/sub", "/data/sub/new.txt", "/data/xattr.txt",
    ]  # no b.txt, gone/, sub/old-*, and no .wh.* entry shows through
    assert e["/data/a.txt"]["content"] == "alpha\n" and e["/data/a.txt"]["mode"] == oct(0o100644)
    assert e["/data/hardlink-to-a"]["ino"] == e["/data/a.txt"]["ino"]
    assert e["/data/a.txt"]["nlink"] == 2
    assert e["/data/link-to-a"]["link"] == "a.txt"
    assert e["/data/abs-link"]["link"] == "/data/a.txt"
    assert e["/data/setuid-bin"]["mode"] == oct(0o104755) and e["/data/setuid-bin"]["uid"] == 0
    assert e["/data/xattr.txt"]["xattrs"] == {"user.pinnace": "fixture"}
    assert e["/data/owned-by-app.txt"]["mode"] == oct(0o100640)
    assert (e["/data/owned-by-app.txt"]["uid"], e["/data/owned-by-app.txt"]["gid"]) == (1000, 1000)
    assert e["/data/empty"]["mode"] == oct(0o40755) and e["/data/sub"]["mode"] == oct(0o40755)
    assert e["/data/sub/new.txt"]["content"] == "new\n"
    assert all((v["uid"], v["gid"]) == (0, 0) for k, v in e.items() if k != "/data/owned-by-app.txt")

    # the rest of the rootfs is the busybox layer unchanged
    assert res["busybox"] == [oct(0o100755), 0] and res["sh"] == "/bin/busybox"
    assert res["hello"] == [1000, 1000]
    assert "data" in res["root_entries"] and "home" in res["root_entries"]

    # seen from the host: container uid 1000 is subuid+999; the merged mount never left the namespace
    st = os.stat(ns.base / "l2/data/owned-by-app.txt")
    assert (st.st_uid, st.st_gid) == (ns.user.subuid + 999, ns.user.subgid + 999)
    st = os.stat(ns.base / "l2/data/a.txt")
    assert (st.st_uid, st.st_gid) == (ns.user.uid, ns.user.gid)
    assert os.listdir(ns.base / "merged") == []
    wh = os.lstat(ns.base / "l3/data/b.txt")
    assert wh.st_rdev == 0 and (wh.st_mode & 0o170000) == 0o020000
