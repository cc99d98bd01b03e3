"""Dockerfile-style `--change` instructions for `import` (and later `commit`) applied to an image config."""
from __future__ import annotations

import json
import shlex

from pinnace.errors import InvalidArgument

_SUPPORTED = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR", "STOPSIGNAL")


def _exec_form(value: str) -> list[str]:
    """JSON array form as given; shell form wrapped in /bin/sh -c, as Docker does."""
    value = value.strip()
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return parsed
    return ["/bin/sh", "-c", value]


def _pairs(value: str) -> list[tuple[str, str]]:
    words = shlex.split(value)
    if len(words) == 2 and "=" not in words[0]:
        return [(words[0], words[1])]  # legacy "ENV KEY value"
    pairs = []
    for w in words:
        k, sep, v = w.partition("=")
        if not sep or not k:
            raise InvalidArgument(f"invalid change value {w!r}: expected KEY=VALUE")
        pairs.append((k, v))
    return pairs


def apply_changes(config: dict, changes: tuple[str, ...]) -> dict:
    cfg = dict(config)
    for change in changes:
        instr, _, value = change.strip().partition(" ")
        instr = instr.upper()
        if instr not in _SUPPORTED:
            raise InvalidArgument(f"invalid change {change!r}: supported instructions are {', '.join(_SUPPORTED)}")
        if instr == "CMD":
            cfg["Cmd"] = _exec_form(value)
        elif instr == "ENTRYPOINT":
            cfg["Entrypoint"] = _exec_form(value)
        elif instr == "ENV":
            env = [e for e in cfg.get("Env", [])]
            for k, v in _pairs(value):
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            cfg["Env"] = env
        elif instr == "LABEL":
            cfg["Labels"] = {**cfg.get("Labels", {}), **dict(_pairs(value))}
        elif instr == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts", {}))
            for p in value.split():
                ports[p if "/" in p else f"{p}/tcp"] = {}
            cfg["ExposedPorts"] = ports
        elif instr == "VOLUME":
            vols = dict(cfg.get("Volumes", {}))
            for v in _exec_form(value) if value.strip().startswith("[") else value.split():
                vols[v] = {}
            cfg["Volumes"] = vols
        else:
            cfg[{"USER": "User", "WORKDIR": "WorkingDir", "STOPSIGNAL": "StopSignal"}[instr]] = value.strip()
    return cfg
