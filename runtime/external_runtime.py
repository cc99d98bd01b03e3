"""`--runtime PATH`: the container's config.json run by an external OCI runtime (crun, runc) instead of
runtime/executor.py, from the supervisor."""
from __future__ import annotations

import json
import os
import time


def start_external(runtime: str, bundle: str, cid: str, stdio: tuple[int, int, int]) -> tuple[int, int, int | None]:
    """Start `runtime run --bundle BUNDLE CID`; return (the runtime's pid, the container's init pid, and the
    runtime's wait status if it already ended). The caller waits for the runtime's process (it forwards
    signals and exits with the container's status) and uses the init (from `state`) for signals and exec."""
    state_dir = os.path.join(bundle, "runtime")
    os.makedirs(state_dir, exist_ok=True)
    pid = os.fork()
    if pid == 0:
        try:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            os.execv(runtime, [runtime, "--root", state_dir, "run", "--bundle", bundle, cid])
        finally:
            os._exit(127)
    import subprocess
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run([runtime, "--root", state_dir, "state", cid], capture_output=True)
        if out.returncode == 0:
            init = int(json.loads(out.stdout).get("pid") or 0)
            if init:
                return pid, init, None
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:  # already over (a short command): its status is the container's
            return pid, pid, status
        time.sleep(0.01)
    return pid, pid, None
