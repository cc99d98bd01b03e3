"""Test driver for runtime/nsexec.py and runtime/health.py, run inside the namespace holder via `pinnace unshare`:

    pinnace unshare PYTHON exec_driver.py LOWERDIR(top:…:bottom) WORKDIR

Mounts an overlay rootfs, starts a container (`sleep 30`, hostname `box`) the way the supervisor does
(`executor.start(direct=True)`, this process a child subreaper), prints {"pid": INIT_PID} and then answers
one JSON request per stdin line with one JSON line on stdout:

    {"op": "exec", "process": {...overrides of the container's process}, "detach": false, "pty": false,
     "pid": TARGET (default: the container's init)}
        -> {"code", "out", "err", "seconds"}
    {"op": "signal", "process": {...}, "signal": N, "after": SECONDS, "marker": "sleep 11"}
        -> {"code", "leftover": [pids whose cmdline is the marker]}
    {"op": "health", "cfg": to_json(...), "process": {...}, "checks": N, "limit": SECONDS, "marker": "…"}
        -> {"initial", "statuses": [[Status, FailingStreak] after each check], "health", "seconds", "leftover"}
    {"op": "quit"}  (kills the container, unmounts)

The health loop drives the monitor as the supervisor does: it selects on the check's fd and closes it at
EOF itself, reaps with waitpid(-1), calls tick and start when due.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from pathlib import Path

from pinnace.runtime import executor, health, syscalls
from pinnace.runtime.mounts import mount_overlay, unmount
from pinnace.runtime.nsexec import exec_in_container
from pinnace.runtime.spec import ProcessOptions, build_spec
from pinnace.runtime.users import resolve_user

STRAYS: list[int] = []


def reap_strays(init: int) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == init:
            raise SystemExit("the container's init exited")


def read_until_eof(fds: list[int], limit: float = 20.0) -> dict[int, bytes]:
    out = {fd: b"" for fd in fds}
    open_fds, deadline = list(fds), time.monotonic() + limit
    while open_fds and time.monotonic() < deadline:
        ready, _, _ = select.select(open_fds, [], [], 0.1)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the pty's slave side is closed
                data = b""
            if data:
                out[fd] += data
            else:
                open_fds.remove(fd)
    for fd in fds:
        os.close(fd)
    return out


def with_marker(marker: str) -> list[int]:
    """Live (non-zombie) processes whose argv joined by spaces is `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if b" ".join(argv).decode(errors="replace") == marker:
            found.append(int(entry))
    return found


def do_exec(init: int, template: dict, req: dict) -> dict:
    process = {**template, **req.get("process", {})}
    init = req.get("pid", init)  # another target: a process that is gone
    t0 = time.monotonic()
    if req.get("pty"):
        master, slave = os.openpty()
        process["terminal"] = True
        pid = exec_in_container(init, process, stdio=(slave, slave, slave), detach=req.get("detach", False))
        os.close(slave)
        out = read_until_eof([master])[master]
        code = executor.wait_exit(pid)
        return {"code": code, "out": out.decode(errors="replace"), "err": "", "seconds": time.monotonic() - t0}
    null = os.open("/dev/null", os.O_RDONLY)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = exec_in_container(init, process, stdio=(null, out_w, err_w), detach=req.get("detach", False))
    for fd in (null, out_w, err_w):
        os.close(fd)
    if req.get("detach"):
        code = executor.wait_exit(pid)  # the detached command may hold the pipes: don't wait for EOF
        seconds = time.monotonic() - t0
        data = read_until_eof([out_r, err_r], limit=0.2)
    else:
        data = read_until_eof([out_r, err_r])
        code = executor.wait_exit(pid)
        seconds = time.monotonic() - t0
    return {"code": code, "out": data[out_r].decode(errors="replace"), "err": data[err_r].decode(errors="replace"),
            "seconds": seconds}


def do_signal(init: int, template: dict, req: dict) -> dict:
    null = os.open("/dev/null", os.O_RDWR)
    pid = exec_in_container(init, {**template, **req["process"]}, stdio=(null, null, null))
    os.close(null)
    time.sleep(req["after"])
    before = with_marker(req["marker"])
    os.kill(pid, req["signal"])
    code = executor.wait_exit(pid)
    time.sleep(0.1)
    reap_strays(init)
    return {"code": code, "before": before, "leftover": with_marker(req["marker"])}


def do_health(init: int, template: dict, workdir: Path, req: dict) -> dict:
    path = str(workdir / "health.json")
    cfg = health.from_json(req["cfg"])
    mon = health.HealthMonitor(path, cfg, {**template, **req.get("process", {})})
    initial = health.read_health(path)
    check_pid, check_fd = 0, None
    statuses, last = [], None
    t0 = time.monotonic()
    deadline = t0 + req.get("limit", 10)
    while len(statuses) < req["checks"] and time.monotonic() < deadline:
        now = time.monotonic()
        mon.tick(now)
        if check_pid == 0 and mon.due(now) <= 0:
            started = mon.start(init)
            if started is not None:
                check_pid, check_fd = started
        fds = [check_fd] if check_fd is not None else []
        ready, _, _ = select.select(fds, [], [], min(mon.due(time.monotonic()), 0.01))
        if ready:
            data = os.read(check_fd, 65536)
            if data:
                mon.on_output(data)
            else:
                os.close(check_fd)  # as the supervisor does: it owns the fd, the monitor is not told
                check_fd = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == init:
                raise SystemExit("the container's init exited")
            if pid == check_pid:
                mon.on_exit(status)
                check_pid = 0
        log = mon.state["Log"]
        if log and log[-1] is not last:
            last = log[-1]
            statuses.append([mon.state["Status"], mon.state["FailingStreak"]])
    seconds = time.monotonic() - t0
    mon.close()
    if check_pid:
        os.waitpid(check_pid, 0)
    if check_fd is not None:
        os.close(check_fd)
    time.sleep(0.1)
    reap_strays(init)
    leftover = with_marker(req["marker"]) if req.get("marker") else []
    return {"initial": initial, "statuses": statuses, "health": health.read_health(path), "seconds": seconds,
            "leftover": leftover}


def main() -> int:
    lowerdir, workdir = sys.argv[1], Path(sys.argv[2])
    image_config = json.loads((workdir / "image_config.json").read_text())
    for name in ("upper", "work", "merged"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    rootless = os.environ.get("PINNACE_TEST_ROOTLESS") == "1"
    mount_overlay([Path(p) for p in reversed(lowerdir.split(":"))], workdir / "merged", upper=workdir / "upper",
                  work=workdir / "work", rootless=rootless)
    init = 0
    try:
        user = resolve_user(workdir / "merged", None)
        spec = build_spec(image_config=image_config, opts=ProcessOptions(command=("sleep", "30"), hostname="box"),
                          user=user, rootfs=str(workdir / "merged"), own_netns=True, rootless=rootless)
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        os.set_inheritable(os.open("/dev/null", os.O_RDONLY), True)  # like the supervisor's sync fd: must not leak
        null = os.open("/dev/null", os.O_RDWR)
        init = executor.start(spec, (null, null, null), direct=True)
        os.close(null)
        print(json.dumps({"pid": init}), flush=True)
        template = spec["process"]
        for line in sys.stdin:
            req = json.loads(line)
            if req["op"] == "quit":
                break
            handler = {"exec": lambda: do_exec(init, template, req), "signal": lambda: do_signal(init, template, req),
                       "health": lambda: do_health(init, template, workdir, req)}[req["op"]]
            print(json.dumps(handler()), flush=True)
            reap_strays(init)
    finally:
        if init:
            os.kill(init, signal.SIGKILL)
            os.waitpid(init, 0)
        unmount(workdir / "merged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
