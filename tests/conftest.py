"""Shared fixtures: the pinnace CLI as a user runs it, isolated stores, the fixture images and registries.

Tests run as whoever runs pytest: tests/run runs them as the unprivileged test user (rootless) and the
`rootful` ones again as root. Nothing here skips for a missing prerequisite: a missing fixture is a failure.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR / "support"))

from testenv import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, FIXTURES_DIR, PINNACE_BIN, REGISTRY  # noqa: E402,F401


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Pinnace:
    """Runs the real `pinnace` executable against one isolated store (--root/--runroot)."""

    def __init__(self, root: Path, runroot: Path, home: Path):
        self.root, self.runroot, self.home = root, runroot, home
        for p in (root, runroot, home):
            p.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        # auth.json and registries.conf of this store's "user" stay inside the test's home
        self.env.update({
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "REGISTRY_AUTH_FILE": str(home / "auth.json"),
        })
        self.env.pop("DOCKER_CONFIG", None)

    def run(self, *args: str, input: bytes | str | None = None, check: bool = True,
            timeout: float = 300, env: dict | None = None) -> Result:
        cmd = [PINNACE_BIN, "--root", str(self.root), "--runroot", str(self.runroot), *args]
        if isinstance(input, str):
            input = input.encode()
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                              env={**self.env, **(env or {})})
        res = Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))
        if check and res.rc != 0:
            raise AssertionError(f"pinnace {' '.join(args)} exited {res.rc}\nstdout: {res.out}\nstderr: {res.err}")
        return res

    __call__ = run

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        cmd = [PINNACE_BIN, "--root", str(self.root), "--runroot", str(self.runroot), *args]
        return subprocess.Popen(cmd, env=self.env, **kw)

    def close(self) -> None:
        """Remove everything the store holds (inside the user namespace), then stop its namespace holder."""
        subprocess.run([PINNACE_BIN, "--root", str(self.root), "--runroot", str(self.runroot),
                        "system", "reset", "--force"], env=self.env, capture_output=True, timeout=120)
        pidfile = self.runroot / "holder.pid"
        try:
            os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="session")
def fixtures_info() -> dict:
    """images.json written by ../shared/fixtures/make-images (digests, diff_ids, sizes)."""
    path = FIXTURES_DIR / "images.json"
    if not path.exists():
        pytest.fail(f"fixture images missing: {path} (run ../shared/fixtures/make-images --with-debian)")
    return json.loads(path.read_text())


@pytest.fixture
def pinnace(tmp_path: Path):
    """A fresh, empty store for one test."""
    p = Pinnace(tmp_path / "root", tmp_path / "run", tmp_path / "home")
    yield p
    p.close()


@pytest.fixture(scope="module")
def module_pinnace(tmp_path_factory):
    """One store shared by the tests of a module (cheaper when they only read)."""
    base = tmp_path_factory.mktemp("store")
    p = Pinnace(base / "root", base / "run", base / "home")
    yield p
    p.close()


@pytest.fixture(scope="module")
def busybox_image(module_pinnace):
    """(store, the image's LowerDir, its config) for tests that run the runtime on the fixture busybox."""
    ref = f"{REGISTRY}/fixtures/busybox:latest"
    module_pinnace("pull", "-q", ref)
    data = module_pinnace("image", "inspect", ref).json()[0]
    config = json.loads((module_pinnace.root / "blobs" / "sha256" / data["Id"][7:]).read_bytes())
    return module_pinnace, data["GraphDriver"]["Data"]["LowerDir"], config
