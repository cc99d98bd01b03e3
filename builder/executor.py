"""Executing a parsed Dockerfile: stages in order (only those the target needs), each instruction either
a config change (no layer) or a layer (RUN, COPY, ADD, WORKDIR that creates its directory), every step
looked up in the build cache first.

Progress goes to `emit(kind, payload)`: ("step", "STEP 2/5: RUN …"), ("cache", "--> Using cache …"),
("output", bytes), ("info", text); the CLI prints them (nothing here prints).
"""
from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pinnace.builder import config_ops as co
from pinnace.builder import dockerfile as df
from pinnace.builder.cache import BuildCache, step_key
from pinnace.builder.expand import DockerfileError, expand
from pinnace.engine.store import Store
from pinnace.errors import BuildFailed, InvalidArgument, PinnaceError

Emit = Callable[[str, object], None]


@dataclass
class StageResult:
    config: dict                      # the image config after the stage (rootfs.diff_ids = its layers)
    key: str                          # cache key of its last step

    @property
    def layers(self) -> list[str]:
        return list(self.config["rootfs"]["diff_ids"])


@dataclass
class BuildSettings:
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: str = "missing"             # missing | always | never
    network: str = ""                 # RUN's default network: "" (user-mode), host, none
    secrets: dict[str, str] = field(default_factory=dict)   # id -> host file
    labels: dict[str, str] = field(default_factory=dict)
    platform: str = ""


def predefined_args() -> dict[str, str]:
    cfg = co.scratch_config()
    plat = f"linux/{cfg['architecture']}"
    return {"TARGETPLATFORM": plat, "TARGETOS": "linux", "TARGETARCH": cfg["architecture"], "TARGETVARIANT": "",
            "BUILDPLATFORM": plat, "BUILDOS": "linux", "BUILDARCH": cfg["architecture"], "BUILDVARIANT": ""}


