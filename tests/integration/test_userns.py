"""The per-user namespace holder, driven as the unprivileged test user through fresh subprocesses
(setns needs a single-threaded process and changes it for good). Passes as root too: then the programs
run as the test user."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tarbuild as tb
from nsrun import NsArea, alive

JOIN_REPORT = """
info = userns.ensure_joined(RUNROOT)
print(json.dumps({"holder": info.holder_pid, "rootless": info.rootless, "single": info.single_mapping,
                  "uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
                  "userns": os.readlink("/proc/self/ns/user"), "mntns": os.readlink("/proc/self/ns/mnt"),
                  "uid_map": [l.split() for l in open("/proc/self/uid_map")],
                  "gid_map": [l.split() for l in open("/proc/self/gid_map")],
                  "cwd": os.getcwd()}))
"""


@pytest.fixture
def ns(tmp_path):
    area = NsArea(tmp_path)
    yield area
    area.cleanup()


def join(ns: NsArea, **kw) -> dict:
    return json.loads(ns.run(JOIN_REPORT, **kw).stdout)


def test_concurrent_joiners_start_exactly_one_holder(ns: NsArea):
    procs = [ns.popen(JOIN_REPORT) for _ in range(8)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
        results.append(json.loads(out))
    holder = ns.holder_pid()
    assert {r["holder"] for r in results} == {holder}
    assert len({r["userns"] for r in results}) == 1 and len({r["mntns"] for r in results}) == 1
    assert os.readlink(f"/proc/{holder}/ns/user") == results[0]["userns"]
    assert os.readlink(f"/proc/{holder}/ns/user") != os.readlink("/proc/self/ns/user")
    with open(f"/proc/{holder}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0] == b"pinnace-holder"  # an exec'd sleep(1): ~1 MB instead of the CLI's heap
    with open(f"/proc/{holder}/status") as f:
        rss_kb = int(next(l for l in f if l.startswith("VmRSS:")).split()[1])
    assert rss_kb < 4096
    # the holder is a daemon: its own session, no stdio pipes of the CLI that started it
    assert os.getsid(holder) != os.getsid(0)
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{holder}/fd/{fd}") == "/dev/null"
    assert sorted(os.listdir(f"/proc/{holder}/fd")) == ["0", "1", "2"]


def test_join_gives_root_with_the_subuid_mapping(ns: NsArea):
    u = ns.user
    r = join(ns)
    assert (r["uid"], r["gid"], r["euid"], r["rootless"], r["single"]) == (0, 0, 0, True, False)
    assert r["uid_map"] == [["0", str(u.uid), "1"], ["1", str(u.subuid), str(u.count)]]
    assert r["gid_map"][0] == ["0", str(u.gid), "1"] and r["gid_map"][1][1] == str(u.subgid)
    assert r["cwd"] == str(ns.base)  # joining the mount namespace must not leave us in /


def test_ownership_inside_maps_to_subuids_outside(ns: NsArea):
    ns.run("""
        info = userns.ensure_joined(RUNROOT)
        again = userns.ensure_joined(RUNROOT)  # already inside: idempotent
        assert again.holder_pid == info.holder_pid and again.mappings == info.mappings
        assert info.mappings.host_uid(1000) == info.mappings.uids[1].host_id + 999
        (BASE / "app").write_text("x")
        os.chown(BASE / "app", 1000, 1000)
        (BASE / "mine").write_text("x")
        os.mknod(BASE / "wh", 0o20000, 0)  # overlay whiteout: allowed in the namespace
        os.setxattr(BASE / "mine", "user.k", b"v")
    """)
    u = ns.user
    st = os.stat(ns.base / "app")
    assert (st.st_uid, st.st_gid) == (u.subuid + 999, u.subgid + 999)
    st = os.stat(ns.base / "mine")
    assert (st.st_uid, st.st_gid) == (u.uid, u.gid)
    assert os.lstat(ns.base / "wh").st_rdev == 0


def test_holder_and_its_mounts_outlive_the_joiner(ns: NsArea):
    first = ns.run("""
        from pinnace.runtime import syscalls
        info = userns.ensure_joined(RUNROOT)
        (BASE / "mnt").mkdir()
        syscalls.mount("tmpfs", BASE / "mnt", "tmpfs", 0, "size=1m")
        (BASE / "mnt" / "hello").write_text("from the first joiner")
        print(info.holder_pid)
    """)
    holder = int(first.stdout)
    assert alive(holder)
    assert os.listdir(ns.base / "mnt") == []  # the mount stays in the holder's namespace
    second = ns.run("""
        from pinnace.runtime import syscalls
        info = userns.ensure_joined(RUNROOT)
        print(info.holder_pid, (BASE / "mnt" / "hello").read_text())
        syscalls.umount2(BASE / "mnt", syscalls.MNT_DETACH)
    """)
    assert second.stdout.split(maxsplit=1) == [str(holder), "from the first joiner\n"]


def test_stale_pidfile_starts_a_new_holder(ns: NsArea):
    old = join(ns)["holder"]
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(old) and time.monotonic() < deadline:
        time.sleep(0.01)
    new = join(ns)["holder"]
    assert new != old and alive(new) and ns.holder_pid() == new


def test_pidfile_of_an_unrelated_process_is_not_trusted(ns: NsArea):
    ns.runroot.mkdir()
    if ns.as_root:
        os.chown(ns.runroot, ns.user.uid, ns.user.gid)
    sleeper = ns.popen("import time; time.sleep(120)")
    try:
        time.sleep(0.2)
        with open(f"/proc/{sleeper.pid}/stat", "rb") as f:
            start = f.read().rsplit(b")", 1)[1].split()[19].decode()
        for content in (f"{sleeper.pid} {start}\n", f"{sleeper.pid} 1\n", "garbage\n"):
            (ns.runroot / "holder.pid").write_text(content)
            if ns.as_root:
                os.chown(ns.runroot / "holder.pid", ns.user.uid, ns.user.gid)
            r = join(ns)
            assert r["holder"] != sleeper.pid and r["uid"] == 0
            assert ns.holder_pid() == r["holder"]
            ns.run("userns.stop_holder(RUNROOT)")
        assert sleeper.poll() is None  # never signalled
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stop_holder(ns: NsArea):
    holder = join(ns)["holder"]
    assert ns.run("print(userns.stop_holder(RUNROOT))").stdout == "True\n"
    assert not alive(holder) and not (ns.runroot / "holder.pid").exists()
    assert ns.run("print(userns.stop_holder(RUNROOT))").stdout == "False\n"


def test_single_mapping_fallback(ns: NsArea):
    (ns.base / "layer.tar").write_bytes(tb.build(tb.file("app", b"a", uid=1000, gid=1000),
                                                 tb.file("root", b"r", mode=0o4755)))
    if ns.as_root:
        os.chown(ns.base / "layer.tar", ns.user.uid, ns.user.gid)
    out = ns.run("""
        from pinnace.storage.layer_apply import apply_layer
        info = userns.ensure_joined(RUNROOT)
        (BASE / "layer").mkdir()
        with open(BASE / "layer.tar", "rb") as f:
            report = apply_layer(f, BASE / "layer")
        print(json.dumps({"single": info.single_mapping, "lost": report.lost_owners,
                          "uid_map": [l.split() for l in open("/proc/self/uid_map")],
                          "setgroups": open("/proc/self/setgroups").read().strip()}))
    """, env={"PINNACE_IGNORE_SUBUID": "1"})
    r = json.loads(out.stdout)
    assert r == {"single": True, "lost": 1, "uid_map": [["0", str(ns.user.uid), "1"]], "setgroups": "deny"}
    for name in ("app", "root"):
        st = os.stat(ns.base / "layer" / name)
        assert (st.st_uid, st.st_gid) == (ns.user.uid, ns.user.gid)
    assert os.stat(ns.base / "layer/root").st_mode & 0o7777 == 0o4755  # owner 0 was mapped


def test_newuidmap_failure_is_explained(ns: NsArea):
    fake = ns.base / "bin"
    fake.mkdir()
    (fake / "newuidmap").write_text(f"#!/bin/sh\necho $1 > {ns.base}/pid\n"
                                    "echo 'newuidmap: uid range [1-65537) -> [100000-165536) not allowed' >&2\n"
                                    "exit 1\n")
    os.chmod(fake / "newuidmap", 0o755)
    out = ns.run("""
        from pinnace.errors import NamespaceError
        try:
            userns.ensure_joined(RUNROOT)
        except NamespaceError as e:
            print(e)
    """, env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert out.stdout.startswith("newuidmap failed: newuidmap: uid range [1-65537) -> [100000-165536) "
                                 "not allowed (check that /etc/subuid has a range for")
    assert out.stdout.count("\n") == 1
    assert not (ns.runroot / "holder.pid").exists()
    half_started = int((ns.base / "pid").read_text())
    deadline = time.monotonic() + 5
    while alive(half_started) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(half_started)


def test_unshare_runs_a_command_inside(ns: NsArea):
    out = ns.run('userns.exec_in_namespace(RUNROOT, ["sh", "-c", "id -u; cat /proc/self/uid_map | wc -l"])')
    assert out.stdout.split() == ["0", "2"]
    missing = ns.run("""
        from pinnace.errors import CommandNotFound
        try:
            userns.exec_in_namespace(RUNROOT, ["no-such-command-pinnace"])
        except CommandNotFound as e:
            print(e.exit_code, e)
    """)
    assert missing.stdout == "127 no-such-command-pinnace: command not found\n"


def test_capture_output_returns_when_the_cli_exits(ns: NsArea):
    # the first joiner starts the holder; with captured output, run() returns only once every writer
    # of the pipes is gone, so the holder must not have kept them
    ns.run("userns.ensure_joined(RUNROOT)", timeout=20)
    assert alive(ns.holder_pid())


@pytest.mark.rootful
def test_root_does_not_need_a_holder(tmp_path):
    assert os.geteuid() == 0, "rootful test"
    code = ("import sys; from pathlib import Path; from pinnace.runtime import userns; "
            "print(userns.ensure_joined(Path(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    assert out.strip() == "UsernsInfo(rootless=False, single_mapping=False, mappings=None, holder_pid=None)"
    assert not (tmp_path / "run").exists()
