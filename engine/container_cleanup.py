"""What happens to a container's resources once its process is gone: unmount, drop its cgroup and, for
`--rm` and `rm`, forget it. Called by the supervisor when the container exits (the daemonless callback)
and by `rm`/`container cleanup` for containers whose supervisor was killed. The caller is inside the
user namespace (rootless) and holds the container's lock.
"""
from __future__ import annotations

import json
import os
from pathlib import Path



def release_resources(container_dir: Path) -> None:
    """Unmount the rootfs, remove the cgroup, give user-network addresses back; idempotent."""
    from pinnace.runtime import mounts
    mounts.unmount(container_dir / "merged")
    try:
        with open(container_dir / "config.json") as f:
            ann = json.load(f).get("annotations", {})
    except (OSError, ValueError):
        ann = {}
    raw = ann.get("io.pinnace.cgroup")
    if ann.get("io.pinnace.network") == "bridge":
        from pinnace.net.container_net import release_addresses
        release_addresses(ann["io.pinnace.root"], ann["io.pinnace.runroot"], ann["io.pinnace.id"], None,
                          str(container_dir))
    if raw:
        from pinnace.runtime import cgroups
        cgroups.remove(cgroups.from_json(json.loads(raw)))


def remove_container(store, cid: str, *, volumes: bool) -> None:  # noqa: ANN001 - engine.store.Store
    """Forget the container and delete its directory; with `volumes`, also its anonymous volumes
    (`rm -v`, `--rm`), which only this container used."""
    from pinnace.storage.containers import ContainerStore
    from pinnace.storage.layers import remove_tree
    cdir = store.layout.containers_dir / cid
    release_resources(cdir)
    cs = ContainerStore(store.layout, store.db)
    anonymous = []
    used = cs.volumes(cid) if volumes else []
    if used:  # imported only then: the common `run --rm` has no volumes and should not pay for them
        from pinnace.engine.container_mounts import ANONYMOUS_LABEL
        from pinnace.engine.volumes import volume_store
        vs = volume_store(store)
        for name in used:
            try:
                rec = vs.get(name)
            except Exception:  # noqa: BLE001 - a volume removed meanwhile
                continue
            if rec.labels.get(ANONYMOUS_LABEL) == "true":
                anonymous.append(name)
    cs.forget(cid)
    remove_tree(cdir)
    if anonymous:
        for name in anonymous:
            try:
                vs.remove(name)
            except Exception:  # noqa: BLE001 - in use by another container (--volumes-from): keep it
                pass


def cleanup_after_exit(root: str, runroot: str, cid: str, *, remove: bool) -> None:
    """The supervisor's last act (it is already in the user namespace)."""
    cdir = Path(root) / "containers" / cid
    if not remove:
        release_resources(cdir)
        return
    from pinnace.engine.config import EngineConfig
    from pinnace.engine.store import Store
    store = Store(EngineConfig(Path(root), Path(runroot), "overlay", os.geteuid() != 0 or _in_userns()))
    store._joined = True  # the supervisor joined (or is root)
    try:
        remove_container(store, cid, volumes=True)
    finally:
        store.close()


def _in_userns() -> bool:
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return False
