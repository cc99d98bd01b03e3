"""Our own OCI runtime (runtime/executor.py) running the fixture busybox image: exit codes and isolation.

Issue-3 groundwork: the CLI has no `run` yet, so the tests drive the runtime through `pinnace unshare`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "run_container.py"


@pytest.fixture(scope="module")
def image(busybox_image):
    return busybox_image


def run(image, tmp_path, *command: str, **opts) -> subprocess.CompletedProcess:
    pinnace, lowerdir, config = image
    opts = {"command": list(command), "image_config": config, "hostname": "box", **opts}
    env = {**pinnace.env, "PINNACE_TEST_ROOTLESS": "1" if os.getuid() != 0 else "0",
           "PYTHONPATH": str(DRIVER.parent)}
    cmd = [*pinnace_argv(pinnace), "unshare", sys.executable, str(DRIVER), lowerdir, str(tmp_path / "ctr"),
           json.dumps(opts)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)


def pinnace_argv(pinnace) -> list[str]:
    from testenv import PINNACE_BIN
    return [PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot)]


@pytest.mark.parametrize("command,code", [
    (["true"], 0), (["false"], 1), (["sh", "-c", "exit 32"], 32), (["no-such-command"], 127),
    (["/bin"], 126),
    # pid 1 ignores signals sent from inside its namespace (as in Docker): a child shell is killed instead
    (["sh", "-c", "sh -c 'kill -9 $$'; exit $?"], 137),
])
def test_exit_codes(image, tmp_path, command, code):
    res = run(image, tmp_path, *command)
    assert res.returncode == code, res.stderr


def test_pid_namespace_hostname_and_identity(image, tmp_path):
    res = run(image, tmp_path, "sh", "-c", "echo $$; hostname; id -u; ls /proc | grep -c '^[0-9]'")
    assert res.returncode == 0, res.stderr
    pid, host, uid, nprocs = res.stdout.split()
    assert (pid, host, uid) == ("1", "box", "0")
    assert int(nprocs) <= 3  # sh, ls, grep: nothing of the host
    res = run(image, tmp_path, "id", user="app")
    assert res.stdout.startswith("uid=1000(app) gid=1000(app)"), res.stdout + res.stderr


def test_isolation(image, tmp_path):
    # masked and read-only kernel paths, the bounding set, no host files
    res = run(image, tmp_path, "sh", "-c",
              "cat /proc/keys /proc/timer_list 2>/dev/null | wc -c; "
              "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo wrote; "
              "grep CapBnd /proc/self/status; ls /home; echo > /sys/kernel/test 2>/dev/null && echo wrote-sys; true")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0].strip() == "0"                  # masked: /dev/null bound over them
    assert "wrote" not in res.stdout
    bounding = int(lines[1].split()[1], 16)
    from pinnace.runtime.spec import ALL_CAPS, DEFAULT_CAPS
    assert bounding == sum(1 << ALL_CAPS.index(c) for c in DEFAULT_CAPS)
    assert lines[2].split() == ["app"]              # the image's /home, not the host's


def test_read_only_root_and_writes_in_the_upper_layer(image, tmp_path):
    res = run(image, tmp_path, "sh", "-c", "touch /x", readonly=True)
    assert res.returncode != 0 and "Read-only" in res.stderr
    res = run(image, tmp_path, "sh", "-c", "echo hi > /note && mount -o remount,rw / 2>/dev/null; cat /note")
    assert res.returncode == 0 and res.stdout == "hi\n", res.stderr
    assert (tmp_path / "ctr" / "upper" / "note").read_text() == "hi\n"  # the write went to the upper layer


def test_missing_user_is_a_setup_error(image, tmp_path):
    res = run(image, tmp_path, "true", user="ghost")
    assert res.returncode != 0 and "ghost" in res.stderr


# an orphan (the backgrounded sleep, whose parent shell exits at once) is reparented to pid 1; a checker
# counts zombies while the main command has become `sleep`, which never waits for anything
ORPHAN = ("sh -c 'sleep 0.1 &'; (sleep 1; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l) & exec sleep 2")


def test_init_forwards_signals_and_reaps_orphans(image, tmp_path):
    # without --init the command is pid 1, which a signal sent from inside the namespace cannot kill
    res = run(image, tmp_path, "sh", "-c", "kill -TERM $$; echo alive")
    assert res.returncode == 0 and res.stdout == "alive\n"
    res = run(image, tmp_path, "sh", "-c", "kill -TERM $$; echo alive", init=True)
    assert res.returncode == 143 and res.stdout == ""
    # an orphan is reparented to pid 1, which reaps it: no zombie is left
    res = run(image, tmp_path, "sh", "-c", ORPHAN, init=True)
    assert res.returncode == 0 and res.stdout.strip() == "0", res.stdout + res.stderr
    assert run(image, tmp_path, "sh", "-c", "exit 7", init=True).returncode == 7


def test_without_init_an_orphan_stays_a_zombie(image, tmp_path):
    # the contrast that makes the reaping test above mean something: `sleep` as pid 1 reaps nothing
    res = run(image, tmp_path, "sh", "-c", ORPHAN)
    assert res.returncode == 0 and res.stdout.strip() == "1", res.stdout + res.stderr
