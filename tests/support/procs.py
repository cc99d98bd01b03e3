"""Finding pinnace's helper processes from a test."""
from __future__ import annotations

import os


def fuse_daemons_of(cid: str) -> list[int]:
    """Pids of the `__fuse-overlay` daemons serving container `cid`'s root filesystem."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"__fuse-overlay" in args and any(cid.encode() in a for a in args):
            found.append(int(entry))
    return found
