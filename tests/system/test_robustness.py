"""Robustness: many CLIs at once, and `kill -9` of the CLI, of a supervisor, of a container — the state left
behind must be what `ps -a`, `wait`, `rm -f` and `container cleanup` handle. The last test checks that the
module left nothing behind: no zombies, no stale mounts, no supervisors, no container processes.

All tests share one store (module_pinnace); each removes its containers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from testenv import REGISTRY

IMG = f"{REGISTRY}/fixtures/busybox:latest"

# every supervisor and container pid a test saw, for the final check
SEEN_PIDS: set[int] = set()


@pytest.fixture(scope="module")
def store(busybox_image):
    return busybox_image[0]


# -- helpers -----------------------------------------------------------------------------------------------
def poll(fn, timeout: float = 10.0, interval: float = 0.02):
    """fn() until it is truthy (returned) or the deadline passes (the last falsy value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, Z, ...), None when there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[0].decode()


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z")  # a zombie has finished running


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def state_json(store, cid: str) -> dict:
    return json.loads((store.root / "containers" / cid / "state.json").read_text())


def started(store, cid: str) -> dict:
    """state.json of a running container, its pids recorded for the final check."""
    st = poll(lambda: (s := state_json(store, cid)).get("status") == "running" and s.get("pid") and s)
    assert st, state_json(store, cid)
    SEEN_PIDS.update({st["pid"], st["supervisor_pid"]})
    return st


def store_mounts(store) -> list[str]:
    """Mount points under the store, as the namespace holder (where the store's mounts live) sees them."""
    info = store("unshare", "cat", "/proc/self/mountinfo").out
    return [line.split()[4] for line in info.splitlines() if line.split()[4].startswith(str(store.root))]


def ps_status(store, name: str) -> str | None:
    res = store("ps", "-a", "--format", "{{.Names}}|{{.Status}}")
    assert "Traceback" not in res.err, res.err
    rows = dict(line.split("|", 1) for line in res.out.splitlines())
    return rows.get(name)


def one_line_error(res) -> None:
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in res.err, res.err


def kill_supervisor(store, cid: str) -> dict:
    st = started(store, cid)
    sup = st["supervisor_pid"]
    assert "__supervise" in cmdline(sup) and cid in cmdline(sup), f"pid {sup} is not the supervisor: {cmdline(sup)}"
    os.kill(sup, signal.SIGKILL)
    assert poll(lambda: not alive(sup), 5), f"supervisor {sup} survived SIGKILL"
    return st


