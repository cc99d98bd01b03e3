"""System-wide verbs: info, disk usage, integrity check and repair, reset."""
from __future__ import annotations

import os
import platform as _platform
import re

from pinnace import __version__
from pinnace.engine.config import config_dir
from pinnace.engine.contract import CheckReport, DiskUsageRow
from pinnace.engine.images import collect_garbage
from pinnace.engine.store import Store
from pinnace.storage.layers import remove_tree

_PARTIAL = re.compile(r"\.partial-(\d+)$")
_TEMP_BLOB = re.compile(r"^blob-(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def device_access(path: str) -> str:
    """'ok', or why an unprivileged user cannot use the device and how to fix it. /dev/fuse (the fuse
    storage driver) and /dev/net/tun (slirp-style networking) are mode 0600 on some machines."""
    import stat as _stat
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"missing (load the kernel module, e.g. `sudo modprobe {'fuse' if 'fuse' in path else 'tun'}`)"
    if os.access(path, os.R_OK | os.W_OK):
        return "ok"
    return (f"not accessible (mode {_stat.S_IMODE(st.st_mode):04o}): ask an administrator to run "
            f"`sudo chmod 666 {path}` (most distributions ship it 0666)")


def _driver_reason(store: Store) -> str:
    from pinnace.engine.storage_choice import recorded
    rec = recorded(store.layout.root)
    if store.config.storage_driver:
        return "requested (--storage-driver, PINNACE_STORAGE_DRIVER)"
    return rec.get("reason", "") if rec else "not chosen yet: probed when the first container is created"


def _network_info(store: Store) -> dict:
    from pinnace.net import sharedns
    try:
        networks = sorted(n[:-5] for n in os.listdir(store.layout.root / "networks")
                          if n.endswith(".json") and not n.endswith(".ipam.json"))
    except OSError:
        networks = []
    return {
        "defaultNetwork": "usermode",
        "backend": "pinnace relay (nf_tables redirect/TPROXY + supervisor relay; no /dev/net/tun, no helper binary)",
        "gateway": "10.0.2.2 (host.containers.internal = the host's 127.0.0.1)",
        "dns": "10.0.2.3 (user-mode), 127.0.0.11 (user networks): forwarded to the host's resolvers",
        "icmp": "unsupported (ping from a container fails; TCP and UDP work)",
        "ipv6": "unsupported",
        "userNetworks": networks,
        "sharedNamespacePid": sharedns.pin_pid(str(store.layout.runroot)),
    }


def system_info(store: Store) -> dict:
    from pinnace.runtime.userns import subid_ranges
    import pwd
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    mappings = subid_ranges(user, uid) if store.config.rootless else None
    holder = None
    try:
        holder = int((store.layout.runroot / "holder.pid").read_text().split()[0])
        if not _pid_alive(holder):
            holder = None
    except (OSError, ValueError):
        pass
    images = len(store.images.list()) if store.layout.db_path.exists() else 0

    def ranges(rs):  # noqa: ANN001
        return [{"container_id": r.container_id, "host_id": r.host_id, "size": r.size} for r in rs]
    return {
        "version": {"Version": __version__, "PythonVersion": _platform.python_version()},
        "host": {
            "arch": _platform.machine(), "os": "linux", "kernel": _platform.release(),
            "hostname": _platform.node(), "rootless": store.config.rootless, "uid": uid,
            "idMappings": {"uidmap": ranges(mappings.uids), "gidmap": ranges(mappings.gids)} if mappings else None,
            "subordinateIds": bool(mappings) if store.config.rootless else None,
            "namespaceHolderPid": holder,
            "devices": {path: device_access(path) for path in ("/dev/fuse", "/dev/net/tun")},
            "network": _network_info(store),
        },
        "store": {"graphRoot": str(store.layout.root), "runRoot": str(store.layout.runroot),
                  "configDir": str(config_dir()),
                  "graphDriverName": store.driver_shown(), "graphDriverReason": _driver_reason(store),
                  "imageCount": images,
                  "overlayXattrs": store.overlay_xattr_prefix.rstrip(".")},
    }


def disk_usage(store: Store) -> list[DiskUsageRow]:
    if not store.layout.db_path.exists():
        return [DiskUsageRow("Images", 0, 0, 0, 0), DiskUsageRow("Containers", 0, 0, 0, 0),
                DiskUsageRow("Local Volumes", 0, 0, 0, 0)]
    images = store.images.list()
    layer_size = {l.diff_id: l.size for l in store.layers.all()}
    active = [i for i in images if store.images.users(i.id)]
    active_layers = {l.diff_id for i in active for l in i.layers}
    total = sum(layer_size.values())
    reclaim = sum(s for d, s in layer_size.items() if d not in active_layers)
    from pinnace.engine.volumes import volume_store
    vs = volume_store(store)
    volumes = vs.list()
    sizes = {v.name: _tree_size(v.mountpoint) for v in volumes}
    in_use = {v.name for v in volumes if vs.users(v.name)}
    return [DiskUsageRow("Images", len(images), len(active), total, reclaim),
            DiskUsageRow("Containers", 0, 0, 0, 0),
            DiskUsageRow("Local Volumes", len(volumes), len(in_use), sum(sizes.values()),
                         sum(s for n, s in sizes.items() if n not in in_use))]


def _tree_size(path: str) -> int:
    """Bytes in a directory tree; what this user cannot read (files of other mapped ids) is skipped."""
    total = 0
    for root, _dirs, files in os.walk(path, onerror=lambda exc: None):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def clean_dead_temps(store: Store) -> list[str]:
    """Remove what killed processes left half-written (partial layers, temp blobs). Returns what went."""
    removed = []
    for d, pattern in ((store.layout.layers_dir, _PARTIAL), (store.layout.tmp_dir, _TEMP_BLOB)):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for name in names:
            m = pattern.search(name)
            if m and not _pid_alive(int(m.group(1))):
                remove_tree(d / name)
                removed.append(str(d / name))
    return removed


def check_store(store: Store, repair: bool) -> CheckReport:
    store.open_for_write()
    problems: list[str] = []
    repaired: list[str] = []
    with store.gc_lock(shared=False):
        for path in clean_dead_temps(store) if repair else []:
            repaired.append(f"removed incomplete {path}")
        if not repair:
            for d, pattern in ((store.layout.layers_dir, _PARTIAL), (store.layout.tmp_dir, _TEMP_BLOB)):
                for name in (os.listdir(d) if d.exists() else []):
                    m = pattern.search(name)
                    if m and not _pid_alive(int(m.group(1))):
                        problems.append(f"incomplete object left by a killed process: {d / name}")
        layers = {l.diff_id: l for l in store.layers.all()}
        known_dirs = {store.layout.layer_path(d).name for d in layers}
        for name in (os.listdir(store.layout.layers_dir) if store.layout.layers_dir.exists() else []):
            if name not in known_dirs and not _PARTIAL.search(name):
                problems.append(f"unrecorded layer directory {name}")
                if repair:
                    remove_tree(store.layout.layers_dir / name)
                    repaired.append(f"removed unrecorded layer directory {name}")
        missing_layers = {d for d in layers if not store.layout.layer_path(d).is_dir()}
        for d in missing_layers:
            problems.append(f"layer {d} is recorded but its directory is missing")
        bad_blobs = {d for d in store.blobs.all() if not store.blobs.verify(d)}
        for d in bad_blobs:
            problems.append(f"blob {d} is corrupt (content does not hash to its name)")
            if repair:
                store.blobs.remove(d)
                repaired.append(f"removed corrupt blob {d}")
        images = store.images.list()
        for img in images:
            needed = set(store.images.blobs_of(img.id)) | {l.blob_digest for l in img.layers}
            missing = sorted(d for d in needed if d in bad_blobs or not store.blobs.has(d))
            broken = [l.diff_id for l in img.layers if l.diff_id not in layers or l.diff_id in missing_layers]
            if missing or broken:
                problems.append(f"image {img.id[7:19]} ({', '.join(img.names) or '<none>'}) is incomplete: "
                                f"{len(missing)} blob(s) and {len(broken)} layer(s) missing")
                if repair:
                    store.images.remove_names(img.id)
                    store.images.delete(img.id)
                    repaired.append(f"removed incomplete image {img.id[7:19]}")
        if repair:
            for d in missing_layers:
                store.layers.remove(d)
                repaired.append(f"forgot missing layer {d}")
    if repair:
        n_layers, n_blobs = collect_garbage(store)
        if n_layers or n_blobs:
            repaired.append(f"removed {n_layers} unused layer(s) and {n_blobs} unused blob(s)")
    return CheckReport(tuple(problems), tuple(repaired), len(store.images.list()), len(store.layers.all()),
                       len(list(store.blobs.all())))


def _remove_all_containers(store: Store) -> None:
    """Stop (SIGKILL) and remove every container first: a reset must not leave supervisors running."""
    if not store.layout.db_path.exists():
        return
    from pinnace.engine import containers
    from pinnace.errors import PinnaceError
    for rec in containers.containers(store).list():
        try:
            containers.remove(store, rec.id, force=True, volumes=True, timeout=0)
        except PinnaceError:
            pass


def reset_store(store: Store) -> None:
    """Remove every container, image, layer and blob of this store and stop its namespace holder."""
    store.join_userns()
    from pinnace.runtime import mounts
    _remove_all_containers(store)
    mounts.unmount_all(store.layout.mounts_dir)
    mounts.unmount_all(store.layout.containers_dir)
    store.close()
    lock = store.gc_lock(shared=False) if store.layout.root.exists() else None
    if lock is not None:
        lock.acquire()  # waits for pulls that are recording an image
    try:
        for d, entries in ((store.layout.root, store.layout.ROOT_ENTRIES),
                           (store.layout.runroot, store.layout.RUNROOT_ENTRIES)):
            for entry in entries:
                remove_tree(d / entry)  # only what pinnace made: --root may be a shared directory
            for name in os.listdir(d) if d.exists() else ():
                if ".partial-" in name:
                    remove_tree(d / name)
    finally:
        if lock is not None:
            lock.release()
    if store.config.rootless:
        from pinnace.runtime.userns import stop_holder
        stop_holder(store.layout.runroot)
