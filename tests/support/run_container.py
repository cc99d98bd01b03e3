"""Test driver for runtime/executor.py, run inside the namespace holder via `pinnace unshare`:

    pinnace unshare PYTHON run_container.py LOWERDIR(top:…:bottom) WORKDIR SPEC_OPTIONS_JSON

Mounts an overlay of the image's layers with a fresh upper layer, builds config.json with
runtime/spec.py, runs the container in the foreground and exits with its exit code.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pinnace.runtime.executor import run_foreground
from pinnace.runtime.mounts import mount_overlay, unmount
from pinnace.runtime.spec import ProcessOptions, build_spec
from pinnace.runtime.users import resolve_user


def main() -> int:
    lowerdir, workdir, raw = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    image_config = raw.pop("image_config")
    user_spec = raw.pop("user", None)
    readonly = raw.pop("readonly", False)
    opts = ProcessOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    for name in ("upper", "work", "merged"):
        (workdir / name).mkdir(parents=True, exist_ok=True)
    layers = [Path(p) for p in reversed(lowerdir.split(":"))]
    rootless = os.environ.get("PINNACE_TEST_ROOTLESS") == "1"
    mount_overlay(layers, workdir / "merged", upper=workdir / "upper", work=workdir / "work", rootless=rootless)
    try:
        user = resolve_user(workdir / "merged", user_spec or (image_config.get("config") or {}).get("User"))
        spec = build_spec(image_config=image_config, opts=opts, user=user, rootfs=str(workdir / "merged"),
                          readonly_rootfs=readonly, own_netns=True, rootless=rootless)
        return run_foreground(spec)
    finally:
        unmount(workdir / "merged")


if __name__ == "__main__":
    sys.exit(main())
