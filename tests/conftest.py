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


from pinnace_cli import Pinnace, Result  # noqa: E402,F401 - the CLI driver (tests/support)


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
