"""The steps that make a layer: RUN (in a container), COPY and ADD (files written through an overlay of
the image-so-far), WORKDIR (when it has to create its directory). Each is looked up in the build cache
first; on a miss its upper directory becomes the layer (engine/layer_commit.py).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from pinnace.builder import config_ops as co
from pinnace.builder import dockerfile as df
from pinnace.builder.cache import step_key
from pinnace.builder.executor import Builder, StageResult, absolute, workdir_of
from pinnace.builder.expand import DockerfileError, expand
from pinnace.builder.run_step import mount_step, new_step_dir, remove_step_dir, run_command
from pinnace.errors import BuildFailed, InvalidArgument


def layer_step(b: Builder, result: StageResult, config: dict, ins: df.Instruction, state: dict) -> StageResult:
    scope = co.env_dict(config)
    scope.update(state["args"])
    if ins.kind == "WORKDIR":
        return _workdir(b, result, config, ins, scope)
    if ins.kind == "RUN":
        return _run(b, result, config, ins, scope, state)
    return _transfer(b, result, config, ins, scope)


def _hit(b: Builder, key: str) -> StageResult | None:
    cached = b.cache.get(key)
    if cached is not None:
        b.emit("cache", f"--> Using cache {key[:12]}")
        return StageResult(cached, key)
    return None


def _commit(b: Builder, step: Path, config: dict, key: str, created_by: str) -> StageResult:
    from pinnace.engine.layer_commit import commit_layer
    from pinnace.runtime.rootfs import driver_for
    driver = driver_for(b.store.driver_name(), rootless=b.store.config.rootless)
    driver.unmount(step / "merged")
    lowers = [b.store.layout.layer_path(d) for d in config["rootfs"]["diff_ids"]]
    diff_id = commit_layer(b.store, driver.upper_dir(lowers, step))
    config["rootfs"]["diff_ids"] = list(config["rootfs"]["diff_ids"]) + [diff_id]
    b.add_history(config, created_by, empty=False)
    b.cache.put(key, config)
    b.emit("cache", f"--> {key[:12]}")
    return StageResult(config, key)


# -- WORKDIR --------------------------------------------------------------------------------------------
def _workdir(b: Builder, result: StageResult, config: dict, ins: df.Workdir, scope: dict) -> StageResult:
    path = absolute(expand(ins.path, scope, b.df.escape), workdir_of(config))
    config["config"]["WorkingDir"] = path
    key = step_key(result.key, "WORKDIR", path)
    hit = _hit(b, key)
    if hit is not None:
        return hit
    step = new_step_dir(b.store)
    try:
        mount_step(b.store, step, result.layers)
        target = step / "merged" / path.lstrip("/")
        if os.path.isdir(target):
            b.add_history(config, f"WORKDIR {path}", empty=True)
            b.cache.put(key, config)
            return StageResult(config, key)
        _mkdir_inside(step / "merged", path, _user_ids(step / "merged", config))
        return _commit(b, step, config, key, f"WORKDIR {path}")
    finally:
        remove_step_dir(step)


def _user_ids(rootfs: Path, config: dict) -> tuple[int, int] | None:
    user = (config.get("config") or {}).get("User")
    if not user:
        return None
    from pinnace.runtime.users import resolve_user
    u = resolve_user(rootfs, user)
    return u.uid, u.gid


def _mkdir_inside(rootfs: Path, path: str, owner: tuple[int, int] | None) -> None:
    """mkdir -p of `path` inside `rootfs`, following the image's symlinks as a chroot would; the new
    directories are 0755 and owned by the stage's USER (BuildKit), else root."""
    from pinnace.storage.rootfs_paths import resolve_in_root
    target = resolve_in_root(rootfs, path)
    missing = []
    p = target
    while not os.path.lexists(p) and p != rootfs:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        os.mkdir(d)
        os.chmod(d, 0o755)
        if owner is not None:
            os.chown(d, *owner)


