"""runtime/cgroups.py against the real cgroup filesystem: limits land in the kernel's files and are
enforced (pids, memory, cpu), processes move in, freeze stops them, stats count, remove cleans up.

Root tests use the host's real layout (v1/hybrid or v2). The delegated-v2 test builds a delegation by hand
(what systemd does for user@UID.service) on the host's cgroup2 mount and drives it as the test user.
Everything created lives under `pinnace/` and is removed by finalizers.
"""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from pinnace.errors import InvalidArgument, PinnaceError
from pinnace.runtime import cgroups

TEST_USER = os.environ.get("PINNACE_TEST_USER", "pinnacetest")
NO_LIMITS = dict(memory=None, memory_swap=None, cpus=None, cpu_shares=None, pids_limit=None)


def _res(**kw) -> dict:
    return cgroups.parse_resources(**{**NO_LIMITS, **kw})


def _cgroup_dirs(cg: cgroups.ContainerCgroup) -> list[str]:
    return list(dict.fromkeys(cg.paths.values()))


def _procs(d: str) -> list[int]:
    with open(os.path.join(d, "cgroup.procs")) as f:
        return [int(x) for x in f.read().split()]


def _kill_and_rmdir(top: str) -> None:
    """Finalizer: kill what our tests left in `top` (always under pinnace/) and remove it, deepest first."""
    assert "/pinnace/" in top
    if not os.path.isdir(top):
        return
    for d, subdirs, _files in os.walk(top, topdown=False):
        for pid in _procs(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(200):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)


@pytest.fixture
def new_cgroup(request):
    """create() with a unique id; the finalizer kills leftovers and removes the dirs."""
    made: list[cgroups.ContainerCgroup] = []

    def make(resources: dict) -> cgroups.ContainerCgroup:
        cg = cgroups.create(f"pinnace-test-{uuid.uuid4().hex}", resources, rootless=False)
        assert cg is not None, cgroups.probe(False).reason
        made.append(cg)
        return cg

    yield make
    for cg in made:
        for d in _cgroup_dirs(cg):
            _kill_and_rmdir(d)


def _file(cg: cgroups.ContainerCgroup, v1: tuple[str, str], v2: str) -> str:
    path = os.path.join(cg.paths["unified"], v2) if "unified" in cg.paths else os.path.join(cg.paths[v1[0]], v1[1])
    with open(path) as f:
        return f.read().strip()


