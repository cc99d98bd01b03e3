"""The pinnace CLI as a test runs it: one isolated store (--root/--runroot, its own HOME). Used by the
fixtures in tests/conftest.py and by tests that need several stores of their own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testenv import PINNACE_BIN


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
