"""Containers as a user drives them: run and its exit codes, detached runs and logs, a real terminal,
exec, --rm, restart policies, bind mounts and volumes, cp/commit, ps/inspect/wait/top/prune, --read-only,
--init, health checks; and the rootful pass (cgroup limits, pause)."""
from __future__ import annotations

import io
import json
import os
import pwd
import re
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from pty_session import PtySession
from testenv import PINNACE_BIN, REGISTRY

IMG = f"{REGISTRY}/fixtures/busybox"
LAYERS_IMG = f"{REGISTRY}/fixtures/busybox-layers"


@pytest.fixture(scope="module")
def p(busybox_image):
    """The module's store, with busybox pulled (tests use their own names/labels, so they can share it)."""
    return busybox_image[0]


def poll(fn, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """fn() until it returns something true; its last value in the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


def fmt(p, name: str, template: str) -> str:
    return p("inspect", "--format", template, name).out.strip()


def detached(p, *args: str) -> str:
    cid = p("run", "-d", *args).out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), cid
    return cid


def proc_cmdlines_with(text: str) -> list[str]:
    """Host processes whose command line mentions text (supervisors name their container's dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append(f"{entry}: {cmd}")
    return found


def pty_argv(p, *args: str) -> list[str]:
    return [PINNACE_BIN, "--root", str(p.root), "--runroot", str(p.runroot), *args]


# ---------------------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize("cmd, code", [
    (["true"], 0), (["false"], 1), (["sh", "-c", "exit 32"], 32),
    (["no-such-command"], 127), (["/tmp"], 126),
])
def test_exit_codes(p, cmd, code):
    res = p("run", "--rm", IMG, *cmd, check=False)
    assert res.rc == code, res
    if code >= 126:  # the engine says why, in one line that names the command
        assert res.err.count("\n") == 1 and cmd[0] in res.err, res.err


def test_bad_flag_is_125(p):
    res = p("run", "--no-such-flag", IMG, "true", check=False)
    assert res.rc == 125 and "--no-such-flag" in res.err


