"""Smoke test of the PyInstaller one-file executable (packaging/build → dist/pinnace).

The frozen binary is run exactly as a user would: fresh processes for each command, so that the
helper processes (namespace holder) started by one command serve the next one after the first has
exited — which is where one-file executables break (their unpacked _MEI directory is deleted when
the process that unpacked it exits).

$PINNACE_FROZEN_BIN names the executable. Under CI (CI=true) a missing one is a failure; elsewhere
the module is skipped, since developers do not build it for every test run.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import pinnace

FROZEN_BIN = os.environ.get("PINNACE_FROZEN_BIN", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REGISTRY = os.environ.get("PINNACE_TEST_REGISTRY", "127.0.0.1:5000")
BUSYBOX = f"{REGISTRY}/fixtures/busybox"


@pytest.fixture(scope="module")
def frozen_bin() -> str:
    if not FROZEN_BIN:
        if IN_CI:
            pytest.fail("PINNACE_FROZEN_BIN is not set: CI must build dist/pinnace (packaging/build) and export it")
        pytest.skip("PINNACE_FROZEN_BIN not set (build with packaging/build, then export PINNACE_FROZEN_BIN=dist/pinnace)")
    path = Path(FROZEN_BIN)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"PINNACE_FROZEN_BIN={FROZEN_BIN} is not an executable file")
    return str(path.resolve())


class Frozen:
    """The frozen executable against one isolated store, with a clean environment of its own."""

    def __init__(self, exe: str, base: Path):
        self.exe, self.root, self.runroot, self.home = exe, base / "root", base / "run", base / "home"
        for p in (self.root, self.runroot, self.home):
            p.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        # no python of the venv on PATH: the executable must not need one
        self.env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
        self.env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"),
                        REGISTRY_AUTH_FILE=str(self.home / "auth.json"))

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        cmd = [self.exe, "--root", str(self.root), "--runroot", str(self.runroot), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"frozen pinnace {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def close(self) -> None:
        self("system", "reset", "--force", check=False)
        try:
            os.kill(int((self.runroot / "holder.pid").read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def frozen(frozen_bin: str, tmp_path: Path):
    f = Frozen(frozen_bin, tmp_path)
    yield f
    f.close()


def test_version_matches_package(frozen: Frozen):
    proc = subprocess.run([frozen.exe, "--version"], capture_output=True, text=True, env=frozen.env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(rf"(^|\s){re.escape(pinnace.__version__)}(\s|$)", proc.stdout), proc.stdout


def test_pull_images_inspect_reset(frozen: Frozen, fixtures_info: dict):
    want = fixtures_info["busybox"]
    config_hex = want["config"].removeprefix("sha256:")

    pulled = frozen("pull", "-q", BUSYBOX)
    assert pulled.stdout.strip(), f"pull -q printed no image ID; stderr: {pulled.stderr}"
    image_id = pulled.stdout.strip().splitlines()[-1].removeprefix("sha256:")
    assert len(image_id) >= 12 and config_hex.startswith(image_id), pulled.stdout

    # each of these is a new process: the helpers left by `pull` must still work
    listed = frozen("images", "--digests")
    assert BUSYBOX in listed.stdout and "latest" in listed.stdout, listed.stdout
    assert want["digest"] in listed.stdout, listed.stdout

    ids = frozen("images", "-q").stdout.split()
    assert len(ids) == 1 and config_hex.startswith(ids[0].removeprefix("sha256:")), ids

    inspected = frozen("image", "inspect", BUSYBOX)
    assert config_hex in inspected.stdout and want["digest"] in inspected.stdout

    again = frozen("pull", "-q", BUSYBOX)  # warm: only the manifest is fetched
    assert again.stdout.strip().splitlines()[-1].removeprefix("sha256:") == image_id

    frozen("system", "reset", "--force")
    assert frozen("images", "-q").stdout.strip() == ""


def test_unshare_gets_host_environment(frozen: Frozen):
    """Commands run by the frozen binary (newuidmap, `unshare CMD`) must not inherit PyInstaller's
    LD_LIBRARY_PATH pointing into its private _MEI directory."""
    env_out = frozen("unshare", "env").stdout
    leaked = [line for line in env_out.splitlines() if "_MEI" in line or line.startswith("_PYI")]
    assert leaked == [], leaked
    uid_map = frozen("unshare", "cat", "/proc/self/uid_map").stdout.split()
    assert uid_map, "unshare cat /proc/self/uid_map printed nothing"
    assert uid_map[:3] == ["0", str(os.getuid()), "1"], uid_map
    if os.getuid() != 0:
        # the full subordinate range, mapped through newuidmap (a host helper run from the frozen binary)
        assert len(uid_map) >= 6 and uid_map[5] == "65536", uid_map


def test_containers_from_the_frozen_binary(frozen: Frozen):
    """The supervisor is re-executed from the one-file binary (`__supervise` role): attached, detached,
    exec and logs must all work from it."""
    frozen("pull", "-q", BUSYBOX)
    attached = frozen("run", "--rm", BUSYBOX, "sh", "-c", "echo hi; exit 7", check=False)
    assert (attached.returncode, attached.stdout) == (7, "hi\n"), attached.stderr
    cid = frozen("run", "-d", BUSYBOX, "sh", "-c", "echo from-detached; sleep 60").stdout.strip()
    try:
        assert "sleep" in frozen("exec", cid, "cat", "/proc/1/cmdline").stdout  # sh execs its last command
        deadline = time.monotonic() + 10
        while "from-detached" not in frozen("logs", cid).stdout:
            assert time.monotonic() < deadline, "no output in the log"
            time.sleep(0.1)
    finally:
        frozen("rm", "-f", cid)
    assert frozen("ps", "-aq").stdout.strip() == ""
