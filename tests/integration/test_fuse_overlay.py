"""The FUSE overlay (storage/fuse_overlay.py) against real layer trees, and the same behaviour table on the
kernel's overlayfs over identical layers: the upper directories must come out the same (names, types,
modes, owners, xattrs, whiteouts), so a layer and a container's upper serve both drivers.

The driver (tests/support/fuse_overlay_driver.py) runs as root in the user namespace through `pinnace
unshare` (rootless: user.overlay.* xattrs, overlayfs with `userxattr`) or as real root (trusted.overlay.*),
in a private mount namespace of its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testenv import PINNACE_BIN

from pinnace.storage import fuse_overlay

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "fuse_overlay_driver.py"
S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFIFO = 0o100000, 0o040000, 0o120000, 0o020000, 0o010000
MTIME = 1_000_000_000_123_456_789

# what a process in the container sees, operation by operation (the driver's `table`)
EXPECTED = {
    "lookup_top": "A2",  # the topmost layer's file
    "whiteout_hides": False,
    "opaque_dir": ["new"],  # the opaque directory stops the lower layer's "old"
    "merged_dir": ["from1", "from2"],
    "root": ["bin", "emptydir", "evil", "file_a", "hl_src", "merge", "mvdir", "mvfile", "opq", "owned1000",
             "plain", "pub", "sparse", "trunc", "xattrs"],
    "evil_link": "/etc",
    "evil_below": "ok",  # the kernel follows the link inside the mount: /etc/passwd of the caller
    "append": "1+more",
    "chmod": ["0o700", True, "v"],  # copy-up keeps mtime and xattrs
    "ino_stable_after_copy_up": True,
    "chown": [1000, 1001],
    "suid": "0o4750",
    "utimens": [MTIME, MTIME + 5],
    "xattrs": ["user.b", "user.c"],
    "xattr_missing": "ENODATA",
    "private_xattr_listed": [],
    "private_xattr_set": "ok",  # stored escaped (<prefix>overlay.opaque), as overlayfs does
    "o_trunc": "",
    "unlink_lower": ["from1"],
    "rmdir_lower": False,
    "rmdir_notempty": "ENOTEMPTY",
    "mkdir_over_whiteout": [],
    "mkdir_over_lower_whiteout": [],
    "recreate": "ok",
    "rename_file": ["moving", False],
    "rename_lower_dir": "EXDEV",  # overlayfs without redirect_dir; `mv` copies instead
    "move_lower_dir": ["deep", False, "0o750"],
    "rename_upper_dir": ["inner"],
    "rename_over_dir": ["moved"],
    "hardlink": [True, 2, 2],  # same st_ino, st_nlink 2 under both names
    "hardlink_shared_data": "hardlink!",
    "symlink": ["file_a", True, "A2"],
    "fifo": True,
    "statfs": [True, True, 255],  # the upper's filesystem
    "large": [100 << 20, True],
    "sparse_new": [(50 << 20) + 3, True],
    "sparse_copy_up": [(64 << 20) + 4, "middle", True],  # copy-up keeps the holes
    "truncate": 10,
    "uid1000_create": "ok",
    "uid1000_owner": [1000, 1000, 1000, 1000, "0o644"],
    "uid1000_denied_write": "EACCES",  # default_permissions: the kernel checks modes
    "uid1000_denied_read": "m",
    "uid1000_own_file": "A2",
    "setgid_create": "ok",
    "setgid_inherit": [1234, 1234, True],
    "access_x": "False",
    "access_r": "True",
    "unlinked": [False, False],
}
# overlayfs without `index` may give two names of a hard-linked copied-up file different inode numbers
# (it does with userxattr): the FUSE overlay keeps one number per file, as asked of it
KERNEL_MAY_DIFFER = {"hardlink"}


def run_driver(pinnace, mode: str, base: Path) -> dict:
    res = subprocess.run([PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot), "unshare",
                          sys.executable, str(DRIVER), mode, str(base)],
                         capture_output=True, text=True, env=pinnace.env, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "error" not in out, out.get("trace")
    return out


def remove_trees(pinnace, trees: Path) -> None:
    # files owned by mapped ids (1000 in the namespace) can be removed only inside it
    subprocess.run([PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot), "unshare", "rm",
                    "-rf", str(trees)], env=pinnace.env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def table(module_pinnace, tmp_path_factory) -> dict:
    trees = tmp_path_factory.mktemp("fuse-overlay") / "trees"
    try:
        yield run_driver(module_pinnace, "table", trees)
    finally:
        remove_trees(module_pinnace, trees)


def test_fuse_is_usable_here():
    assert fuse_overlay.check_fuse_available() is None


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_behaviour(table, key):
    assert table["fuse"]["obs"][key] == EXPECTED[key]


def test_daemon_exits_cleanly_on_unmount(table):
    assert table["fuse"]["daemon_exit"] == 0


def test_kernel_overlay_behaves_the_same(table):
    fuse, kernel = table["fuse"]["obs"], table["kernel"]["obs"]
    differ = {k: (fuse[k], kernel.get(k)) for k in fuse if fuse[k] != kernel.get(k) and k not in KERNEL_MAY_DIFFER}
    assert differ == {}


def test_upper_tree_is_the_kernels(table):
    fuse, kernel = table["fuse"]["upper"], table["kernel"]["upper"]
    assert sorted(fuse) == sorted(kernel)
    assert {p: (fuse[p], kernel[p]) for p in fuse if fuse[p] != kernel[p]} == {}


def test_upper_tree_format(table):
    up = table["fuse"]["upper"]
    prefix = "user.overlay." if table["rootless"] else "trusted.overlay."
    whiteout = {"type": S_IFCHR, "mode": "0o0", "owner": [0, 0], "rdev": 0, "xattrs": {}}
    for name in ("plain", "xattrs", "emptydir", "mvdir", "mvfile"):
        assert up[name] == whiteout, name
    assert up["merge"]["xattrs"] == {prefix + "opaque": "y"}  # mkdir over a whiteout
    assert up["whited"]["xattrs"] == {}  # the whiteout was below: nothing to hide in the upper
    assert up["opq/newdir"]["xattrs"] == {prefix + "opaque": "y"}  # moved into a merged directory
    assert up["bin"]["type"] == S_IFDIR and up["bin"]["mode"] == "0o755"  # parent copied up with its mode
    assert up["bin/tool"] == {"type": S_IFREG, "mode": "0o700", "owner": [0, 0], "size": 10, "data": "#!/bin/sh\n",
                              "xattrs": {"user.test": "v"}}
    assert up["bin/suid"]["mode"] == "0o4750"
    assert up["file_a"]["owner"] == [1000, 1001]
    assert up["file_a"]["xattrs"] == {prefix + "overlay.opaque": "y"}  # escaped, not a real opaque flag
    assert up["pub/mine"]["owner"] == [1000, 1000] and up["pub/mydir"]["owner"] == [1000, 1000]
    assert up["sgid/d"]["mode"] == "0o2755" and up["sgid/f"]["owner"] == [1000, 1234]
    assert up["sym"] == {"type": S_IFLNK, "mode": "0o777", "owner": [0, 0], "target": "file_a", "xattrs": {}}
    assert up["fifo"]["type"] == S_IFIFO and up["fifo"]["mode"] == "0o640"
    assert up["mvdir2/sub/f"]["xattrs"] == {"user.deep": "1"} and up["mvdir2/sub/f"]["mode"] == "0o640"
    assert "owned1000" in up and up["owned1000"]["type"] == S_IFREG  # recreated over its whiteout
    assert not any(name.startswith("#fuse-overlay") for name in up)


def test_killed_daemon_gives_enotconn_and_unmounts_sigterm_unmounts(pinnace, tmp_path):
    try:
        out = run_driver(pinnace, "crash", tmp_path / "trees")
    finally:
        remove_trees(pinnace, tmp_path / "trees")
    assert out == {"before": "A2", "after_kill": "ENOTCONN", "mounted_after_umount": False, "layer_intact": "A2",
                   "sigterm_exit": 0, "mounted_after_sigterm": False}


def test_failed_mount_reports_one_error_line(tmp_path):
    (tmp_path / "low").mkdir()
    r, w = os.pipe()
    proc = subprocess.run([sys.executable, "-m", "pinnace.storage.fuse_overlay", "--ready-fd", str(w),
                           "--upper", str(tmp_path / "up"), "--work", str(tmp_path / "work"),
                           "--lower", str(tmp_path / "low"), str(tmp_path / "mnt")],
                          pass_fds=[w], capture_output=True, text=True, timeout=60)
    os.close(w)
    line = os.read(r, 4096).decode()
    os.close(r)
    assert proc.returncode == 1
    assert line.startswith("error: cannot serve the overlay at ") and line.endswith("\n") and line.count("\n") == 1
    assert str(tmp_path / "up") in line or str(tmp_path / "mnt") in line