class Builder:
    def __init__(self, store: Store, ctx, dockerfile: df.Dockerfile, settings: BuildSettings, emit: Emit) -> None:  # noqa: ANN001
        self.store, self.ctx, self.df, self.s, self.emit = store, ctx, dockerfile, settings, emit
        self.cache = BuildCache(store, enabled=not settings.no_cache)
        self.results: dict[int, StageResult] = {}
        self.used_args: set[str] = set()
        self.global_scope = self._global_args()
        self.step_no = 0
        self.step_total = 0

    # -- planning -----------------------------------------------------------------------------------
    def _global_args(self) -> dict[str, str]:
        scope = dict(predefined_args())
        for arg in self.df.global_args:
            for name, default in arg.args:
                if name in self.s.build_args:
                    scope[name] = self.s.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    scope[name] = expand(default, scope, self.df.escape)
        return scope

    def target_stage(self) -> df.Stage:
        if not self.s.target:
            return self.df.stages[-1]
        stage = self.df.stage(self.s.target)
        if stage is None:
            raise InvalidArgument(f"target stage {self.s.target!r} could not be found")
        return stage

    def _stage_ref(self, name: str) -> df.Stage | None:
        stage = self.df.stage(name)
        return stage

    def needed(self, target: df.Stage) -> list[df.Stage]:
        """The target and every stage it reaches through FROM, COPY --from and RUN --mount from=."""
        want: set[int] = set()

        def visit(stage: df.Stage) -> None:
            if stage.index in want:
                return
            want.add(stage.index)
            refs = [expand(stage.base, self.global_scope, self.df.escape)]
            for ins in stage.instructions:
                if isinstance(ins, df.Copy) and ins.from_:
                    refs.append(ins.from_)
                if isinstance(ins, df.Run):
                    refs += [m.split("from=", 1)[1].split(",", 1)[0] for m in ins.mounts if "from=" in m]
            for ref in refs:
                other = self.df.stage(ref)
                if other is not None and other.index < stage.index:
                    visit(other)
        visit(target)
        return [s for s in self.df.stages if s.index in want]

    # -- running ------------------------------------------------------------------------------------
    def build(self) -> StageResult:
        target = self.target_stage()
        stages = self.needed(target)
        self.step_total = sum(1 + len(s.instructions) for s in stages)
        for stage in stages:
            self.results[stage.index] = self._stage(stage)
        unused = sorted(set(self.s.build_args) - self.used_args)
        if unused:
            self.emit("info", f"[Warning] one or more build args were not consumed: {unused}")
        return self.results[target.index]

    def _step(self, text: str) -> None:
        self.step_no += 1
        self.emit("step", f"STEP {self.step_no}/{self.step_total}: {text}")

    def _stage(self, stage: df.Stage) -> StageResult:
        base = expand(stage.base, self.global_scope, self.df.escape).strip()
        self._step(stage.original)
        if not base:
            raise DockerfileError(f"base name ({stage.base}) should not be blank").at(self.df.filename, stage.line)
        other = self.df.stage(base)
        if other is not None and other.index < stage.index:
            prev = self.results[other.index]
            config, key = co.from_image(prev.config), prev.key
        elif base.lower() == "scratch":
            config, key = co.scratch_config(), step_key("scratch")
        else:
            iid, image_cfg = self._base_image(base)
            config, key = co.from_image(image_cfg), step_key("image", iid)
        state = {"cmd_set": False, "args": {}}
        result = StageResult(config, key)
        triggers = [df.parse_trigger(t) for t in (config.get("config") or {}).get("OnBuild") or []]
        if triggers:
            config["config"]["OnBuild"] = None  # triggers run once, in the first child build
        for ins in [*triggers, *stage.instructions]:
            self._step(ins.original)
            try:
                result = self._instruction(result, ins, state)
            except DockerfileError as exc:
                raise exc.at(self.df.filename, ins.line) if not exc.line else exc
            except PinnaceError as exc:  # errors name the file and line of the step
                located = type(exc)(f"{self.df.filename}:{ins.line}: {exc}")
                raise located from None
        return result

    def _base_image(self, ref: str) -> tuple[str, dict]:
        from pinnace.engine.images import image_config
        from pinnace.engine.resolve import resolve_image
        from pinnace.errors import ImageNotFound
        if self.s.pull != "always":
            try:
                iid, _ = resolve_image(self.store.images, ref)
                return iid, image_config(self.store, iid)
            except ImageNotFound:
                if self.s.pull == "never":
                    raise
        from pinnace.engine.contract import ImagePullOptions
        from pinnace.engine.pull import pull_image
        self.emit("info", f"Pulling {ref}")
        from pinnace.engine.contract import no_progress
        report = pull_image(self.store, ImagePullOptions(ref, platform=self.s.platform or None), no_progress)
        return report.image_id, image_config(self.store, report.image_id)

    def _scope(self, config: dict, state: dict) -> dict[str, str]:
        scope = co.env_dict(config)
        scope.update(state["args"])
        return scope

    def _instruction(self, result: StageResult, ins: df.Instruction, state: dict) -> StageResult:
        config = co.from_image(result.config)
        if ins.kind == "ARG":
            shown = []
            for name, default in ins.args:
                if name in self.s.build_args:
                    value = self.s.build_args[name]
                    self.used_args.add(name)
                elif default is not None:
                    value = expand(default, self._scope(config, state), self.df.escape)
                elif name in self.global_scope:
                    value = self.global_scope[name]
                else:
                    value = None
                if value is not None:
                    state["args"][name] = value
                    shown.append(f"{name}={value}")
                else:
                    state["args"].pop(name, None)
                    shown.append(name)
            key = step_key(result.key, "ARG", shown)
            cached = self.cache.get(key)
            if cached is not None:
                self.emit("cache", f"--> Using cache {key[:12]}")
                return StageResult(cached, key)
            self.add_history(config, "ARG " + " ".join(shown), empty=True)   # as BuildKit records it
            self.cache.put(key, config)
            return StageResult(config, key)
        if ins.kind in ("RUN", "COPY", "ADD", "WORKDIR"):
            from pinnace.builder.layer_steps import layer_step
            return layer_step(self, result, config, ins, state)
        scope = self._scope(config, state)
        key = step_key(result.key, ins.kind, ins.original, sorted(state["args"].items()))
        cached = self.cache.get(key)
        if cached is not None:
            self.emit("cache", f"--> Using cache {key[:12]}")
            return StageResult(cached, key)
        created_by = co.apply_metadata(config, ins, scope, self.df.escape, state)
        if ins.kind != "ONBUILD":  # BuildKit records the trigger in the config only
            self.add_history(config, created_by, empty=True)
        self.cache.put(key, config)
        return StageResult(config, key)

    def add_history(self, config: dict, created_by: str, *, empty: bool) -> None:
        from pinnace.engine.layer_commit import now_rfc3339
        entry = {"created": now_rfc3339(), "created_by": created_by, "comment": "buildkit.dockerfile.v0"}
        if empty:
            entry["empty_layer"] = True
        config.setdefault("history", []).append(entry)
        config["created"] = entry["created"]

    def run_env(self, config: dict, state: dict) -> list[str]:
        """ARGs in scope reach RUN as environment variables (not stored in the image), unless ENV names
        the same variable (ENV wins, as in Docker)."""
        env = co.env_dict(config)
        return [f"{k}={v}" for k, v in state["args"].items() if k not in env]


def workdir_of(config: dict) -> str:
    return (config.get("config") or {}).get("WorkingDir") or "/"


def absolute(path: str, workdir: str) -> str:
    return posixpath.normpath(posixpath.join(workdir, path)) if not path.startswith("/") else posixpath.normpath(path)


def ensure_dir(path: Path) -> None:
    os.makedirs(path, exist_ok=True)


__all__ = ["Builder", "BuildSettings", "StageResult", "BuildFailed", "absolute", "workdir_of"]
