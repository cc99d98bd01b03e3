"""Starting pinnace's own helper processes (the supervisor, the fuse daemon): the argv that re-executes
this pinnace in a hidden role, the detach a helper does before it, and reading its one-line answer.
Light on purpose (os, sys, select): the supervisor imports it."""
from __future__ import annotations

import os
import sys


def role_argv(*args: str) -> list[str]:
    """argv that runs `pinnace ARGS…` with this same installation (the frozen executable, or this
    interpreter with the package; -c rather than -m: runpy and importlib.util would stay in memory)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-I", "-c", "import sys; from pinnace.__main__ import main; sys.exit(main())", *args]


def detach(keep: set[int]) -> None:
    """In a forked child: a session of its own, stdio on /dev/null, every other fd but `keep` closed
    (the caller's pipes and sockets must not be held open by a long-lived helper)."""
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    top = max(keep | {2}) + 1
    for fd in range(3, top):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    os.closerange(top, 1 << 16)


def read_answer(read_fd: int, timeout: float) -> str:
    """The helper's one-line answer on `read_fd` ("" when it said nothing in time); closes the fd."""
    import select
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout)
        return os.read(read_fd, 4096).decode(errors="replace").strip() if ready else ""
    finally:
        os.close(read_fd)
