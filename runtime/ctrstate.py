"""A container's mutable state: `state.json` in its directory, written whole (temp + rename) by whoever
changes it — the CLI (created, stopping), the supervisor (running, exited, restarts). Import-light (os,
json, time): the supervisor uses it.

Liveness is never trusted from the file alone: a pid is alive only if /proc/PID still has the start time
we recorded (pids are reused), so a supervisor killed with -9 shows up as such.
"""
from __future__ import annotations

import json
import os
import time

STATE_NAME = "state.json"
CREATED, RUNNING, PAUSED, STOPPING, EXITED = "created", "running", "paused", "stopping", "exited"
RESTARTING = "restarting"   # the supervisor waits out the restart policy's backoff


def now_rfc3339() -> str:
    ns = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"


def read_state(container_dir: str) -> dict:
    try:
        with open(os.path.join(container_dir, STATE_NAME)) as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {"status": CREATED}
    except (OSError, ValueError):
        return {"status": CREATED}


def write_state(container_dir: str, state: dict) -> None:
    tmp = os.path.join(container_dir, f".{STATE_NAME}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, os.path.join(container_dir, STATE_NAME))


def update_state(container_dir: str, **changes: object) -> dict:
    """Read, change, write. Callers that race (CLI and supervisor) hold the container's lock."""
    state = read_state(container_dir)
    state.update(changes)
    write_state(container_dir, state)
    return state


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks since boot): with the pid, a process's identity."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None  # a zombie has finished: as good as gone
    return int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and start is not None and start_time(pid) == start


def effective_state(cdir: str) -> dict:
    """state.json corrected by what /proc says: a dead supervisor and a dead container mean exited."""
    state = read_state(cdir)
    if state.get("status") == RESTARTING:
        if not alive(state.get("supervisor_pid"), state.get("supervisor_start")):
            state = {**state, "status": EXITED, "orphaned": True}
        return state
    if state.get("status") in (RUNNING, PAUSED, STOPPING):
        sup_alive = alive(state.get("supervisor_pid"), state.get("supervisor_start"))
        ctr_alive = alive(state.get("pid"), state.get("pid_start"))
        if not ctr_alive and not sup_alive:
            state = {**state, "status": EXITED, "exit_code": state.get("exit_code", -1)
                     if state.get("pid") == 0 else -1, "orphaned": True}
        elif not ctr_alive and sup_alive:
            state = {**state, "status": STOPPING}  # exited; the supervisor is cleaning up
        elif not sup_alive:
            state = {**state, "orphaned": True}
    return state


def is_running(state: dict) -> bool:
    return state.get("status") in (RUNNING, PAUSED)
