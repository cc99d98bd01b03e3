"""Rootful mode (real root, /var/lib/pinnace-style store): pull, overlay form with trusted.* xattrs, mount."""
from __future__ import annotations

import os

import pytest
from testenv import REGISTRY

pytestmark = pytest.mark.rootful


def test_root_pull_mount_and_remove(pinnace, fixtures_info):
    assert os.geteuid() == 0, "the rootful tier runs as root (tests/run does that)"
    ref = f"{REGISTRY}/fixtures/busybox-layers"
    pinnace("pull", "-q", ref)
    info = pinnace("info", "--format", "json").json()
    assert info["host"]["rootless"] is False
    layers = pinnace.root / "layers"
    def is_opaque(p):
        try:
            return os.getxattr(p, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
        except OSError:
            return False
    opaque = [p for p in layers.rglob("sub") if p.is_dir() and is_opaque(p)]
    assert opaque, "opaque directories use trusted.overlay.opaque as root"
    mnt = pinnace("image", "mount", ref).out.strip()
    assert sorted(os.listdir(f"{mnt}/data/sub")) == ["new.txt"]
    st = os.stat(f"{mnt}/data/owned-by-app.txt")
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    pinnace("image", "unmount", ref)
    pinnace("rmi", ref)
    assert os.listdir(layers) == []


def test_root_default_paths():
    import subprocess
    from testenv import PINNACE_BIN
    out = subprocess.run([PINNACE_BIN, "info", "--format", "{{.store.graphRoot}} {{.store.runRoot}}"],
                         capture_output=True, text=True, env={**os.environ, "PINNACE_ROOT": "", "PINNACE_RUNROOT": ""})
    assert out.stdout.split() == ["/var/lib/pinnace", "/run/pinnace"], out
