"""The detached per-container supervisor on its own (no container record): logs, exit status in
state.json, and its memory. The CLI-level behaviour is in tests/system/test_containers.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testenv import PINNACE_BIN

from pinnace.runtime.logfile import read_log

pytestmark = pytest.mark.anyuser

DRIVER = Path(__file__).resolve().parents[1] / "support" / "start_detached.py"


@pytest.fixture(scope="module")
def image(busybox_image):
    return busybox_image


def _base(pinnace) -> list[str]:
    return [PINNACE_BIN, "--root", str(pinnace.root), "--runroot", str(pinnace.runroot)]


def start(image, workdir: Path, *command: str) -> int:
    pinnace, lowerdir, config = image
    env = {**pinnace.env, "PINNACE_TEST_ROOTLESS": "1" if os.getuid() != 0 else "0",
           "PYTHONPATH": str(DRIVER.parent)}
    opts = json.dumps({"command": list(command), "image_config": config, "hostname": "box"})
    res = subprocess.run([*_base(pinnace), "unshare", sys.executable, str(DRIVER), lowerdir, str(workdir), opts,
                          str(pinnace.runroot)], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


def wait_exit(workdir: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    state_file = workdir / "bundle" / "state.json"
    while True:
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        if state.get("status") == "exited":
            return int(state["exit_code"])
        assert time.monotonic() < deadline, "the container did not exit"
        time.sleep(0.05)


@pytest.fixture
def workdir(image, tmp_path):
    yield tmp_path / "ctr"
    subprocess.run([*_base(image[0]), "unshare", "umount", "-l", str(tmp_path / "ctr" / "merged")],
                   capture_output=True, env=image[0].env)


def test_detached_container_logs_and_exit_code(image, workdir):
    start(image, workdir, "sh", "-c", "echo out; echo err >&2; echo -n partial; exit 3")
    assert wait_exit(workdir) == 3
    lines = read_log(str(workdir / "bundle" / "ctr.log"))
    assert sorted((l.stream, l.text) for l in lines) == [("stderr", b"err\n"), ("stdout", b"out\n"),
                                                        ("stdout", b"partial")]


def test_supervisor_outlives_its_starter_and_stays_small(image, workdir):
    pid = start(image, workdir, "sleep", "2")  # the starter (`pinnace unshare …`) has exited by now
    with open(f"/proc/{pid}/stat") as f:
        supervisor = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{supervisor}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    rss_kib = int(status["VmRSS"].split()[0])
    print(f"supervisor RSS {rss_kib} KiB")
    assert rss_kib <= 12 * 1024, f"supervisor RSS {rss_kib} KiB"
    assert wait_exit(workdir) == 0
