"""Constants every test shares: where the fixtures are, which registries to use, which executable to run."""
from __future__ import annotations

import os
import sys
from pathlib import Path

FIXTURES_DIR = Path(
    os.environ.get("PINNACE_FIXTURES_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pinnace-fixtures"
)
REGISTRY = os.environ.get("PINNACE_TEST_REGISTRY", "127.0.0.1:5000")
AUTH_REGISTRY = os.environ.get("PINNACE_TEST_AUTH_REGISTRY", "127.0.0.1:5001")
AUTH_USER, AUTH_PASSWORD = "tester", "secret"
PINNACE_BIN = os.environ.get("PINNACE_BIN") or str(Path(sys.executable).with_name("pinnace"))
