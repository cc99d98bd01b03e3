"""`build`: the build context and Dockerfile opened, the builder run, the result recorded and tagged."""
from __future__ import annotations

import platform as _platform
from collections.abc import Callable

from pinnace.engine.contract import ImageBuildOptions, ImageBuildReport
from pinnace.engine.store import Store
from pinnace.errors import InvalidArgument


def _build_args(opts: ImageBuildOptions) -> dict[str, str]:
    env = dict(opts.environ)
    args: dict[str, str] = {}
    for item in opts.build_args:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid --build-arg {item!r} (KEY=VALUE or KEY)")
        if sep:
            args[key] = value
        elif key in env:
            args[key] = env[key]   # Docker: a bare KEY takes the caller's environment, or is dropped
    return args


def _secrets(opts: ImageBuildOptions) -> dict[str, str]:
    import os
    out: dict[str, str] = {}
    for item in opts.secrets:
        fields = dict(f.partition("=")[::2] for f in item.split(","))
        sid = fields.get("id")
        src = fields.get("src") or fields.get("source")
        if not sid or not src:
            raise InvalidArgument(f"invalid --secret {item!r} (id=ID,src=PATH)")
        if not os.path.isfile(src):
            raise InvalidArgument(f"--secret {sid}: {src} is not a file")
        out[sid] = os.path.abspath(src)
    return out


def _check_platform(value: str | None) -> None:
    if not value:
        return
    from pinnace.builder.config_ops import scratch_config
    host = f"linux/{scratch_config()['architecture']}"
    wanted = value.lower().split(",")
    if any(w not in (host, host + "/v1", "linux") for w in wanted):
        raise InvalidArgument(f"--platform {value}: only this host's platform ({host}) can be built here "
                              "(no emulation)")


def build_image(store: Store, opts: ImageBuildOptions, emit: Callable[[str, object], None]) -> ImageBuildReport:
    from pinnace.builder.context import open_context
    from pinnace.builder.dockerfile import parse
    from pinnace.builder.executor import Builder, BuildSettings
    from pinnace.engine.layer_commit import record_built_image
    from pinnace.engine.resolve import canonical_name
    _check_platform(opts.platform)
    if opts.pull not in ("missing", "always", "never"):
        raise InvalidArgument(f"invalid --pull policy {opts.pull!r} (missing, always, never)")
    names = tuple(canonical_name(t) for t in opts.tags)   # bad tags fail before any work
    labels = {}
    for item in opts.labels:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid --label {item!r}")
        labels[key] = value
    settings = BuildSettings(build_args=_build_args(opts), target=opts.target, no_cache=opts.no_cache,
                             pull=opts.pull, network=opts.network, secrets=_secrets(opts), labels=labels,
                             platform=opts.platform or "")
    store.open_for_write()
    store.driver_name()  # chosen before any step directory exists
    ctx = open_context(opts.context, opts.dockerfile, stdin=opts.stdin)
    try:
        dockerfile = parse(ctx.dockerfile_text, ctx.dockerfile_name)
        for warning in dockerfile.warnings:
            emit("info", f"[Warning] {warning}")
        with store.gc_lock(shared=True):
            result = Builder(store, ctx, dockerfile, settings, emit).build()
            config = result.config
            if labels:
                config["config"]["Labels"] = {**(config["config"].get("Labels") or {}), **labels}
            if not config.get("history"):
                from pinnace.engine.layer_commit import now_rfc3339
                config["created"] = now_rfc3339()
            emit("step", "COMMIT " + (", ".join(opts.tags) if opts.tags else ""))
            image_id = record_built_image(store, config, names)
    finally:
        ctx.close()
    return ImageBuildReport(image_id, names)


__all__ = ["build_image", "_platform"]