def test_kill_gives_137_in_wait_and_ps(p):
    cid = detached(p, "--name", "killed", IMG, "sleep", "1000")
    try:
        assert p("kill", "killed").out.strip() == "killed"
        assert p("wait", cid).out.strip() == "137"
        rows = p("ps", "-a", "--filter", "name=killed", "--format", "{{.Names}} {{.Status}}").out
        assert re.fullmatch(r"killed Exited \(137\) .*\n", rows), rows
        assert fmt(p, cid, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    finally:
        p("rm", "-f", cid)


# ---------------------------------------------------------------------------------- detached + logs
def test_logs_follow_tail_timestamps_since_and_stop(p):
    script = "for i in $(seq 1 40); do echo line$i; done; echo to-stderr >&2; sleep 1.2; echo late; sleep 1000"
    cid = detached(p, IMG, "sh", "-c", script)
    follower = p.popen("logs", "-f", cid, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = []
        for _ in range(41):  # logs -f delivers lines as they come, while the container runs
            got.append(follower.stdout.readline().decode())
        assert got == [f"line{i}\n" for i in range(1, 41)] + ["late\n"]
        assert follower.poll() is None, "logs -f ended while the container runs"
        assert p("logs", "--tail", "1", cid).out == "late\n"
        stamped = p("logs", "-t", cid)
        stamps = re.findall(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) (\S+)$", stamped.out, re.M)
        assert [t for _, t in stamps] == [f"line{i}" for i in range(1, 41)] + ["late"]
        assert re.fullmatch(r"\S+Z to-stderr\n", stamped.err), stamped.err
        assert [s for s, _ in stamps] == sorted(s for s, _ in stamps)
        # --since a moment between line40 and late (1.2 s apart): only late
        def unix(ts: str) -> float:
            from datetime import datetime
            whole, frac = ts[:-1].split(".")
            return datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(
                tzinfo=__import__("datetime").timezone.utc).timestamp() + float("0." + frac)
        middle = (unix(stamps[-2][0]) + unix(stamps[-1][0])) / 2
        assert p("logs", "--since", f"{middle:.3f}", cid).out == "late\n"
        assert p("logs", "--since", stamps[0][0], cid).out.count("\n") == 41  # an RFC 3339 time
        # `stop`: sh as pid 1 does not die of TERM, so stop kills it after -t; logs -f then ends
        t0 = time.monotonic()
        assert p("stop", "-t", "1", cid).out.strip() == cid
        took = time.monotonic() - t0
        assert 0.9 < took < 5, took
        assert follower.wait(timeout=5) == 0
        assert follower.stdout.read() == b""
        assert fmt(p, cid, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    finally:
        follower.kill()
        follower.wait()
        p("rm", "-f", cid)


def test_stop_of_a_container_that_ignores_term(p):
    cid = detached(p, IMG, "sh", "-c", "trap '' TERM; sleep 100")
    try:
        t0 = time.monotonic()
        p("stop", "-t", "1", cid)
        assert 0.9 < time.monotonic() - t0 < 5
        assert p("wait", cid).out.strip() == "137"
    finally:
        p("rm", "-f", cid)


def test_stop_sends_term_first(p):
    # with --init, TERM reaches sleep (not pid 1) and ends it at once: 143, long before the 10 s timeout
    cid = detached(p, "--init", IMG, "sleep", "1000")
    try:
        t0 = time.monotonic()
        p("stop", cid)
        assert time.monotonic() - t0 < 5
        assert fmt(p, cid, "{{.State.ExitCode}}") == "143"
    finally:
        p("rm", "-f", cid)


# ------------------------------------------------------------------------------------ a real terminal
def test_interactive_tty_type_resize_detach_attach(p):
    env = {**p.env, "TERM": "xterm"}
    with PtySession(pty_argv(p, "run", "-it", "--name", "tty1", IMG, "sh"), env, rows=24, cols=80) as s:
        try:
            s.expect(r"# ", 15)
            s.send("echo $((6*7))\r")
            s.expect(r"\r\n42\r\n")  # computed in the container: not the echo of what was typed
            s.send("stty size\r")
            s.expect(r"\r\n24 80\r\n")
            s.resize(37, 101)
            # the resize travels CLI -> supervisor -> pty asynchronously: ask until it shows
            deadline = time.monotonic() + 10
            while True:
                s.send("stty size\r")
                m = s.expect(r"\r\n(\d+ \d+)\r\n")
                if m.group(1) == b"37 101" or time.monotonic() > deadline:
                    break
            assert m.group(1) == b"37 101", bytes(s.output)
            s.send(b"\x10\x11")  # ctrl-p ctrl-q
            assert s.wait(10) == 0, bytes(s.output)
        finally:
            s.close()
    assert p("ps", "--filter", "name=tty1", "--format", "{{.Names}} {{.State}}").out == "tty1 running\n"
    with PtySession(pty_argv(p, "attach", "tty1"), env) as a:
        a.send("echo $((5+6))\r")
        a.expect(r"\r\n11\r\n")
        a.send("exit 3\r")
        assert a.wait(10) == 3, bytes(a.output)
    assert fmt(p, "tty1", "{{.State.Status}} {{.State.ExitCode}}") == "exited 3"
    p("rm", "tty1")


# --------------------------------------------------------------------------------------------- exec
def test_exec_sees_processes_env_and_cwd(p):
    cid = detached(p, "-e", "FROM_RUN=r1", "-w", "/tmp", IMG, "sleep", "1000")
    try:
        rows = [l.split(None, 1) for l in p("exec", cid, "ps", "-o", "pid,args").out.splitlines()[1:]]
        assert rows[0] == ["1", "sleep 1000"] and [r[1] for r in rows[1:]] == ["ps -o pid,args"], rows
        assert p("exec", "-e", "X=1", cid, "sh", "-c", "echo $FROM_RUN $X").out == "r1 1\n"
        env = p("exec", cid, "env").out.splitlines()
        assert "FROM_RUN=r1" in env and any(l.startswith("PATH=/usr/local/sbin") for l in env), env
        assert p("exec", cid, "pwd").out == "/tmp\n"
        assert p("exec", "-w", "/etc", cid, "pwd").out == "/etc\n"
        assert p("exec", cid, "sh", "-c", "exit 7", check=False).rc == 7
        t0 = time.monotonic()
        assert p("exec", "-d", cid, "sleep", "30").out == ""
        assert time.monotonic() - t0 < 5
        assert "sleep 30" in p("exec", cid, "ps", "-o", "args").out.splitlines()
    finally:
        p("rm", "-f", cid)


def test_exec_as_another_user(p):
    cid = detached(p, IMG, "sleep", "1000")
    try:
        assert p("exec", "-u", "1000", cid, "id", "-u").out == "1000\n"
        assert p("exec", "-u", "app", cid, "sh", "-c", "id -un; cat /home/app/hello.txt").out == "app\nhello from app\n"
    finally:
        p("rm", "-f", cid)


def test_run_as_another_user(p):
    res = p("run", "--rm", "-u", "1000:1000", IMG, "sh", "-c", "id -u; id -g; ls /", check=False)
    assert res.rc == 0 and res.out.startswith("1000\n1000\n") and "etc" in res.out, res


# ---------------------------------------------------------------------------------------------- --rm
def _leftovers(p, cid: str) -> list[str]:
    found = []
    if p("ps", "-a", "-q", "--no-trunc", "--filter", f"id={cid}").out.strip():
        found.append("a ps -a row")
    if (p.root / "containers" / cid).exists():
        found.append(f"{p.root}/containers/{cid}")
    mounts = [l for l in p("unshare", "cat", "/proc/self/mountinfo").out.splitlines() if cid in l]
    found += [f"mount: {l}" for l in mounts]
    found += [f"process {c}" for c in proc_cmdlines_with(cid)]
    return found


def test_rm_leaves_nothing(p):
    cid_file = p.home / "rm-fg.cid"
    assert p("run", "--rm", "--cidfile", str(cid_file), IMG, "echo", "fg").out == "fg\n"
    cid = cid_file.read_text()
    assert _leftovers(p, cid) == []  # the foreground run returns after the removal
    cid = detached(p, "--rm", IMG, "sleep", "1000")
    assert (p.root / "containers" / cid).is_dir() and proc_cmdlines_with(cid)  # the checks can see one
    if os.environ.get("PINNACE_STORAGE_DRIVER") != "vfs":  # vfs mounts nothing: its rootfs is a copy
        assert any(cid in l for l in p("unshare", "cat", "/proc/self/mountinfo").out.splitlines())
    p("stop", "-t", "0", cid)
    poll(lambda: _leftovers(p, cid) == [], 10, what="--rm cleanup")
    assert _leftovers(p, cid) == []


# ---------------------------------------------------------------------------------------- restarts
def test_restart_on_failure_n_times(p):
    cid = detached(p, "--restart", "on-failure:3", IMG, "sh", "-c", "echo ran; exit 1")
    try:
        poll(lambda: fmt(p, cid, "{{.RestartCount}} {{.State.Status}}") == "3 exited", 15, what="3 restarts")
        time.sleep(1.0)  # a 4th restart would come 0.8 s after the 3rd
        assert fmt(p, cid, "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}") == "3 exited 1"
        assert p("logs", cid).out == "ran\n" * 4
    finally:
        p("rm", "-f", cid)


def test_restart_always_until_stop(p):
    cid = detached(p, "--restart", "always", IMG, "sh", "-c", "echo ran")  # exits 0 at once
    try:
        poll(lambda: int(fmt(p, cid, "{{.RestartCount}}")) >= 3, 15, what="3 restarts of an exit-0 container")
        p("stop", "-t", "1", cid)  # most likely lands in the back-off between two runs
        count, logs = fmt(p, cid, "{{.RestartCount}}"), p("logs", cid).out
        time.sleep(2.5)  # longer than the back-off at this count: a restart would have happened
        assert fmt(p, cid, "{{.State.Status}} {{.RestartCount}}") == f"exited {count}"
        assert p("logs", cid).out == logs
        assert proc_cmdlines_with(cid) == []
    finally:
        p("rm", "-f", cid)


# ------------------------------------------------------------------------------- bind mounts, volumes
def _subuid_base() -> int:
    user = pwd.getpwuid(os.getuid()).pw_name
    for line in Path("/etc/subuid").read_text().splitlines():
        name, start, _count = line.split(":")
        if name in (user, str(os.getuid())):
            return int(start)
    raise AssertionError(f"no /etc/subuid range for {user}")


def test_bind_mount_owner_of_container_uid_1000(p, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    p("run", "--rm", "-u", "1000", "-v", f"{shared}:/data", IMG, "sh", "-c", "echo x > /data/by-1000")
    st = os.stat(shared / "by-1000")
    assert (st.st_uid, st.st_gid) == (_subuid_base() + 999,) * 2


def test_keep_id(p, tmp_path):
    shared = tmp_path / "keep"
    shared.mkdir()
    out = p("run", "--rm", "--userns=keep-id", "-v", f"{shared}:/data", IMG,
            "sh", "-c", "id -u; echo x > /data/mine").out
    assert out == f"{os.getuid()}\n"
    assert os.stat(shared / "mine").st_uid == os.getuid()


def test_named_volume_survives_rm(p):
    p("run", "--name", "vol-writer", "-v", "ctr-test-vol:/data", IMG, "sh", "-c", "echo kept > /data/f")
    p("rm", "vol-writer")
    try:
        assert "ctr-test-vol" in p("volume", "ls", "-q").out.split()
        assert p("run", "--rm", "-v", "ctr-test-vol:/data", IMG, "cat", "/data/f").out == "kept\n"
    finally:
        p("volume", "rm", "-f", "ctr-test-vol")


def test_rm_v_removes_anonymous_volume_only(p):
    p("run", "--name", "vol-two", "-v", "ctr-named:/named", "-v", "/anon", IMG, "true")
    mounts = {m["Destination"]: m for m in json.loads(fmt(p, "vol-two", "{{json .Mounts}}"))}
    anon = mounts["/anon"]["Name"]
    assert mounts["/named"]["Name"] == "ctr-named" and re.fullmatch(r"[0-9a-f]{64}", anon)
    assert {anon, "ctr-named"} <= set(p("volume", "ls", "-q").out.split())
    p("rm", "-v", "vol-two")
    left = p("volume", "ls", "-q").out.split()
    assert "ctr-named" in left and anon not in left
    p("volume", "rm", "ctr-named")


# ------------------------------------------------------------------------------------- cp and commit
def test_cp_round_trip(p, tmp_path):
    src = tmp_path / "src.txt"
    src.write_bytes(b"payload\x00\xff\n")
    src.chmod(0o751)
    cid = detached(p, IMG, "sh", "-c", "mkdir /dir && echo a > /dir/a && echo b > /dir/b && sleep 1000")
    try:
        poll(lambda: p("exec", cid, "test", "-f", "/dir/b", check=False).rc == 0, what="/dir/b")
        p("cp", str(src), f"{cid}:/tmp/in.txt")
        assert p("exec", cid, "stat", "-c", "%a %s", "/tmp/in.txt").out == "751 10\n"
        p("cp", f"{cid}:/tmp/in.txt", str(tmp_path / "back.txt"))
        back = tmp_path / "back.txt"
        assert back.read_bytes() == src.read_bytes() and back.stat().st_mode & 0o7777 == 0o751
        stream = subprocess.run(pty_argv(p, "cp", f"{cid}:/dir", "-"), capture_output=True, env=p.env, timeout=30)
        assert stream.returncode == 0, stream.stderr
        with tarfile.open(fileobj=io.BytesIO(stream.stdout)) as tar:
            files = {m.name.rstrip("/"): tar.extractfile(m).read() if m.isfile() else None for m in tar}
        assert files == {"dir": None, "dir/a": b"a\n", "dir/b": b"b\n"}
    finally:
        p("rm", "-f", cid)


def test_commit_then_run(p):
    p("run", "--name", "to-commit", IMG, "sh", "-c", "echo committed > /f")
    try:
        p("commit", "to-commit", "localhost/ctr-test:one")
        assert p("run", "--rm", "localhost/ctr-test:one", "cat", "/f").out == "committed\n"
        p("commit", "-c", 'CMD ["cat","/f"]', "to-commit", "localhost/ctr-test:two")
        assert p("run", "--rm", "localhost/ctr-test:two").out == "committed\n"
        assert p("run", "--rm", IMG, "test", "-e", "/f", check=False).rc == 1  # the base image is untouched
    finally:
        p("rm", "-f", "to-commit")
        p("rmi", "localhost/ctr-test:one", "localhost/ctr-test:two", check=False)


# ------------------------------------------------------------------------- create/start, rename, ps…
def test_create_start_attach(p):
    cid = p("create", "--name", "created1", IMG, "sh", "-c", "echo out; echo err >&2; exit 5").out.strip()
    try:
        assert p("ps", "-a", "--filter", "name=created1", "--format", "{{.Status}}").out == "Created\n"
        res = p("start", "-a", "created1", check=False)
        assert (res.rc, res.out, res.err) == (5, "out\n", "err\n")
        assert fmt(p, cid, "{{.State.ExitCode}}") == "5"
    finally:
        p("rm", "-f", cid)


def test_rename(p):
    cid = p("create", "--name", "old-name", IMG, "true").out.strip()
    try:
        p("rename", "old-name", "new-name")
        assert fmt(p, "new-name", "{{.Id}}") == cid
        assert p("container", "exists", "old-name", check=False).rc == 1
        p("start", "new-name")
        assert p("wait", "new-name").out == "0\n"
    finally:
        p("rm", "-f", cid)


def test_ps_filters_and_formats(p):
    p("pull", "-q", LAYERS_IMG)
    done = p("run", "--name", "ps-done", "-l", "suite=ps", "-l", "which=done", IMG, "true").out
    up = detached(p, "--name", "ps-up", "-l", "suite=ps", LAYERS_IMG, "sleep", "1000")
    try:
        def names(*args: str) -> list[str]:
            return sorted(p("ps", *args, "--filter", "label=suite=ps", "--format", "{{.Names}}").out.split())
        assert done == ""
        assert names() == ["ps-up"] and names("-a") == ["ps-done", "ps-up"]
        assert names("-a", "--filter", "status=exited") == ["ps-done"]
        assert names("-a", "--filter", "status=running") == ["ps-up"]
        assert names("-a", "--filter", "name=ps-d") == ["ps-done"]
        assert names("-a", "--filter", "label=which=done") == ["ps-done"]
        assert names("-a", "--filter", "label=which") == ["ps-done"]
        assert names("-a", "--filter", f"ancestor={IMG}") == ["ps-done"]
        assert names("-a", "--filter", f"ancestor={LAYERS_IMG}:latest") == ["ps-up"]
        layers_id = p("image", "inspect", "--format", "{{.Id}}", LAYERS_IMG).out.strip()
        assert names("-a", "--filter", f"ancestor={layers_id.removeprefix('sha256:')[:12]}") == ["ps-up"]
        rows = p("ps", "-a", "--filter", "label=suite=ps", "--format", "{{.Names}} {{.Status}}").out.splitlines()
        assert sorted(rows)[0].startswith("ps-done Exited (0) ") and sorted(rows)[1].startswith("ps-up Up "), rows
        assert p("ps", "-q", "--filter", "label=suite=ps").out == up[:12] + "\n"
        assert p("ps", "-q", "--no-trunc", "--filter", "label=suite=ps").out == up + "\n"
        data = json.loads(p("ps", "-a", "--filter", "label=suite=ps", "--format", "json").out)
        by_name = {(d["Names"][0] if isinstance(d["Names"], list) else d["Names"]): d for d in data}
        assert set(by_name) == {"ps-done", "ps-up"}
        assert by_name["ps-up"]["State"] == "running" and by_name["ps-done"]["State"] == "exited"
        assert by_name["ps-up"]["Id"] == up and by_name["ps-done"]["ExitCode"] == 0
        bad = p("ps", "--filter", "status=nonsense", check=False)
        assert bad.rc == 125 and "nonsense" in bad.err
    finally:
        p("rm", "-f", "ps-done", "ps-up")


def test_inspect_wait_top(p):
    cid = detached(p, "--name", "insp", IMG, "sh", "-c", "sleep 1000; exit 4")
    try:
        assert fmt(p, "insp", "{{.State.Status}} {{.State.Running}} {{.State.ExitCode}}") == "running true 0"
        doc = p("inspect", "insp").json()[0]
        assert doc["Id"] == cid and doc["State"]["Pid"] > 0
        config = Path(doc["OCIConfigPath"])
        assert config.is_file() and config.is_relative_to(p.root)
        spec = json.loads(config.read_text())
        assert spec["ociVersion"].startswith("1.") and spec["process"]["args"] == ["sh", "-c", "sleep 1000; exit 4"]
        top = p("top", "insp").out.splitlines()
        assert "COMMAND" in top[0] and any(l.endswith("sh -c sleep 1000; exit 4") for l in top[1:]), top
        assert any(l.rstrip().endswith("sleep 1000") for l in top[1:]), top
        waiter = p.popen("wait", "insp", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p("exec", "-d", "insp", "killall", "sleep")  # -d: the container's end may kill killall itself
        out, err = waiter.communicate(timeout=10)
        assert (waiter.returncode, out) == (0, b"4\n"), err
        assert fmt(p, "insp", "{{.State.Status}} {{.State.ExitCode}}") == "exited 4"
        res = p("wait", "no-such-ctr", check=False)
        assert res.rc == 125 and "no-such-ctr" in res.err
    finally:
        p("rm", "-f", cid)


def test_container_prune_removes_exited_only(pinnace):
    pinnace("run", "--name", "gone", IMG, "true")
    pinnace("run", "--name", "failed", IMG, "false", check=False)
    up = detached(pinnace, "--name", "stays", IMG, "sleep", "1000")
    try:
        pruned = pinnace("container", "prune", "-f").out.split()
        assert len(pruned) == 2
        assert pinnace("ps", "-a", "--format", "{{.Names}}").out == "stays\n"
    finally:
        pinnace("rm", "-f", up)


# ------------------------------------------------------------------------------- run flags
def test_read_only_root_with_tmpfs(p):
    res = p("run", "--rm", "--read-only", IMG, "touch", "/x", check=False)
    assert res.rc == 1 and "Read-only file system" in res.err
    res = p("run", "--rm", "--read-only", "--tmpfs", "/run", IMG, "sh", "-c", "echo w > /run/x && cat /run/x")
    assert res.out == "w\n"


def test_init_is_pid_1_and_reaps(p):
    without = p("run", "--rm", IMG, "ps", "-o", "pid,args").out.splitlines()[1].split(None, 1)
    assert without == ["1", "ps -o pid,args"]
    rows = [l.split(None, 1) for l in p("run", "--rm", "--init", IMG, "ps", "-o", "pid,args").out.splitlines()[1:]]
    assert rows[0][0] == "1" and rows[0][1] != "ps -o pid,args" and ["1", "ps -o pid,args"] not in rows, rows
    assert any(r[1] == "ps -o pid,args" for r in rows[1:]), rows
    # pid 1 of a pid namespace is immune to its own SIGKILL; with --init the command is not pid 1
    assert p("run", "--rm", IMG, "sh", "-c", "kill -9 $$").rc == 0
    assert p("run", "--rm", "--init", IMG, "sh", "-c", "kill -9 $$", check=False).rc == 137
    # an orphan that exits: the init reaps it, a plain `sleep` as pid 1 leaves a zombie
    script = "(sleep 0.2 &); exec sleep 1000"
    plain, inited = detached(p, IMG, "sh", "-c", script), detached(p, "--init", IMG, "sh", "-c", script)
    try:
        def procs(cid: str) -> list[str]:
            return p("exec", cid, "ps", "-o", "stat,args").out.splitlines()[1:]
        poll(lambda: any(l.startswith("Z") for l in procs(plain)), 10, what="a zombie without --init")
        poll(lambda: not any("sleep 0.2" in l or l.startswith("Z") for l in procs(inited)), 10,
             what="the orphan reaped with --init")
        time.sleep(0.3)
        assert not any(l.startswith("Z") for l in procs(inited)), procs(inited)
    finally:
        p("rm", "-f", plain, inited)


def test_cidfile(p, tmp_path):
    path = tmp_path / "cid"
    cid = detached(p, "--cidfile", str(path), IMG, "true")
    try:
        assert path.read_text() == cid
        res = p("run", "--cidfile", str(path), IMG, "true", check=False)
        assert res.rc == 125 and str(path) in res.err
    finally:
        p("rm", "-f", cid)


def test_healthchecks(p):
    good = detached(p, "--health-cmd", "true", "--health-interval", "1s", IMG, "sleep", "1000")
    bad = detached(p, "--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1", IMG, "sleep", "1000")
    try:
        poll(lambda: fmt(p, good, "{{.State.Health.Status}}") == "healthy", 15, 0.2, "healthy")
        poll(lambda: fmt(p, bad, "{{.State.Health.Status}}") == "unhealthy", 15, 0.2, "unhealthy")
        assert fmt(p, good, "{{.State.Health.Status}}") == "healthy"
        assert p("ps", "-q", "--no-trunc", "--filter", "health=unhealthy").out == bad + "\n"
        assert p("ps", "--filter", f"id={good}", "--format", "{{.Status}}").out.endswith("(healthy)\n")
    finally:
        p("rm", "-f", good, bad)


def test_name_conflict(p):
    cid = p("create", "--name", "taken", IMG, "true").out.strip()
    try:
        res = p("run", "--name", "taken", IMG, "true", check=False)
        assert res.rc == 125 and res.err.count("\n") == 1 and res.err.startswith("Error: ") and "taken" in res.err
        assert p("ps", "-a", "-q", "--filter", "name=taken").out.strip() == cid[:12]
    finally:
        p("rm", "-f", cid)


def test_rm_exit_codes_are_podmans(p):
    """rm: 1 for a container that does not exist, 2 for a running one without --force; -i ignores the first."""
    missing = p("rm", "no-such-ctr-rm", check=False)
    assert missing.rc == 1 and missing.err.startswith("Error: ") and "no-such-ctr-rm" in missing.err
    assert p("rm", "-i", "no-such-ctr-rm", check=False).rc == 0
    cid = detached(p, "--name", "rm-running", IMG, "sleep", "1000")
    try:
        running = p("rm", "rm-running", check=False)
        assert running.rc == 2 and "--force" in running.err
        assert p("ps", "-q", "--filter", "name=rm-running").out.strip() == cid[:12]
    finally:
        p("rm", "-f", cid)
    assert p("ps", "-aq", "--filter", "name=rm-running").out.strip() == ""


def test_pause_rootless_is_a_clear_error(p):
    cid = detached(p, IMG, "sleep", "1000")
    try:
        res = p("pause", cid, check=False)
        assert res.rc == 125 and res.err.count("\n") == 1 and res.err.startswith("Error: ") and "cgroup" in res.err
        assert fmt(p, cid, "{{.State.Status}}") == "running"
    finally:
        p("rm", "-f", cid)


# ------------------------------------------------------------------------------------------- rootful
@pytest.mark.rootful
def test_rootful_run_exit_codes_ps_rm(p):
    assert os.geteuid() == 0
    for cmd, code in ((["true"], 0), (["sh", "-c", "exit 32"], 32), (["nope"], 127), (["/tmp"], 126)):
        assert p("run", "--rm", IMG, *cmd, check=False).rc == code, cmd
    assert p("run", "--rm", IMG, "id", "-u").out == "0\n"
    cid = detached(p, "--name", "root-ctr", IMG, "sleep", "1000")
    assert p("ps", "--filter", "name=root-ctr", "--format", "{{.Names}} {{.State}}").out == "root-ctr running\n"
    pid = int(fmt(p, cid, "{{.State.Pid}}"))
    assert os.stat(f"/proc/{pid}").st_uid == 0 and Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00"
    p("rm", "-f", cid)
    assert p("ps", "-a", "-q", "--filter", "name=root-ctr").out == ""
    assert not (p.root / "containers" / cid).exists() and proc_cmdlines_with(cid) == []


@pytest.mark.rootful
def test_rootful_memory_limit_in_stats(p):
    cid = detached(p, "--memory", "32m", IMG, "sleep", "1000")
    try:
        stats = json.loads(p("stats", "--no-stream", "--format", "json", cid).out)
        assert stats[0]["memory_limit"] == 32 * 1024 * 1024 and stats[0]["pids"] >= 1, stats
        table = p("stats", "--no-stream", cid).out.splitlines()
        assert "LIMIT" in table[0] and cid[:12] in table[1] and "--" not in table[1].split("/")[-1], table
    finally:
        p("rm", "-f", cid)


@pytest.mark.rootful
def test_rootful_pause_unpause(p):
    cid = detached(p, IMG, "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done")
    try:
        poll(lambda: p("logs", cid).out.count("\n") >= 3, what="the counter")
        p("pause", cid)
        assert fmt(p, cid, "{{.State.Status}}") == "paused"
        assert p("ps", "--filter", f"id={cid}", "--format", "{{.Status}}").out.rstrip().endswith("(Paused)")
        frozen = p("logs", cid).out
        time.sleep(0.6)  # a dozen lines would have come meanwhile
        assert p("logs", cid).out == frozen
        p("unpause", cid)
        assert fmt(p, cid, "{{.State.Status}}") == "running"
        poll(lambda: p("logs", cid).out.count("\n") > frozen.count("\n") + 3, what="the counter again")
    finally:
        p("rm", "-f", cid)


def test_external_runtime_runs_the_same_config(p):
    """--runtime runs the bundle's config.json with runc (installed by .ci/run): output, exit code, exec, stop."""
    res = p("run", "--rm", "--runtime", "/usr/bin/runc", IMG, "sh", "-c", "echo via runc; hostname; exit 3",
            check=False)
    lines = res.out.splitlines()
    assert res.rc == 3 and lines[0] == "via runc" and re.fullmatch(r"[0-9a-f]{12}", lines[1]), res
    cid = detached(p, "--runtime", "/usr/bin/runc", IMG, "sleep", "1000")
    try:
        assert fmt(p, cid, "{{.OCIRuntime}}") == "/usr/bin/runc"
        assert p("exec", cid, "cat", "/proc/1/cmdline").out.startswith("sleep")
        p("stop", "-t", "1", cid)
        assert fmt(p, cid, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    finally:
        p("rm", "-f", cid)
