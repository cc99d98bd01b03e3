"""The per-container supervisor (conmon's job): `pinnace __supervise BUNDLE RUNROOT SYNC_FD`.

Started detached by `start_supervisor` (setsid, stdio on /dev/null), it joins the user namespace holder,
becomes a child subreaper, starts the container with its stdout/stderr on pipes, tells the starter
"started PID" on the sync pipe and exits the CLI's concern: from then on it copies the output into the
container log (runtime/logfile.py) and, when the container exits, writes the exit code to BUNDLE/exit
(temp + rename) and ends. Kept small: only os, json, select, signal and the runtime modules it needs
(measured ~10 MB RSS idle). Issue-3 groundwork: attach, ttys, restart policies and cleanup come next.
"""
from __future__ import annotations

import os
import sys

LOG_NAME, EXIT_NAME, CONFIG_NAME = "ctr.log", "exit", "config.json"


def start_supervisor(bundle: str, runroot: str, timeout: float = 30.0) -> int:
    """Start a detached supervisor for the container in `bundle`; return the container's pid.
    Must be called from a single-threaded process (it forks)."""
    import select
    from pinnace.errors import PinnaceError
    read_fd, write_fd = os.pipe()
    if getattr(sys, "frozen", False):
        argv = [sys.executable, "__supervise", bundle, runroot, str(write_fd)]
    else:
        # -c rather than -m: runpy and importlib.util would stay in the supervisor's memory
        argv = [sys.executable, "-I", "-c", "import sys; from pinnace.__main__ import main; sys.exit(main())",
                "__supervise", bundle, runroot, str(write_fd)]
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)  # the supervisor is reparented at once: nobody has to reap it
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, 1 << 16)
            os.set_inheritable(write_fd, True)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(write_fd)
    os.waitpid(child, 0)
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout)
        message = os.read(read_fd, 4096).decode(errors="replace").strip() if ready else ""
    finally:
        os.close(read_fd)
    if message.startswith("started "):
        return int(message.split()[1])
    raise PinnaceError(f"the container supervisor failed to start: {message or 'no answer'}")


def main(argv: list[str]) -> int:
    """Entry point of the hidden `__supervise` role (dispatched in __main__ before anything heavy)."""
    import json
    import select
    bundle, runroot, sync_fd = argv[0], argv[1], int(argv[2])
    try:
        if os.geteuid() != 0:
            from pinnace.runtime.userns import ensure_joined
            ensure_joined(runroot)  # first: setns needs a single thread
        from pinnace.runtime import executor, syscalls
        from pinnace.runtime.logfile import LogWriter
        with open(os.path.join(bundle, CONFIG_NAME)) as f:
            spec = json.load(f)
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)  # orphans of the container come back to us
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open("/dev/null", os.O_RDONLY)
        pid = executor.start(spec, stdio=(null, out_w, err_w))
        for fd in (out_w, err_w, null):
            os.close(fd)
        log = LogWriter(os.path.join(bundle, LOG_NAME))
    except BaseException as exc:  # noqa: BLE001 - told to the starter, which reports it
        os.write(sync_fd, f"error {exc}".encode())
        return 1
    os.write(sync_fd, f"started {pid}\n".encode())
    os.close(sync_fd)
    streams = {out_r: "stdout", err_r: "stderr"}
    while streams:
        ready, _, _ = select.select(list(streams), [], [])
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                log.write(streams[fd], data)
            else:
                os.close(fd)
                del streams[fd]
    code = executor.wait_exit(pid)
    log.close()
    while True:  # reap whatever else was reparented to us
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    tmp = os.path.join(bundle, f".{EXIT_NAME}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(f"{code}\n")
    os.replace(tmp, os.path.join(bundle, EXIT_NAME))
    return 0
