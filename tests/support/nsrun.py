"""Run small Python programs as the unprivileged test user, typically joined to a namespace holder.

setns(2) into a user namespace changes the process for good and needs a single-threaded process, so
tests never join from the pytest process: each step is a fresh `python -c` subprocess. When pytest runs
as root, the programs run as the test user (`pinnacetest`, or $PINNACE_TEST_USER) in a directory given
to that user, so these tests mean the same thing in the root pass and in the rootless pass.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

TEST_USER = os.environ.get("PINNACE_TEST_USER", "pinnacetest")

PROLOGUE = """\
import json, os, sys
from pathlib import Path
from pinnace.runtime import userns
RUNROOT, BASE = Path(sys.argv[1]), Path(sys.argv[2])
ARGS = sys.argv[3:]
"""


@dataclass(frozen=True)
class NsUser:
    name: str
    uid: int
    gid: int
    subuid: int  # first subordinate uid (/etc/subuid), container uid 1
    subgid: int
    count: int


def _first_range(path: str, name: str, uid: int) -> tuple[int, int]:
    for line in Path(path).read_text().splitlines():
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in (name, str(uid)):
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"{path} has no range for {name}: the rootless tests need one")


def ns_user() -> NsUser:
    pw = pwd.getpwuid(os.geteuid()) if os.geteuid() != 0 else pwd.getpwnam(TEST_USER)
    subuid, count = _first_range("/etc/subuid", pw.pw_name, pw.pw_uid)
    subgid, _ = _first_range("/etc/subgid", pw.pw_name, pw.pw_uid)
    return NsUser(pw.pw_name, pw.pw_uid, pw.pw_gid, subuid, subgid, count)


class NsArea:
    """A directory owned by the test user with a runroot (`run/`) for its own holder."""

    def __init__(self, tmp_path: Path):
        self.user = ns_user()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            self.base = Path(tempfile.mkdtemp(prefix="pinnace-ns-", dir="/var/tmp"))
            os.chown(self.base, self.user.uid, self.user.gid)
        else:
            self.base = tmp_path / "ns"
            self.base.mkdir()
        self.runroot = self.base / "run"
        self.env = {k: v for k, v in os.environ.items() if k != "PINNACE_IGNORE_SUBUID"}
        if self.as_root:
            home = pwd.getpwnam(self.user.name).pw_dir
            self.env.update(HOME=home, USER=self.user.name, LOGNAME=self.user.name,
                            XDG_RUNTIME_DIR=f"/run/user/{self.user.uid}")

    def popen(self, code: str, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
        argv = [sys.executable, "-c", PROLOGUE + textwrap.dedent(code), str(self.runroot), str(self.base),
                *args]
        if self.as_root:
            kw.update(user=self.user.uid, group=self.user.gid, extra_groups=[])
        return subprocess.Popen(argv, cwd=self.base, env={**self.env, **(env or {})},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)

    def run(self, code: str, *args: str, env: dict | None = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run `code` (after PROLOGUE) to completion; its stdout/stderr are captured, so a holder that
        kept them open would make this time out."""
        proc = self.popen(code, *args, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"program did not finish in {timeout}s:\n{code}") from None
        res = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
        if check and res.returncode != 0:
            raise AssertionError(f"program failed ({res.returncode}):\n{code}\nstdout: {res.stdout}\n"
                                 f"stderr: {res.stderr}")
        return res

    def holder_pid(self) -> int:
        return int((self.runroot / "holder.pid").read_text().split()[0])

    def cleanup(self) -> None:
        """Stop the holder (its mounts go with it), delete subuid-owned files from inside a fresh one,
        stop that one too."""
        self.run("userns.stop_holder(RUNROOT)", check=False)
        self.run("""
            import shutil
            userns.ensure_joined(RUNROOT)
            for p in BASE.iterdir():
                if p.name != "run":
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
            """, check=False)
        self.run("userns.stop_holder(RUNROOT)", check=False)
        if self.as_root:
            shutil.rmtree(self.base, ignore_errors=True)


def alive(pid: int) -> bool:
    """True for a live, non-zombie process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")
