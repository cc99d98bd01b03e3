"""Test driver for engine/container_mounts.py, run inside the namespace holder via `pinnace unshare`:

    pinnace --root R --runroot RR unshare PYTHON mounts_driver.py LOWERDIR WORKDIR REQUEST_JSON

Mounts an overlay of the image's layers (fresh upper layer in WORKDIR) as the container's rootfs, calls
plan_mounts with the request's flags, and, when the request has "run", runs that command with the
planned mounts through runtime/executor.py. Prints one JSON object: {"mounts", "volumes", "labels",
"exit", "output"} or {"error", "kind"} when plan_mounts refused.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from pinnace.engine.config import EngineConfig
from pinnace.engine.container_mounts import plan_mounts
from pinnace.engine.store import Store
from pinnace.engine.volumes import volume_store
from pinnace.errors import PinnaceError
from pinnace.runtime.executor import start, wait_exit
from pinnace.runtime.mounts import mount_overlay, unmount
from pinnace.runtime.spec import ProcessOptions, build_spec
from pinnace.runtime.users import resolve_user


def main() -> int:
    lowerdir, workdir, req = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    rootless = os.environ.get("PINNACE_TEST_ROOTLESS") == "1"
    for name in ("upper", "work", "merged"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    merged = workdir / "merged"
    mount_overlay([Path(p) for p in reversed(lowerdir.split(":"))], merged, upper=workdir / "upper",
                  work=workdir / "work", rootless=rootless)
    try:
        # already inside the holder (`pinnace unshare`): the store is used as the engine would after joining
        store = Store(EngineConfig(Path(req["root"]), Path(req["runroot"]), "overlay", rootless))
        user = resolve_user(merged, req.get("user"))
        try:
            plan = plan_mounts(store, volumes=tuple(req.get("volumes", ())), mounts=tuple(req.get("mounts", ())),
                               tmpfs=tuple(req.get("tmpfs", ())), image_volumes=req.get("image_volumes", []),
                               rootfs=merged, user=user, cwd=req.get("cwd", "/"))
        except PinnaceError as exc:
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
            return 0
        vs = volume_store(store)
        result = {"mounts": plan.mounts, "volumes": [asdict(v) for v in plan.volumes],
                  "labels": {v.name: vs.get(v.name).labels for v in plan.volumes}}
        if req.get("run"):
            spec = build_spec(image_config=req["image_config"], opts=ProcessOptions(command=tuple(req["run"])),
                              user=user, rootfs=str(merged), own_netns=True, rootless=rootless,
                              extra_mounts=plan.mounts)
            out = workdir / "output"
            with open(out, "wb") as f, open(os.devnull, "rb") as null:
                result["exit"] = wait_exit(start(spec, (null.fileno(), f.fileno(), f.fileno())))
            result["output"] = out.read_text(errors="replace")
        print(json.dumps(result))
        return 0
    finally:
        unmount(merged)


if __name__ == "__main__":
    sys.exit(main())