# -- RUN ------------------------------------------------------------------------------------------------
def _run(b: Builder, result: StageResult, config: dict, ins: df.Run, scope: dict, state: dict) -> StageResult:
    argv = ins.argv(co.shell(config))
    expander = (lambda word: expand(word, scope, b.df.escape))
    mounts = [df.parse_mount(m, expander) for m in ins.mounts]
    network = ins.network or b.s.network or ""
    if network not in ("", "default", "none", "host"):
        raise InvalidArgument(f"RUN --network={network}: expected default, none or host")
    args = sorted(state["args"].items())
    key_parts = [argv, args, network, [(m.type, m.target, m.source, m.from_, m.id, m.readonly) for m in mounts]]
    for m in mounts:
        if m.type == "bind" and not m.from_:
            key_parts.append(b.ctx.checksum(b.ctx.resolve_sources([m.source or "."], "RUN --mount")))
    key = step_key(result.key, "RUN", key_parts)
    hit = _hit(b, key)
    if hit is not None:
        return hit
    step = new_step_dir(b.store)
    extra: list[Path] = []
    try:
        workdir = workdir_of(config)
        oci_mounts, env = _run_mounts(b, mounts, workdir, step, extra, scope)
        script = ins.inline_script()
        if script is not None:
            name, body = script.name, script.data
            path = step / f"script-{name}"
            path.write_text(body)
            os.chmod(path, 0o755)
            oci_mounts.append({"destination": f"/dev/pipes/{name}", "type": "bind", "source": str(path),
                               "options": ["rbind", "ro"]})
        mount_step(b.store, step, result.layers)
        code = run_command(b.store, step, config=config, argv=argv, env=b.run_env(config, state) + env,
                           user=(config.get("config") or {}).get("User"), workdir=workdir,
                           network="usermode" if network in ("", "default") else network, mounts=oci_mounts,
                           output=lambda stream, data: b.emit("output", data))
        if code != 0:
            raise BuildFailed(f'process "{" ".join(argv)}" did not complete successfully: exit code: {code}')
        shown = " ".join(argv)
        prefix = f"|{len(args)} " + " ".join(f"{k}={v}" for k, v in args) + " " if args else ""
        return _commit(b, step, config, key, f"RUN {prefix}{shown} # buildkit")
    finally:
        remove_step_dir(step)
        for path in extra:
            remove_step_dir(path)


def _run_mounts(b: Builder, mounts: list, workdir: str, step: Path, extra: list[Path],
                scope: dict) -> tuple[list[dict], list[str]]:
    oci: list[dict] = []
    env: list[str] = []
    for m in mounts:
        target = absolute(m.target, workdir) if m.target else ""
        if m.type == "cache":
            source = b.cache.mount_dir(m.id or target)
            if m.uid is not None or m.gid is not None or m.mode is not None:
                os.chown(source, m.uid or 0, m.gid or 0)
                os.chmod(source, m.mode if m.mode is not None else 0o755)
            oci.append({"destination": target, "type": "bind", "source": source, "options": ["rbind", "rw"]})
        elif m.type == "tmpfs":
            opts = ["nosuid", "nodev"] + ([f"size={m.size}"] if m.size else [])
            oci.append({"destination": target, "type": "tmpfs", "source": "tmpfs", "options": opts})
        elif m.type == "secret":
            src = b.s.secrets.get(m.id)
            if src is None:
                if m.required:
                    raise InvalidArgument(f"secret {m.id} is required but was not given (--secret id={m.id},src=…)")
                continue
            if m.env:
                with open(src) as f:
                    env.append(f"{m.env}={f.read().rstrip(chr(10))}")
            if target or not m.env:
                dest = target or f"/run/secrets/{m.id}"
                oci.append({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "ro"]})
        elif m.type == "bind":
            if m.from_:
                source_root = _stage_rootfs(b, m.from_, extra)
                source = os.path.join(source_root, (m.source or "").lstrip("/"))
            else:
                srcs = b.ctx.resolve_sources([m.source or "."], "RUN --mount")
                source = srcs[0].host_path
            if not m.readonly:
                source = _scratch_copy(b, source, extra)   # rw: writes are seen by RUN, then thrown away
            oci.append({"destination": target, "type": "bind", "source": source,
                        "options": ["rbind", "ro" if m.readonly else "rw"]})
        else:
            raise InvalidArgument(f"RUN --mount=type={m.type} is not supported")
    return oci, env


def _scratch_copy(b: Builder, source: str, extra: list[Path]) -> str:
    """A writable view of `source` whose changes are discarded (Docker's rw bind mounts in a build):
    an overlay with `source` as its only lower layer for a directory, a copy for a file."""
    view = new_step_dir(b.store)
    extra.append(view)
    if os.path.isdir(source):
        from pinnace.runtime import mounts
        mounts.mount_overlay([Path(source)], view / "merged", upper=view / "diff", work=view / "work",
                             rootless=b.store.config.rootless, volatile=True)
        return str(view / "merged")
    copy = view / "diff" / os.path.basename(source)
    shutil.copy2(source, copy)
    return str(copy)


def _stage_rootfs(b: Builder, ref: str, extra: list[Path]) -> str:
    """A read-only view of another stage's (or an image's) filesystem, mounted for this step."""
    layers = _layers_of(b, ref)
    view = new_step_dir(b.store)
    extra.append(view)
    mount_step(b.store, view, layers)
    return str(view / "merged")


def _check_stage_index(b: Builder, ref: str) -> None:
    if ref.isdecimal() and b.df.stage(ref) is None:
        raise DockerfileError(f"invalid stage index {ref}")


