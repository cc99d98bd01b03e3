"""Container verbs that look into or out of a container: logs, top, stats, exec, mount, diff, cp, export,
commit. Lifecycle lives in engine/containers.py."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pinnace.engine.containers import Container, get, is_running
from pinnace.engine.container_contract import ExecOptions
from pinnace.engine.store import Store
from pinnace.errors import Conflict, InvalidArgument, PinnaceError
from pinnace.runtime import ctrstate


# -- logs ------------------------------------------------------------------------------------------------
def logs(store: Store, name: str, *, follow: bool = False, tail: int | None = None, since_ns: int | None = None,
         until_ns: int | None = None) -> Iterator:
    """Log lines (runtime.logfile.LogLine); with `follow`, new lines until the container stops."""
    from pinnace.runtime.logfile import parse_log, read_log_from
    c = get(store, name)
    path = str(c.dir / "ctr.log")
    lines, offset = read_log_from(path, tail=tail, since_ns=since_ns, until_ns=until_ns)
    yield from lines
    if not follow:
        return
    pending = b""
    while True:
        running = is_running(c.state()) or c.state().get("status") == ctrstate.STOPPING
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < offset:
                    offset = 0  # truncated by max-size
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return
        offset += len(data)
        pending += data
        cut = pending.rfind(b"\n") + 1
        for line in parse_log(pending[:cut]):
            if until_ns is None or line.time_ns <= until_ns:
                yield line
        pending = pending[cut:]
        if not running and not data:
            return
        time.sleep(0.05)


# -- processes ---------------------------------------------------------------------------------------------
def _ns_inode(pid: int, ns: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def top(store: Store, name: str) -> list[dict]:
    """The container's processes (those in its pid namespace), as `ps -ef` rows."""
    store.join_userns()
    c = get(store, name)
    state = c.state()
    if not is_running(state):
        raise Conflict(f"container {c.name} is not running")
    target = _ns_inode(state["pid"], "pid")
    ticks = os.sysconf("SC_CLK_TCK")
    names = _container_users(c)
    rows = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _ns_inode(int(entry), "pid") != target:
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        nspid = status.get("NSpid", "").split()
        rows.append({"PID": nspid[-1] if nspid else entry, "HostPID": entry,
                     "PPID": status.get("PPid", "").strip(),
                     "USER": names.get(status.get("Uid", "").split()[0], status.get("Uid", "").split()[0]),
                     "TIME": _cpu_time((int(fields[11]) + int(fields[12])) // ticks),
                     "COMMAND": cmd or f"[{status.get('Name', '').strip()}]"})
    inside = {r["HostPID"]: r["PID"] for r in rows}
    for r in rows:  # parents as the container numbers them; pid 1's parent is outside: 0
        r["PPID"] = inside.get(r["PPID"], "0")
    return sorted(rows, key=lambda r: int(r["PID"]))


def _container_users(c: Container) -> dict[str, str]:
    """uid → name from the container's own /etc/passwd (we see ids as the container does: we are in its
    user namespace), as Podman's top shows them."""
    from pinnace.runtime.users import _read_lines, parse_passwd
    try:
        return {str(e.uid): e.name for e in parse_passwd(_read_lines(c.dir / "merged" / "etc" / "passwd"))}
    except (OSError, ValueError):
        return {}


def _cpu_time(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def stats(store: Store, name: str) -> dict:
    from pinnace.engine.containers import cgroup_of
    from pinnace.runtime import cgroups
    c = get(store, name)
    state = c.state()
    if not is_running(state):
        raise Conflict(f"container {c.name} is not running")
    cg = cgroup_of(c)
    if cg is None:
        reason = cgroups.probe(store.config.rootless).reason or "the container has no cgroup"
        raise PinnaceError(f"stats need the container's cgroup, which it does not have: {reason}")
    return {"id": c.id, "name": c.name, **cgroups.stats(cg)}


# -- exec ------------------------------------------------------------------------------------------------
def exec_start(store: Store, opts: ExecOptions, stdio: tuple[int, int, int] | None) -> int:
    from pinnace.engine.container_create import _read_env_files
    from pinnace.runtime.caps import ALL_CAPS
    from pinnace.runtime.nsexec import exec_in_container
    from pinnace.runtime.users import resolve_user
    if not opts.command:
        raise InvalidArgument("exec needs a command to run")
    store.join_userns()
    c = get(store, opts.container)
    state = c.state()
    if state.get("status") != ctrstate.RUNNING or state.get("orphaned") and not ctrstate.alive(state.get("pid"), state.get("pid_start")):
        raise Conflict(f"container {c.name} is not running")
    spec = c.spec()
    process = dict(spec["process"])
    env = {e.partition("=")[0]: e for e in process.get("env", [])}
    for item in _read_env_files(opts.env_files) + list(opts.env):
        key, sep, _ = item.partition("=")
        if sep:
            env[key] = item
        elif key in os.environ:
            env[key] = f"{key}={os.environ[key]}"
    if opts.tty:
        env.setdefault("TERM", "TERM=xterm")
    process.update(args=list(opts.command), env=list(env.values()), terminal=opts.tty)
    if opts.user:
        user = resolve_user(c.dir / "merged", opts.user)
        process["user"] = {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)}
    if opts.workdir:
        process["cwd"] = opts.workdir
    if opts.privileged:
        process["capabilities"] = {k: list(ALL_CAPS) for k in ("bounding", "effective", "permitted")}
    return exec_in_container(state["pid"], process, stdio=stdio, detach=opts.detach)


# -- filesystem --------------------------------------------------------------------------------------------
def _mounted(store: Store, name: str) -> Container:
    """The container with its rootfs mounted (in the user namespace's mount namespace)."""
    from pinnace.engine.container_create import mount_rootfs
    store.open_for_write()
    c = get(store, name)
    rec = store.images.get(c.rec.image_id)
    if rec is None:
        raise PinnaceError(f"the image of container {c.name} is gone")
    mount_rootfs(store, c.dir, [store.layout.layer_path(l.diff_id).name for l in rec.layers])
    return c


def mount(store: Store, name: str) -> Path:
    return _mounted(store, name).dir / "merged"


def unmount(store: Store, name: str) -> None:
    from pinnace.runtime import mounts
    store.join_userns()
    c = get(store, name)
    if is_running(c.state()):
        return  # a running container keeps its rootfs (Podman: unmount only drops the extra mount count)
    mounts.unmount(c.dir / "merged")


def _release_if_stopped(c: Container) -> None:
    from pinnace.runtime import mounts
    if not is_running(c.state()):
        mounts.unmount(c.dir / "merged")


def diff(store: Store, name: str) -> list[tuple[str, str]]:
    from pinnace.engine.container_files import diff_upper, lower_exists_in
    c = _mounted(store, name)
    rec = store.images.get(c.rec.image_id)
    lowers = [store.layout.layer_path(l.diff_id) for l in reversed(rec.layers)]  # topmost first
    from pinnace.runtime.rootfs import driver_for
    upper = driver_for(store.driver_name(), rootless=store.config.rootless).upper_dir(lowers[::-1], c.dir)
    try:
        changes = diff_upper(upper, lower_exists_in(lowers, store.overlay_xattr_prefix),
                             store.overlay_xattr_prefix)
    finally:
        _release_if_stopped(c)
    # mount points the runtime created (/etc/hosts, volume targets …) are not the user's changes; Docker
    # keeps them in a separate init layer, so they never show up, and neither do their parents
    hidden = {m["destination"].rstrip("/") for m in c.spec().get("mounts", [])} | {"/dev/console"}
    kept = [(k, p) for k, p in changes if not (k == "A" and p in hidden)]
    paths = [p for _, p in kept]
    return [(k, p) for k, p in kept
            if not (k == "C" and any(h.startswith(p + "/") for h in hidden)
                    and not any(q.startswith(p + "/") for q in paths))]


def export(store: Store, name: str, out: BinaryIO) -> None:
    from pinnace.engine.container_files import export_rootfs
    c = _mounted(store, name)
    try:
        export_rootfs(c.dir / "merged", out)
    finally:
        _release_if_stopped(c)


def split_container_path(text: str) -> tuple[str | None, str]:
    """`CTR:/path` → ("CTR", "/path"); a host path → (None, path). Like Docker, a path with a slash
    before the colon is a host path."""
    name, sep, path = text.partition(":")
    if not sep or "/" in name or not name:
        return None, text
    return name, path


def copy(store: Store, src: str, dest: str, stdin: BinaryIO | None, stdout: BinaryIO | None) -> None:
    from pinnace.engine import container_files as files
    src_ctr, src_path = split_container_path(src)
    dst_ctr, dst_path = split_container_path(dest)
    if (src_ctr is None) == (dst_ctr is None):
        raise InvalidArgument("cp copies between a container and the host: one side must be CONTAINER:PATH")
    if src_ctr is not None:
        host = None if dst_path == "-" else dst_path  # as typed: a trailing "/" and "/." are rules of cp
        c = _mounted(store, src_ctr)
        try:
            if host is None:
                files.copy_out(c.dir / "merged", src_path, stdout)
            else:
                files.copy_to_host(c.dir / "merged", src_path, host)
        finally:
            _release_if_stopped(c)
        return
    c = _mounted(store, dst_ctr)
    try:
        if src_path == "-":
            files.copy_in(c.dir / "merged", dst_path, stdin)
        else:
            files.copy_from_host(c.dir / "merged", src_path, dst_path)
    finally:
        _release_if_stopped(c)


# -- commit ------------------------------------------------------------------------------------------------
def commit(store: Store, name: str, image: str | None, *, author: str = "", message: str = "",
           changes: tuple[str, ...] = ()) -> str:
    """The container's rw layer on top of its image's layers → a new image (uncompressed layer blob).
    Shares the layer and image recording with `build` (engine/layer_commit.py)."""
    from pinnace.engine.changes import apply_changes
    from pinnace.engine.images import image_config
    from pinnace.engine.layer_commit import commit_layer, now_rfc3339, record_built_image
    from pinnace.engine.resolve import canonical_name
    names = (canonical_name(image),) if image else ()
    apply_changes({}, changes)  # a bad --change fails before any work
    c = _mounted(store, name)
    base = store.images.get(c.rec.image_id)
    base_cfg = image_config(store, c.rec.image_id)
    with store.gc_lock(shared=True):
        from pinnace.runtime.rootfs import driver_for
        driver = driver_for(store.driver_name(), rootless=store.config.rootless)
        upper = driver.upper_dir([store.layout.layer_path(l.diff_id) for l in base.layers], c.dir)
        diff_id = commit_layer(store, upper, keep=True)
        now = now_rfc3339()
        spec = c.spec()
        cfg = dict(base_cfg.get("config") or {})
        config = {**{k: v for k, v in base_cfg.items() if k not in ("config", "rootfs", "history", "created")},
                  "created": now, "config": apply_changes(cfg, changes),
                  "rootfs": {"type": "layers", "diff_ids": [l.diff_id for l in base.layers] + [diff_id]},
                  "history": list(base_cfg.get("history") or []) + [
                      {"created": now, "created_by": " ".join(spec.get("process", {}).get("args", [])),
                       **({"author": author} if author else {}), **({"comment": message} if message else {})}]}
        if author:
            config["author"] = author
        image_id = record_built_image(store, config, names)
    _release_if_stopped(c)
    return image_id