# -- many CLIs at once -------------------------------------------------------------------------------------
@pytest.mark.anyuser
def test_twenty_parallel_runs_of_one_image(store):
    procs = [store.popen("run", "--rm", IMG, "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(20)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        results.append((p.returncode, out.decode(), err.decode()))
    failed = [r for r in results if r[0] != 0 or "Error" in r[2] or "Traceback" in r[2]]
    assert not failed, f"{len(failed)} of 20 failed: {failed[:3]}"
    assert store("ps", "-a", "-q").out == ""
    assert os.listdir(store.root / "containers") == [], "--rm left container directories"
    assert store_mounts(store) == []


@pytest.mark.anyuser
def test_five_parallel_runs_with_one_name(store):
    procs = [store.popen("run", "--name", "same", IMG, "true", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(5)]
    try:
        errs = [p.communicate(timeout=120)[1].decode() for p in procs]
        results = [(p.returncode, err) for p, err in zip(procs, errs)]
        assert sorted(rc for rc, _ in results) == [0, 125, 125, 125, 125], results
        for rc, err in results:
            if rc == 125:
                lines = err.strip().splitlines()
                assert len(lines) == 1 and "already in use" in lines[0] and "same" in lines[0], err
        names = store("ps", "-a", "--format", "{{.Names}}").out.split()
        assert names == ["same"]
        assert ps_status(store, "same").startswith("Exited (0)")
    finally:
        store("rm", "-f", "same", check=False)
    assert store("ps", "-a", "-q").out == ""


# -- kill -9 of the CLI, the supervisor, the container -----------------------------------------------------
def test_cli_killed_during_attached_run(store):
    name = "cli-killed"
    proc = store.popen("run", "--name", name, IMG, "sh", "-c", "sleep 3; echo done",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert poll(lambda: store("inspect", "--format", "{{.State.Status}}", name, check=False).out == "running\n"), \
            "the container never ran"
        cid = store("inspect", "--format", "{{.Id}}", name).out.strip()
        started(store, cid)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        try:  # nothing that survives (supervisor, container) may hold the killed CLI's stdout/stderr
            proc.communicate(timeout=1.5)
        except subprocess.TimeoutExpired:
            pytest.fail("a surviving process holds the killed CLI's stdout/stderr pipes")
        assert ps_status(store, name).startswith("Up"), "the container did not outlive its CLI"
        assert store("wait", name, timeout=30).out == "0\n"
        assert store("logs", name).out == "done\n"
        assert ps_status(store, name).startswith("Exited (0)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        store("rm", "-f", name, check=False)


@pytest.mark.anyuser
def test_supervisor_killed_then_ps_and_rm_force(store):
    name = "sup-killed"
    cid = store("run", "-d", "--name", name, IMG, "sleep", "1000").out.strip()
    try:
        st = kill_supervisor(store, cid)
        status = ps_status(store, name)
        assert status and status.split()[0] in ("Up", "Exited"), status
        res = store("inspect", name)
        assert res.json()[0]["Id"] == cid
        res = store("rm", "-f", name, timeout=60)
        assert res.out.strip() in (name, cid) and "Traceback" not in res.err, res
        assert poll(lambda: not alive(st["pid"]), 5), f"the container process {st['pid']} outlived rm -f"
        assert ps_status(store, name) is None
        assert not (store.root / "containers" / cid).exists()
        assert not [m for m in store_mounts(store) if cid in m]
    finally:
        store("rm", "-f", name, check=False)


def test_container_killed_from_the_host(store):
    name = "init-killed"
    cid = store("run", "-d", "--name", name, IMG, "sleep", "1000").out.strip()
    try:
        st = started(store, cid)
        store("unshare", "kill", "-9", str(st["pid"]))
        assert store("wait", name, timeout=30).out == "137\n"
        assert ps_status(store, name).startswith("Exited (137)")
        assert store("inspect", "--format", "{{.State.ExitCode}}", name).out == "137\n"
        # the supervisor recorded it and cleaned up: no mount, no supervisor
        assert poll(lambda: not alive(st["supervisor_pid"]), 5)
        assert not [m for m in store_mounts(store) if cid in m]
        store("rm", name)
    finally:
        store("rm", "-f", name, check=False)


def test_incompletely_created_container(store):
    """As a CLI killed during `create` leaves it: a record without config.json."""
    name = "half-created"
    cid = store("create", "--name", name, IMG, "true").out.strip()
    try:
        store("unshare", "rm", str(store.root / "containers" / cid / "config.json"))
        assert ps_status(store, name) is not None
        res = store("start", name, check=False)
        assert res.rc != 0
        one_line_error(res)
        assert name in res.err or cid[:12] in res.err, res.err
        res = store("rm", "-f", name)
        assert ps_status(store, name) is None
        assert not (store.root / "containers" / cid).exists()
    finally:
        store("rm", "-f", name, check=False)


@pytest.mark.anyuser
def test_container_cleanup_after_supervisor_kill(store):
    name = "cleaned"
    cid = store("run", "-d", "--name", name, IMG, "sleep", "1000").out.strip()
    try:
        st = kill_supervisor(store, cid)
        # as with conmon, the container outlives its supervisor: still running, still mounted
        assert alive(st["pid"]), "the container died with its supervisor"
        assert ps_status(store, name).startswith("Up"), ps_status(store, name)
        assert [m for m in store_mounts(store) if cid in m], "the rootfs should still be mounted"
        res = store("container", "cleanup", name)
        assert "Traceback" not in res.err, res.err
        # the container lived on without a supervisor: cleanup stopped it and recorded the exit
        assert poll(lambda: not alive(st["pid"]), 5), f"container process {st['pid']} still runs"
        info = store("inspect", name).json()[0]["State"]
        assert (info["Status"], info["Running"], info["ExitCode"]) == ("exited", False, 137), info
        assert ps_status(store, name).startswith("Exited (137)")
        assert not [m for m in store_mounts(store) if cid in m], "cleanup left the rootfs mounted"
        assert store("wait", name, timeout=10).out == "137\n"
        store("rm", name)
        assert ps_status(store, name) is None
    finally:
        store("rm", "-f", name, check=False)


# -- after the module: nothing left behind ---------------------------------------------------------------
def _our_uids() -> set[int]:
    uids = {os.getuid()}
    if os.getuid() != 0:
        import pwd
        me = pwd.getpwuid(os.getuid()).pw_name
        for line in Path("/etc/subuid").read_text().splitlines():
            user, start, count = line.split(":")
            if user in (me, str(os.getuid())):
                uids.update(range(int(start), int(start) + int(count)))
    return uids


def _zombies(parents: set[int], uids: set[int]) -> dict[int, str]:
    """Zombies with one of `uids` whose parent is one of `parents`: pid -> description."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if fields[0] != b"Z":
            continue
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        ppid = int(fields[1])
        if uid in uids and ppid in parents:
            found[int(entry)] = f"zombie {entry} ({stat[:stat.rindex(b')') + 1].decode()}) of {ppid}: {cmdline(ppid)}"
    return found


@pytest.mark.anyuser
def test_zz_nothing_left_behind(store):
    """Runs last: no container, no stale mount, no supervisor, no container process, no zombie of ours."""
    assert store("ps", "-a", "-q").out == "", "a test left a container"
    assert store_mounts(store) == [], "stale mounts under the store"
    root = str(store.root)

    def supervisors():
        return [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                if "__supervise" in cmdline(p) and root in cmdline(p) and alive(p)]
    assert poll(lambda: not supervisors(), 10), f"supervisors left: {[cmdline(p) for p in supervisors()]}"
    assert poll(lambda: not [p for p in SEEN_PIDS if alive(p)], 10), \
        f"processes left: {[(p, cmdline(p)) for p in SEEN_PIDS if alive(p)]}"

    # zombies of the processes this module ran: pinnace's own (CLI, supervisors, holder) and this pytest
    def parents() -> set[int]:
        ps = {os.getpid()} | SEEN_PIDS
        try:
            ps.add(int((store.runroot / "holder.pid").read_text().split()[0]))
        except (OSError, ValueError):
            pass
        for p in map(int, filter(str.isdigit, os.listdir("/proc"))):
            if root in cmdline(p):
                ps.add(p)
        return ps
    uids = _our_uids()
    first = _zombies(parents(), uids)
    if first:  # one that is reaped within the deadline was only passing through
        poll(lambda: not set(_zombies(parents(), uids)) & set(first), 10)
        left = {p: d for p, d in _zombies(parents(), uids).items() if p in first}
        assert not left, "zombie processes:\n" + "\n".join(left.values())
