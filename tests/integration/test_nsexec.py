"""`exec` into a running container (runtime/nsexec.py) and healthchecks (runtime/health.py), on the fixture
busybox image, driven through tests/support/exec_driver.py inside `pinnace unshare`: one container
(`sleep 30`, hostname `box`) per module, one request per test.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testenv import PINNACE_BIN

from pinnace.runtime.health import HealthConfig, to_json

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "exec_driver.py"


class Driver:
    def __init__(self, image, workdir: Path):
        pinnace, lowerdir, config = image
        workdir.mkdir(parents=True)
        (workdir / "image_config.json").write_text(json.dumps(config))
        env = {**pinnace.env, "PINNACE_TEST_ROOTLESS": "1" if os.getuid() != 0 else "0",
               "PYTHONPATH": str(DRIVER.parent)}
        self.stderr = open(workdir / "driver.err", "w+")
        self.proc = subprocess.Popen(
            [PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot), "unshare",
             sys.executable, str(DRIVER), lowerdir, str(workdir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env)
        self.pid = self._answer(60)["pid"]

    def _answer(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stderr.seek(0)
            raise AssertionError(f"exec driver gave no answer; stderr:\n{self.stderr.read()}")
        return json.loads(line)

    def call(self, op: str, timeout: float = 20, **req) -> dict:
        self.proc.stdin.write((json.dumps({"op": op, **req}) + "\n").encode())
        self.proc.stdin.flush()
        return self._answer(timeout)

    def exec(self, *args: str, **process) -> dict:
        opts = {k: process.pop(k) for k in ("detach", "pty", "pid") if k in process}
        return self.call("exec", process={"args": list(args), **process}, **opts)

    def close(self) -> None:
        try:
            self.proc.stdin.write(b'{"op": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


@pytest.fixture(scope="module")
def ctr(busybox_image, tmp_path_factory):
    driver = Driver(busybox_image, tmp_path_factory.mktemp("nsexec") / "ctr")
    yield driver
    driver.close()
    assert driver.proc.returncode == 0


# -- exec ---------------------------------------------------------------------------------------------------
def test_exec_sees_the_container(ctr):
    res = ctr.exec("sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline; echo; echo $$; hostname; cat /home/app/hello.txt; "
                   "echo $FOO; pwd; ls /proc | grep -c '^[0-9]'",
                   env=["PATH=/bin:/usr/bin", "FOO=from exec"], cwd="/home/app")
    assert res["code"] == 0, res
    cmdline, pid, host, hello, foo, cwd, nprocs = res["out"].splitlines()
    assert cmdline.strip() == "sleep 30"      # pid 1 is the container's init: its own pid namespace
    assert 1 < int(pid) < 20                   # a pid of the container's namespace, not the host's
    assert int(pid) != ctr.pid
    assert (host, hello, foo, cwd) == ("box", "hello from app", "from exec", "/home/app")
    assert int(nprocs) <= 5                    # sleep, sh, ls, grep: nothing of the host


def test_exec_ps_lists_only_the_container(ctr):
    res = ctr.exec("ps", "-o", "pid,args")
    assert res["code"] == 0, res
    rows = [line.split(None, 1) for line in res["out"].splitlines()[1:]]
    assert rows[0] == ["1", "sleep 30"]
    assert [r[1] for r in rows[1:]] == ["ps -o pid,args"]


def test_exec_gets_only_its_stdio(ctr):
    # the driver holds an inheritable fd, as a supervisor may: it must not reach the container
    res = ctr.exec("ls", "/proc/self/fd")
    assert res["code"] == 0, res
    assert sorted(res["out"].split()) == ["0", "1", "2", "3"]  # 3: the directory ls is reading


def test_exec_user_capabilities_and_rlimits(ctr):
    res = ctr.exec("sh", "-c", "id -u; id -G; grep CapEff /proc/self/status; ulimit -n",
                   user={"uid": 1000, "gid": 1000, "additionalGids": [65534]},
                   rlimits=[{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1000}])
    assert res["code"] == 0, res
    uid, groups, capeff, nofile = res["out"].splitlines()
    assert uid == "1000" and set(groups.split()) == {"1000", "65534"}
    assert capeff.split()[1] == "0000000000000000"
    assert nofile == "512"
    res = ctr.exec("sh", "-c", "grep CapEff /proc/self/status")  # root in the container: the default set
    from pinnace.runtime.spec import ALL_CAPS, DEFAULT_CAPS
    assert int(res["out"].split()[1], 16) == sum(1 << ALL_CAPS.index(c) for c in DEFAULT_CAPS)


@pytest.mark.parametrize("args,code,message", [
    (["no-such-command"], 127, "no-such-command: executable file not found in $PATH"),
    (["/bin"], 126, "/bin: Permission denied"),
    (["sh", "-c", "exit 32"], 32, ""),
    (["sh", "-c", "kill -9 $$"], 137, ""),
])
def test_exec_exit_codes(ctr, args, code, message):
    res = ctr.exec(*args)
    assert res["code"] == code, res
    assert res["err"] == (f"Error: {message}\n" if message else ""), res


def test_exec_bad_working_dir_and_gone_container(ctr):
    res = ctr.exec("true", cwd="/no/such/dir")
    assert res["code"] == 125
    assert res["err"].startswith("Error: ") and "/no/such/dir" in res["err"] and res["err"].count("\n") == 1
    gone = subprocess.Popen(["true"])
    gone.wait()
    res = ctr.exec("true", pid=gone.pid)
    assert res["code"] == 125
    assert res["err"] == f"Error: exec in container process {gone.pid}: the container is not running\n"


def test_exec_with_a_terminal(ctr):
    res = ctr.exec("sh", "-c", "cat /proc/self/stat; true", pty=True)
    assert res["code"] == 0, res
    stat = res["out"].strip()
    pid = stat.split()[0]
    _, ppid, pgrp, session, tty_nr = stat.rsplit(")", 1)[1].split()[:5]
    # cat is a child of the shell, which leads its own session with the pty as controlling terminal
    assert int(tty_nr) != 0 and session == ppid and pid != session


def test_exec_detached(ctr):
    ctr.exec("rm", "-f", "/tmp/detached")
    res = ctr.exec("sh", "-c", "sleep 0.5; echo done > /tmp/detached", detach=True)
    assert res["code"] == 0, res
    assert res["seconds"] < 0.4                # returned before the command finished
    assert ctr.exec("cat", "/tmp/detached")["code"] == 1
    time.sleep(0.8)
    assert ctr.exec("cat", "/tmp/detached")["out"] == "done\n"
    res = ctr.exec("no-such-command", detach=True)  # a failure to exec is still reported
    assert res["code"] == 127 and "executable file not found" in res["err"]


def test_exec_signals_reach_the_command(ctr):
    res = ctr.call("signal", process={"args": ["sh", "-c", "trap 'kill $!; exit 7' TERM; sleep 11 & wait"]},
                   signal=signal.SIGTERM, after=0.3, marker="sleep 11")
    assert res["before"], res                  # it ran …
    assert res["code"] == 7                    # … and the command itself got the SIGTERM sent to the pid
    assert res["leftover"] == []
    res = ctr.call("signal", process={"args": ["sleep", "12"]}, signal=signal.SIGKILL, after=0.3, marker="sleep 12")
    assert res["before"], res
    assert res["code"] == 137
    assert res["leftover"] == []               # SIGKILL of the intermediate takes the command along


@pytest.mark.rootful
def test_exec_joins_the_container_cgroup(ctr):
    # the engine puts a container with limits into a cgroup of its own: here, by hand, as root
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    base, controllers = ("/sys/fs/cgroup", "") if v2 else ("/sys/fs/cgroup/pids", "pids")
    own = next(line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.split(":")[1] == controllers)
    cg = Path(base) / f"pinnace-nsexec-{os.getpid()}"
    cg.mkdir()
    try:
        (cg / "cgroup.procs").write_text(str(ctr.pid))
        res = ctr.exec("sh", "-c", "cat /proc/1/cgroup; echo ---; cat /proc/self/cgroup")
        assert res["code"] == 0, res
        init, mine = (sorted(line for line in part.splitlines() if line.split(":")[1] == controllers)
                      for part in res["out"].split("---\n"))
        assert init and init == mine
    finally:
        (Path(base + own.rstrip("/")) / "cgroup.procs").write_text(str(ctr.pid))
        cg.rmdir()


# -- healthchecks -----------------------------------------------------------------------------------------
def health(ctr, test, *, checks, interval=0.05, timeout=5.0, retries=3, start_period=0.0, **kw) -> dict:
    cfg = HealthConfig(test=tuple(test), interval=interval, timeout=timeout, retries=retries,
                       start_period=start_period)
    return ctr.call("health", cfg=to_json(cfg), checks=checks, **kw)


def test_health_success_is_healthy(ctr):
    res = health(ctr, ["CMD", "true"], checks=1)
    assert res["initial"] == {"Status": "starting", "FailingStreak": 0, "Log": []}
    assert res["statuses"] == [["healthy", 0]]
    entry = res["health"]["Log"][0]
    assert entry["ExitCode"] == 0 and entry["Output"] == ""
    assert entry["Start"] <= entry["End"] and entry["End"].endswith("Z")


def test_health_failures_reach_unhealthy(ctr):
    res = health(ctr, ["CMD-SHELL", "echo failing; exit 1"], checks=2, retries=2)
    assert res["statuses"] == [["starting", 1], ["unhealthy", 2]]
    assert [(e["ExitCode"], e["Output"]) for e in res["health"]["Log"]] == [(1, "failing\n")] * 2
    assert res["health"]["Status"] == "unhealthy"


def test_health_start_period_does_not_count(ctr):
    res = health(ctr, ["CMD", "false"], checks=3, retries=1, start_period=60)
    assert res["statuses"] == [["starting", 0]] * 3


def test_health_timeout_kills_the_check(ctr):
    res = health(ctr, ["CMD-SHELL", "sleep 6; echo never"], checks=1, timeout=0.5, retries=1, marker="sleep 6")
    assert res["statuses"] == [["unhealthy", 1]]
    entry = res["health"]["Log"][0]
    assert entry["ExitCode"] == -1 and "timed out" in entry["Output"]
    assert 0.5 <= res["seconds"] < 3
    assert res["leftover"] == []               # the check's whole process group was killed


def test_health_runs_as_the_container_process(ctr):
    res = health(ctr, ["CMD", "sh", "-c", "pwd; id -u; echo $FOO; head -c 6000 /dev/zero | tr '\\0' x"], checks=6,
                 process={"cwd": "/home/app", "env": ["FOO=bar", "PATH=/bin"],
                          "user": {"uid": 1000, "gid": 1000, "additionalGids": []}})
    log = res["health"]["Log"]
    assert len(log) == 5                       # the last five
    assert log[-1]["ExitCode"] == 0
    out = log[-1]["Output"]
    assert out.startswith("/home/app\n1000\nbar\nxxx") and len(out) == 4096
