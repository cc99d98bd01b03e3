"""Test driver for runtime/supervisor.py, run inside the namespace holder via `pinnace unshare`:

    pinnace unshare PYTHON start_detached.py LOWERDIR WORKDIR SPEC_OPTIONS_JSON RUNROOT

Mounts an overlay rootfs (it stays mounted in the holder's mount namespace), writes WORKDIR/bundle/
config.json, starts a detached supervisor and prints the container's pid.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pinnace.runtime.mounts import mount_overlay
from pinnace.runtime.spec import ProcessOptions, build_spec
from pinnace.runtime.supervisor import start_supervisor
from pinnace.runtime.users import resolve_user


def main() -> int:
    lowerdir, workdir, raw, runroot = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    image_config = raw.pop("image_config")
    opts = ProcessOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    for name in ("upper", "work", "merged", "bundle"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    rootless = os.environ.get("PINNACE_TEST_ROOTLESS") == "1"
    mount_overlay([Path(p) for p in reversed(lowerdir.split(":"))], workdir / "merged", upper=workdir / "upper",
                  work=workdir / "work", rootless=rootless)
    user = resolve_user(workdir / "merged", None)
    spec = build_spec(image_config=image_config, opts=opts, user=user, rootfs=str(workdir / "merged"),
                      own_netns=True, rootless=rootless)
    (workdir / "bundle" / "config.json").write_text(json.dumps(spec))
    _, container_pid = start_supervisor(str(workdir / "bundle"), runroot, fresh=True)
    print(container_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