def _child(paths: dict, body) -> tuple[int, int]:
    """Fork a child that joins the cgroup itself (as the container's child does), says "ready" on a pipe,
    then runs body(write_fd). Returns (pid, read end)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            cgroups.enter(paths)
            os.write(w, b"ready\n")
            body(w)
        except BaseException:  # noqa: BLE001 - a forked child never returns into pytest
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    assert os.read(r, 6) == b"ready\n"
    return pid, r


def _reap(pid: int) -> int:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return os.waitpid(pid, 0)[1]


# ------------------------------------------------------------------ as any user: parsing, records

@pytest.mark.anyuser
def test_parse_resources_as_docker_does():
    assert _res() == {}
    assert _res(memory="64m", cpus="0.5", pids_limit=20) == {
        "memory": {"limit": 64 << 20, "swap": 128 << 20},  # swap unset: memory+swap = 2 × memory (Docker)
        "cpu": {"quota": 50_000, "period": 100_000}, "pids": {"limit": 20}}
    assert _res(memory="1g", memory_swap="1g")["memory"] == {"limit": 1 << 30, "swap": 1 << 30}
    assert _res(memory="1.5G", memory_swap="-1")["memory"] == {"limit": 3 << 29, "swap": -1}
    assert _res(memory="7340032")["memory"]["limit"] == 7 << 20 and _res(memory="7168k") == _res(memory="7m")
    assert _res(memory="8mb")["memory"]["limit"] == _res(memory="8MiB")["memory"]["limit"] == 8 << 20
    assert _res(cpus="1.5", cpu_shares=512)["cpu"] == {"quota": 150_000, "period": 100_000, "shares": 512}
    assert _res(cpu_shares=1)["cpu"] == {"shares": 2}  # the kernel's minimum
    assert _res(pids_limit=-1) == _res(pids_limit=0) == {"pids": {"limit": -1}}  # unlimited
    assert _res(memory="0", cpus="0") == {}  # 0 leaves them unset, as in Docker
    bad = [dict(memory="lots"), dict(memory="1x"), dict(memory="-5m"), dict(memory="1.g"),
           dict(memory="5m"),  # below Docker's 6 MiB minimum
           dict(memory_swap="1g"), dict(memory="1g", memory_swap="512m"),
           dict(cpus="half"), dict(cpus="-1"), dict(cpus="0.001"), dict(cpus=str((os.cpu_count() or 1) + 1)),
           dict(cpu_shares=-2)]
    for kw in bad:
        with pytest.raises(InvalidArgument) as e:
            _res(**kw)
        msg = str(e.value)
        assert "\n" not in msg and ("--memory" in msg or "--cpus" in msg or "--cpu-shares" in msg), (kw, msg)
    with pytest.raises(InvalidArgument, match="only .* CPUs available"):
        _res(cpus="999")


@pytest.mark.anyuser
def test_records_round_trip_and_bad_ones_are_refused():
    cg = cgroups.ContainerCgroup({"memory": "/sys/fs/cgroup/memory/pinnace/x",
                                  "pids": "/sys/fs/cgroup/pids/pinnace/x"})
    again = cgroups.from_json(json.loads(json.dumps(cgroups.to_json(cg))))
    assert again.paths == cg.paths
    for bad in ({}, {"paths": {}}, {"paths": {"memory": "relative/dir"}}, {"paths": "x"}, []):
        with pytest.raises(PinnaceError, match="invalid cgroup record"):
            cgroups.from_json(bad)
    with pytest.raises(PinnaceError, match="pause needs a cgroup freezer"):
        cgroups.freeze(None)
    with pytest.raises(PinnaceError, match="refusing to remove"):  # a corrupt record never rmdirs elsewhere
        cgroups.remove(cgroups.ContainerCgroup({"memory": "/sys/fs/cgroup/memory"}))
    assert os.path.isdir("/sys/fs/cgroup")


def _as_test_user(code: str, *, cgroup_dir: str | None = None) -> dict:
    """Run `code` (prints one JSON line) as the unprivileged test user, optionally started inside the
    cgroup `cgroup_dir` (root only). As the test user itself: a plain subprocess."""
    argv = [sys.executable, "-c", textwrap.dedent(code)]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", TEST_USER, "--", *argv]
        if cgroup_dir:  # join the cgroup as root, then become the user (who may not move itself there)
            argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup_dir, *argv]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.anyuser
def test_an_unprivileged_user_without_delegation_gets_a_reason_and_no_cgroup():
    r = _as_test_user("""
        import json, os
        from pinnace.runtime import cgroups
        sup = cgroups.probe(rootless=True)
        cg = cgroups.create("pinnace-test-" + os.urandom(8).hex(), {}, rootless=True)
        if cg: cgroups.remove(cg)
        own = [l[3:].strip() for l in open("/proc/self/cgroup") if l.startswith("0::")]
        print(json.dumps({"mode": sup.mode, "ok": sup.manageable, "reason": sup.reason, "cg": cg and cg.paths,
                          "uid": os.getuid(), "own": own}))
    """)
    assert r["uid"] != 0
    if r["mode"] in ("v1", "hybrid"):  # this project's CI host: hybrid
        assert not r["ok"] and r["cg"] is None
        assert "not supported and ignored on cgroups V1 rootless systems" in r["reason"]
    else:  # pure v2: limits only with a delegated (user-owned) cgroup above ours
        assert r["mode"] == "v2"
        parent = os.path.dirname("/sys/fs/cgroup" + r["own"][0].rstrip("/"))
        if os.stat(parent).st_uid == r["uid"]:
            assert r["ok"] and r["cg"] and r["reason"] == ""
        else:
            assert not r["ok"] and r["cg"] is None and "without delegation" in r["reason"]
    assert "\n" not in r["reason"]


# ------------------------------------------------------------------ as root: the host's real layout

@pytest.mark.rootful
def test_create_writes_the_limits_and_enter_moves_a_process(new_cgroup):
    cg = new_cgroup(_res(memory="64m", pids_limit=20, cpus="0.5", cpu_shares=512))
    assert all(d.endswith("/pinnace/" + os.path.basename(d)) and os.path.isdir(d) for d in _cgroup_dirs(cg))
    assert _file(cg, ("memory", "memory.limit_in_bytes"), "memory.max") == str(64 << 20)
    assert _file(cg, ("pids", "pids.max"), "pids.max") == "20"
    if "unified" in cg.paths:
        assert _file(cg, ("", ""), "cpu.max") == "50000 100000"
        assert _file(cg, ("", ""), "cpu.weight") == str(1 + 510 * 9999 // 262142)
    else:
        assert _file(cg, ("cpu", "cpu.cfs_quota_us"), "") == "50000"
        assert _file(cg, ("cpu", "cpu.cfs_period_us"), "") == "100000"
        assert _file(cg, ("cpu", "cpu.shares"), "") == "512"
        assert _file(cg, ("memory", "memory.memsw.limit_in_bytes"), "") == str(128 << 20)

    pid = os.fork()
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "60"])
    try:
        # the spec annotation holds the to_json() record: enter() takes it as well as the paths
        cgroups.enter(json.loads(json.dumps(cgroups.to_json(cg))), pid)
        for d in _cgroup_dirs(cg):
            assert pid in _procs(d)
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
        rel = "/pinnace/" + os.path.basename(next(iter(cg.paths.values())))
        for controller in cg.paths:
            line = next(ln for ln in lines if (ln.startswith("0::") if controller == "unified"
                                                else controller in ln.split(":")[1].split(",")))
            assert line.endswith(rel), (controller, lines)
    finally:
        _reap(pid)
    cgroups.remove(cg)
    assert not any(os.path.exists(d) for d in _cgroup_dirs(cg))
    cgroups.remove(cg)  # already gone: fine


@pytest.mark.rootful
def test_pids_limit_stops_a_fork_loop(new_cgroup):
    cg = new_cgroup(_res(pids_limit=20))

    def fork_loop(w):
        hold_r, hold_w = os.pipe()
        made, err = 0, "none"
        for _ in range(50):
            try:
                kid = os.fork()
            except OSError as e:
                err = e.__class__.__name__ + ":" + str(e.errno)
                break
            if kid == 0:
                os.close(hold_w)
                os.read(hold_r, 1)  # parked until the loop is done
                os._exit(0)
            made += 1
        os.write(w, f"{made} {err} {len(_procs(cg.paths.get('pids', cg.paths.get('unified', ''))))}\n".encode())
        os.close(hold_w)  # releases the children
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break

    pid, r = _child(cg.paths, fork_loop)
    try:
        made, err, procs = os.read(r, 100).decode().split()
    finally:
        _reap(pid)
    assert (int(made), err, int(procs)) == (19, f"BlockingIOError:{11}", 20)  # EAGAIN; the loop itself is one


@pytest.mark.rootful
def test_memory_limit_kills_a_process_that_exceeds_it(new_cgroup):
    cg = new_cgroup(_res(memory="64m"))

    def hog(w):
        chunks = []
        for _ in range(32):  # 256 MiB, every page touched
            chunks.append(bytearray(b"\x01") * (8 << 20))
        os.write(w, b"survived\n")

    pid, r = _child(cg.paths, hog)
    status = os.waitpid(pid, 0)[1]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status  # the OOM killer
    assert os.read(r, 100) == b""
    # the same program outside the limited cgroup completes (the limit, not the machine, killed it)
    pid, r = _child(new_cgroup({}).paths, hog)
    assert os.waitpid(pid, 0)[1] == 0 and os.read(r, 100) == b"survived\n"


@pytest.mark.rootful
def test_stats_count_cpu_within_the_quota(new_cgroup):
    cg = new_cgroup(_res(cpus="0.5", memory="64m"))

    def spin(_w):
        while True:
            pass

    pid, r = _child(cg.paths, spin)
    try:
        s0, t0 = cgroups.stats(cg), time.monotonic()
        time.sleep(1.0)
        s1, t1 = cgroups.stats(cg), time.monotonic()
    finally:
        _reap(pid)
    used = (s1["cpu_ns"] - s0["cpu_ns"]) / 1e9 / (t1 - t0)
    assert 0.1 < used < 0.6, used  # a busy loop capped at half a CPU (unlimited it would take ~1.0)
    assert s1["pids"] == 1 and s1["memory_limit"] == 64 << 20 and 0 < s1["memory_bytes"] < 64 << 20
    assert cgroups.stats(new_cgroup({}))["memory_limit"] is None  # no limit reads as None, not 2^63


@pytest.mark.rootful
def test_freeze_stops_a_process_and_thaw_resumes_it(new_cgroup):
    cg = new_cgroup({})
    _freeze_thaw_check(cg)


def _freeze_thaw_check(cg) -> None:
    def count(w):
        i = 0
        while True:
            i += 1
            os.write(w, f"{i}\n".encode())
            time.sleep(0.01)

    pid, r = _child(cg.paths, count)
    os.set_blocking(r, False)
    try:
        time.sleep(0.1)
        cgroups.freeze(cg)
        if "unified" in cg.paths:
            assert "frozen 1" in _file(cg, ("", ""), "cgroup.events")
        else:
            assert _file(cg, ("freezer", "freezer.state"), "") == "FROZEN"
        before = os.read(r, 1 << 16).split()
        time.sleep(0.4)
        with pytest.raises(BlockingIOError):  # 40 lines would have come in 0.4 s
            os.read(r, 1 << 16)
        cgroups.thaw(cg)
        time.sleep(0.2)
        after = os.read(r, 1 << 16).split()
        assert len(after) > 5 and int(after[0]) == int(before[-1]) + 1  # the same process, carrying on
    finally:
        _reap(pid)


@pytest.mark.rootful
def test_remove_waits_for_exiting_processes_and_fails_while_one_stays(new_cgroup, monkeypatch):
    cg = new_cgroup({})
    pid, _r = _child(cg.paths, lambda w: time.sleep(60))
    monkeypatch.setattr(cgroups, "_WAIT", 0.3)
    with pytest.raises(PinnaceError, match="processes still in it"):
        cgroups.remove(cg)
    assert all(os.path.isdir(d) for d in _cgroup_dirs(cg))
    os.kill(pid, signal.SIGKILL)  # not reaped yet: a zombie has left the cgroup, remove needs nothing more
    cgroups.remove(cg)
    assert not any(os.path.exists(d) for d in _cgroup_dirs(cg))
    _reap(pid)


# ------------------------------------------------------------------ delegated cgroup v2, as the test user

def _v2_mount() -> str:
    with open("/proc/self/mountinfo") as f:
        points = [ln.split(" - ")[0].split()[4] for ln in f if " - cgroup2 " in ln]
    assert points, "no cgroup2 mount on this host: the delegated-v2 test needs one"
    return points[0]


@pytest.fixture
def delegation():
    """<v2 mount>/pinnace/deleg-X owned by the test user (dir, cgroup.procs, cgroup.subtree_control,
    cgroup.threads: what systemd's Delegate=yes chowns), with a `session` child for the user's process;
    and a second, root-owned, undelegated one."""
    user = pwd.getpwnam(TEST_USER)
    top = os.path.join(_v2_mount(), "pinnace")
    made_top = not os.path.isdir(top)
    os.makedirs(top, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    dirs = {}
    for name, owned in (("deleg", True), ("nodeleg", False)):
        d = os.path.join(top, f"{name}-{tag}")
        os.makedirs(os.path.join(d, "session"))
        if owned:
            for c in (d, os.path.join(d, "session")):
                for f in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
                    os.chown(os.path.join(c, f), user.pw_uid, user.pw_gid)
        dirs[name] = d
    yield dirs
    for d in dirs.values():
        _kill_and_rmdir(d)
    if made_top:
        try:
            os.rmdir(top)
        except OSError:
            pass


USER_V2 = """
import json, os, sys, time
from pinnace.runtime import cgroups
from pinnace.errors import PinnaceError
# this process sees only the cgroup2 mount: on a hybrid host that is the host's real (controller-less) v2
mi = "".join(l for l in open("/proc/self/mountinfo") if " - cgroup2 " in l)
sup = cgroups.probe(True, mountinfo=mi)
out = {"mode": sup.mode, "ok": sup.manageable, "reason": sup.reason, "roots": sup.roots}
if sup.manageable:
    try:
        cgroups.create("pinnace-test-mem", {"memory": {"limit": 64 << 20}}, rootless=True, support=sup)
    except PinnaceError as e:
        out["memory_error"] = str(e)
    out["memory_left"] = os.path.exists(os.path.join(sup.roots[0][1], "pinnace", "pinnace-test-mem"))
    cg = cgroups.create("pinnace-test-" + os.urandom(8).hex(), {}, rootless=True, support=sup)
    d = cg.paths["unified"]
    out.update(paths=cg.paths, owner=os.stat(d).st_uid)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        i = 0
        while True:
            i += 1
            os.write(w, b"%d\\n" % i)
            time.sleep(0.01)
    os.close(w)
    cgroups.enter(cg.paths, pid)
    out["child_cgroup"] = [l.strip() for l in open(f"/proc/{pid}/cgroup") if l.startswith("0::")][0]
    time.sleep(0.1)
    cgroups.freeze(cg)
    before = os.read(r, 65536).split()
    time.sleep(0.3)
    os.set_blocking(r, False)
    try:
        out["while_frozen"] = len(os.read(r, 65536))
    except BlockingIOError:
        out["while_frozen"] = 0
    cgroups.thaw(cg)
    time.sleep(0.2)
    after = os.read(r, 65536).split()
    out["resumed"] = int(after[0]) == int(before[-1]) + 1 and len(after) > 5
    out["stats"] = cgroups.stats(cg)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    cgroups.remove(cg)
    out["removed"] = not os.path.exists(d)
else:
    out["create"] = cgroups.create("pinnace-test-x", {}, rootless=True, support=sup)
print(json.dumps(out))
"""


@pytest.mark.rootful
def test_a_delegated_v2_cgroup_gives_an_unprivileged_user_cgroups(delegation):
    deleg = delegation["deleg"]
    r = _as_test_user(USER_V2, cgroup_dir=os.path.join(deleg, "session"))
    assert (r["mode"], r["ok"], r["reason"]) == ("v2", True, "")
    assert r["roots"] == [["unified", deleg]]  # the top of the delegated subtree, beside the user's cgroup
    assert r["paths"]["unified"].startswith(deleg + "/pinnace/pinnace-test-")
    assert r["owner"] == pwd.getpwnam(TEST_USER).pw_uid
    mount = _v2_mount()
    assert r["child_cgroup"] == "0::" + r["paths"]["unified"][len(mount):]
    if "memory" not in open(os.path.join(deleg, "cgroup.controllers")).read().split():
        assert "--memory/--memory-swap needs the cgroup memory controller" in r["memory_error"]
        assert not r["memory_left"]
    assert r["while_frozen"] == 0 and r["resumed"] is True
    assert r["stats"]["pids"] == 1 and r["stats"]["cpu_ns"] > 0
    assert r["removed"] is True


@pytest.mark.rootful
def test_an_undelegated_v2_cgroup_is_refused_with_the_reason(delegation):
    r = _as_test_user(USER_V2, cgroup_dir=os.path.join(delegation["nodeleg"], "session"))
    assert (r["mode"], r["ok"], r["create"]) == ("v2", False, None)
    assert "without delegation" in r["reason"] and delegation["nodeleg"] in r["reason"]
