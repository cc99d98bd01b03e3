"""The image config as Dockerfile instructions change it, and the history entries they leave.

`config` is the whole OCI/Docker image config document ({"architecture", "os", "config": {...},
"rootfs", "history", "created", "author"?}); the functions change the inner "config" the way Docker's
builder does. created_by strings follow BuildKit (`RUN /bin/sh -c … # buildkit`, `ENV A=b`, `COPY x /y
# buildkit`), with `empty_layer` on the entries of metadata-only steps.
"""
from __future__ import annotations

import copy
import platform

from pinnace.builder import dockerfile as df
from pinnace.builder.expand import DockerfileError, expand, expand_words

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def scratch_config() -> dict:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"architecture": arch, "os": "linux",
            "config": {"Env": [f"PATH={DEFAULT_PATH}"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def from_image(image_config: dict) -> dict:
    cfg = copy.deepcopy(image_config)
    cfg.setdefault("config", {})
    cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    cfg.setdefault("history", [])
    for key in ("container", "container_config", "docker_version", "id", "parent"):
        cfg.pop(key, None)   # classic-builder leftovers: not ours to carry
    return cfg


def env_dict(config: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (config.get("config") or {}).get("Env") or []:
        key, _, value = item.partition("=")
        out[key] = value
    return out


def set_env(config: dict, key: str, value: str) -> None:
    env = config["config"].setdefault("Env", []) or []
    for i, item in enumerate(env):
        if item.partition("=")[0] == key:
            env[i] = f"{key}={value}"
            break
    else:
        env.append(f"{key}={value}")
    config["config"]["Env"] = env


def shell(config: dict) -> list[str]:
    return list(config["config"].get("Shell") or DEFAULT_SHELL)


def apply_metadata(config: dict, ins: df.Instruction, scope: dict[str, str], escape: str,
                   state: dict) -> str:
    """Apply a metadata-only instruction; returns its history created_by. `scope` is the environment
    for substitution (image Env + ARGs in scope); `state` carries per-stage facts (cmd_set)."""
    c = config["config"]
    kind = ins.kind
    if kind == "ENV":
        parts = []
        before = dict(scope)   # Docker: every pair sees the environment from before the instruction
        for key, value in ins.pairs:
            k, v = expand(key, before, escape), expand(value, before, escape)
            set_env(config, k, v)
            scope[k] = v
            parts.append(f"{k}={v}")
        return "ENV " + " ".join(parts)
    if kind == "LABEL":
        labels = c.setdefault("Labels", {}) or {}
        parts = []
        for key, value in ins.pairs:
            k, v = expand(key, scope, escape), expand(value, scope, escape)
            labels[k] = v
            parts.append(f"{k}={v}")
        c["Labels"] = labels
        return "LABEL " + " ".join(parts)
    if kind == "MAINTAINER":
        config["author"] = ins.name
        return "MAINTAINER " + ins.name
    if kind == "CMD":
        c["Cmd"] = ins.argv(shell(config)) if ins.args else None
        state["cmd_set"] = True
        return "CMD " + _shown(ins.argv(shell(config)) if ins.args else [])
    if kind == "ENTRYPOINT":
        c["Entrypoint"] = ins.argv(shell(config)) if ins.args else None
        if not state.get("cmd_set"):
            c["Cmd"] = None  # Docker: ENTRYPOINT resets a CMD inherited from the base image
        return "ENTRYPOINT " + _shown(ins.argv(shell(config)) if ins.args else [])
    if kind == "EXPOSE":
        ports = c.setdefault("ExposedPorts", {}) or {}
        shown = []
        for word in ins.ports:
            for port in expand_words(word, scope, escape):
                if not port:
                    continue
                number, _, proto = port.partition("/")
                proto = (proto or "tcp").lower()
                if proto not in ("tcp", "udp", "sctp") or not _port_range_ok(number):
                    raise DockerfileError(f"invalid containerPort: {port}")
                lo, _, hi = number.partition("-")
                for n in range(int(lo), int(hi or lo) + 1):   # Docker: a range is one key per port
                    ports[f"{n}/{proto}"] = {}
                    shown.append(f"{n}/{proto}")
        c["ExposedPorts"] = ports
        return "EXPOSE map[" + " ".join(f"{p}:{{}}" for p in sorted(set(shown))) + "]"
    if kind == "VOLUME":
        vols = c.setdefault("Volumes", {}) or {}
        paths = [expand(p, scope, escape) for p in ins.paths]
        for p in paths:
            if not p:
                raise DockerfileError("VOLUME specified can not be an empty string")
            vols[p] = {}
        c["Volumes"] = vols
        return "VOLUME [" + " ".join(paths) + "]"     # Go's %v of a []string
    if kind == "USER":
        c["User"] = expand(ins.user, scope, escape)
        return "USER " + c["User"]
    if kind == "STOPSIGNAL":
        c["StopSignal"] = expand(ins.signal, scope, escape)
        return "STOPSIGNAL " + c["StopSignal"]
    if kind == "HEALTHCHECK":
        hc: dict = {"Test": list(ins.test)}
        for key, value in (("Interval", ins.interval), ("Timeout", ins.timeout), ("StartPeriod", ins.start_period),
                           ("StartInterval", ins.start_interval), ("Retries", ins.retries)):
            if value:
                hc[key] = value
        c["Healthcheck"] = hc
        if ins.test == ("NONE",):
            return "HEALTHCHECK NONE"
        from pinnace.builder.expand import go_quote
        test = "[" + " ".join(go_quote(t) for t in ins.test) + "]"
        durations = " ".join(go_quote(_go_duration(v)) for v in (ins.interval, ins.timeout, ins.start_period,
                                                                 ins.start_interval))
        return f"HEALTHCHECK &{{{test} {durations} {_go_rune(ins.retries)}}}"   # BuildKit's %q of the struct
    if kind == "SHELL":
        c["Shell"] = list(ins.args)
        return "SHELL [" + " ".join(ins.args) + "]"
    if kind == "ONBUILD":
        c.setdefault("OnBuild", [])
        c["OnBuild"] = (c["OnBuild"] or []) + [ins.expression]
        return "ONBUILD " + ins.expression
    raise DockerfileError(f"{kind} is not a metadata instruction")


def _go_duration(ns: int) -> str:
    """Go's time.Duration.String() for the values a HEALTHCHECK takes."""
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                value = ns / size
                return (f"{value:.9f}".rstrip("0").rstrip(".")) + unit
    seconds = ns / 1_000_000_000
    h, rem = divmod(int(seconds), 3600)
    m, _ = divmod(rem, 60)
    s = seconds - h * 3600 - m * 60
    text = f"{s:.9f}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{h}h{m}m{text}"
    return f"{m}m{text}" if m else text


def _go_rune(n: int) -> str:
    """Go's %q of an integer: a quoted character literal."""
    if 32 <= n < 127:
        ch = chr(n)
        return "'\\''" if ch == "'" else ("'\\\\'" if ch == "\\" else f"'{ch}'")
    if n < 256:
        return f"'\\x{n:02x}'"
    return f"'\\u{n:04x}'"


def _shown(args: list[str]) -> str:
    return "[" + " ".join(f'"{a}"' for a in args) + "]"


def _port_range_ok(text: str) -> bool:
    lo, _, hi = text.partition("-")
    try:
        return 0 < int(lo) < 65536 and (not hi or int(lo) <= int(hi) < 65536)
    except ValueError:
        return False