def _layers_of(b: Builder, ref: str) -> list[str]:
    _check_stage_index(b, ref)
    stage = b.df.stage(ref)
    if stage is not None:
        if stage.index not in b.results:
            raise DockerfileError(f"stage {ref} is not built before it is used (it must come earlier)")
        return b.results[stage.index].layers
    iid, config = b._base_image(ref)
    return list(config["rootfs"]["diff_ids"])


def _source_key(b: Builder, ref: str) -> str:
    _check_stage_index(b, ref)
    stage = b.df.stage(ref)
    if stage is not None and stage.index in b.results:
        return b.results[stage.index].key
    iid, _ = b._base_image(ref)
    return iid


# -- COPY / ADD -----------------------------------------------------------------------------------------
def _transfer(b: Builder, result: StageResult, config: dict, ins, scope: dict) -> StageResult:  # noqa: ANN001
    # The copier (and its tar, compression and HTTP imports, ~30 ms) is loaded only when the step runs:
    # a cached step needs the context's checksums alone.
    from pinnace.builder.expand import expand_heredoc
    from pinnace.builder.ignore import has_wildcards
    esc = b.df.escape
    sources = [expand(s, scope, esc) for s in ins.sources]
    dest = expand(ins.dest, scope, esc)
    chown = expand(ins.chown, scope, esc) if ins.chown else None
    chmod = expand(ins.chmod, scope, esc) if ins.chmod else None
    from_ = expand(ins.from_, scope, esc) if getattr(ins, "from_", None) else None
    workdir = workdir_of(config)
    heredoc_data = [(h.name, (expand_heredoc(h.data, scope) if h.expand else h.data).encode()) for h in ins.heredocs]
    tmp = None
    url_items: list = []
    srcs: list = []
    try:
        digest = hashlib.sha256()
        if from_:
            digest.update(_source_key(b, from_).encode())
        else:
            urls = [s for s in sources if s.startswith(("http://", "https://"))] if ins.kind == "ADD" else []
            local = [s for s in sources if s not in urls]
            if urls:
                from pinnace.builder.copier import fetch_url
                tmp = Path(b.store.layout.tmp_dir) / f"add-{os.getpid()}-{os.urandom(4).hex()}"
                tmp.mkdir(parents=True)
                for url in urls:
                    item = fetch_url(url, str(tmp), checksum=expand(ins.checksum, scope, esc)
                                     if getattr(ins, "checksum", None) else None)
                    url_items.append(item)
                    with open(item.host_path, "rb") as f:
                        digest.update(hashlib.sha256(f.read()).digest())
            if local:
                srcs = b.ctx.resolve_sources(local, ins.kind)
                digest.update(b.ctx.checksum(srcs).encode())  # --chown is part of the key itself
        for name, data in heredoc_data:
            digest.update(name.encode() + b"\0" + data)
        key = step_key(result.key, ins.kind, sources, dest, chown, chmod, from_, workdir, digest.hexdigest(),
                       getattr(ins, "unpack", None), ins.link, list(ins.exclude))
        hit = _hit(b, key)
        if hit is not None:
            return hit
        from pinnace.builder.copier import CopyItem, context_items, copy_into, resolve_from_rootfs
        step = new_step_dir(b.store)
        extra: list[Path] = []
        try:
            walk = None
            if from_:
                items = resolve_from_rootfs(_stage_rootfs(b, from_, extra), sources)
            else:
                items = list(url_items)
                if srcs:
                    local_items, walk = context_items(b.ctx, srcs)
                    items += local_items
            items += [CopyItem(kind="heredoc", host_path=None, name=name, is_dir=False, data=data)
                      for name, data in heredoc_data]
            if not items:
                raise InvalidArgument(f"{ins.kind} failed: no source files were specified")
            mount_step(b.store, step, result.layers)
            wildcard = any(has_wildcards(s) for s in sources)
            copy_into(str(step / "merged"), items, dest, workdir=workdir, instruction=ins.kind, chown=chown,
                      chmod=chmod, unpack=getattr(ins, "unpack", None), wildcard=wildcard, walk=walk,
                      exclude=tuple(expand(e, scope, esc) for e in ins.exclude))
            # BuildKit's created_by: --chown/--chmod kept, --from and --link not, heredocs as <<NAME
            shown = " ".join([*sources, *(f"<<{h.name}" for h in ins.heredocs), dest])
            flags = (f"--chown={chown} " if chown else "") + (f"--chmod={chmod} " if chmod else "")
            return _commit(b, step, config, key, f"{ins.kind} {flags}{shown} # buildkit")
        finally:
            remove_step_dir(step)
            for path in extra:
                remove_step_dir(path)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
