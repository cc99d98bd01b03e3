"""The records the Dockerfile parser produces (frozen dataclasses) and RUN --mount parsing.

Every value is raw, as written in the Dockerfile (quotes included where the instruction keeps them):
the executor expands what Docker expands (expand.EXPANDED_INSTRUCTIONS, expand.EXPANDED_FLAGS) with the
environment in scope at that step.
"""
from __future__ import annotations

import csv
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass

from pinnace.builder.expand import DockerfileError, go_quote, heredoc_word

_DURATION = re.compile(r"(\d*\.?\d*)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_NANOS = {"ns": 1, "us": 10**3, "\u00b5s": 10**3, "\u03bcs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
          "h": 3600 * 10**9}

# ------------------------------------------------------------------------------------------------ records

@dataclass(frozen=True, kw_only=True)
class Heredoc:
    name: str  # the delimiter, quotes removed; for COPY/ADD also the file's name
    content: str  # body lines verbatim, each with its newline
    expand: bool  # delimiter fully unquoted: COPY/ADD substitute variables (expand.expand_heredoc)
    chomp: bool  # <<-: leading tabs are stripped from the body

    @property
    def data(self) -> str:
        """The body as used: leading tabs removed from every line when chomp."""
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass(frozen=True, kw_only=True)
class Instruction:
    kind: str  # upper case: "RUN", "COPY", ...
    line: int  # 1-based first line
    end_line: int  # last line, heredoc bodies included
    original: str  # the instruction as one line (continuations joined, comments dropped), no heredoc bodies


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    args: tuple[tuple[str, str | None], ...]  # (name, raw default or None)


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    pairs: tuple[tuple[str, str], ...]  # raw; expand keys and values with the env before this instruction


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    name: str  # Docker sets the image config's `author` from it (not expanded)


@dataclass(frozen=True, kw_only=True)
class _Command(Instruction):
    args: tuple[str, ...]  # exec form: the JSON array; shell form: (text,), or () when empty
    json: bool

    def argv(self, shell: tuple[str, ...] | list[str]) -> list[str]:
        """The command line as Docker builds it: exec form as is, shell form appended to SHELL."""
        return list(self.args) if self.json else [*shell, " ".join(self.args)]


@dataclass(frozen=True, kw_only=True)
class Cmd(_Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Entrypoint(_Command):
    pass


@dataclass(frozen=True, kw_only=True)
class Run(_Command):
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[str, ...] = ()  # raw --mount values; parse_mount(value, expander) at execution
    network: str | None = None  # default | none | host
    security: str | None = None  # sandbox | insecure

    def inline_script(self) -> Heredoc | None:
        """The heredoc to mount executable at /dev/pipes/<name> when the command is a lone heredoc whose
        body starts with `#!` (BuildKit runs such a script by its path)."""
        if self.heredocs and not self.json and self.args and heredoc_word(self.args[0]):
            return self.heredocs[0] if self.heredocs[0].content.startswith("#!") else None
        return None

    def argv(self, shell: tuple[str, ...] | list[str]) -> list[str]:
        """BuildKit's RUN: a lone heredoc runs its body as the shell command (or the inline script by its
        path); a command with heredocs gets the bodies appended for the shell to read."""
        if self.json or not self.heredocs:
            return super().argv(shell)
        text = self.args[0]
        if heredoc_word(text):
            script = self.inline_script()
            text = "/dev/pipes/" + script.name if script else self.heredocs[0].data
        else:
            text += "".join("\n" + doc.content + doc.name for doc in self.heredocs)
        return [*shell, text]


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    args: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    ports: tuple[str, ...]  # raw words; expand.expand_words each (one may become several)


@dataclass(frozen=True, kw_only=True)
class _Transfer(Instruction):
    sources: tuple[str, ...]  # raw paths/URLs, heredoc sources excluded; expand each
    dest: str  # raw
    heredocs: tuple[Heredoc, ...]  # inline files: named heredoc.name inside dest
    json: bool
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Copy(_Transfer):
    from_: str | None = None  # --from: a stage name, a stage index, or an image
    parents: bool = False


@dataclass(frozen=True, kw_only=True)
class Add(_Transfer):
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    user: str


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    path: str


@dataclass(frozen=True, kw_only=True)
class StopSignal(Instruction):
    signal: str


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    test: tuple[str, ...]  # Docker's Test: ("NONE",) | ("CMD", *argv) | ("CMD-SHELL", text)
    interval: int = 0  # nanoseconds, 0 = unset (inherit)
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    trigger: Instruction  # parsed now, executed in the child build
    expression: str  # what the image config's OnBuild records (heredoc bodies appended)


@dataclass(frozen=True, kw_only=True)
class Stage:
    index: int
    name: str | None  # the AS name, lower-cased
    base: str  # raw image reference (expand with the global ARGs); "scratch" is no image
    platform: str | None  # raw --platform
    line: int
    original: str
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True, kw_only=True)
class Dockerfile:
    filename: str
    escape: str
    syntax: str | None
    check: str | None
    global_args: tuple[Arg, ...]  # ARGs before the first FROM: usable in FROM lines only
    stages: tuple[Stage, ...]
    warnings: tuple[str, ...]

    def stage(self, ref: str) -> Stage | None:
        """A stage by name (case-insensitive) or by index, as --target and COPY --from name them."""
        for st in self.stages:
            if st.name is not None and st.name == ref.lower():
                return st
        return self.stages[int(ref)] if ref.isdecimal() and int(ref) < len(self.stages) else None


@dataclass(frozen=True, kw_only=True)
class Mount:
    type: str  # bind | cache | tmpfs | secret | ssh
    target: str  # relative targets are relative to the WORKDIR (the executor resolves)
    source: str = ""
    from_: str = ""  # a stage or image (bind, cache)
    readonly: bool = False
    id: str = ""  # cache id (default: target) or secret id (default: source or basename(target))
    sharing: str = ""  # cache: shared (default) | private | locked
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool = False
    size: int | None = None  # tmpfs bytes
    env: str | None = None  # secret: also (or only) exposed as this environment variable


def parse_mount(spec: str, expander: Callable[[str], str] | None = None) -> Mount:
    """A RUN --mount value (`type=cache,target=/root/.cache,sharing=locked`), BuildKit's rules. The
    parser validates it raw; the executor parses it again with an expander (values are expanded)."""
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        raise DockerfileError(f"invalid mount {go_quote(spec)}") from None
    opts: dict = {"type": "bind"}
    ro_auto = True
    for fld in fields:
        key, eq, value = fld.partition("=")
        key = key.lower()
        mtype = opts["type"]
        if not eq:
            if key in ("readonly", "ro", "readwrite", "rw"):
                opts["readonly"], ro_auto = key in ("readonly", "ro"), False
            elif key == "required" and mtype in ("secret", "ssh"):
                opts["required"] = True
            elif key == "required":
                raise DockerfileError(f"unexpected key '{key}' for mount type '{mtype}'")
            else:
                raise DockerfileError(f"invalid field '{fld}' must be a key=value pair")
            continue
        if expander is not None and key != "type":
            value = expander(value)
        if key == "type":
            if value.lower() not in ("bind", "cache", "tmpfs", "secret", "ssh"):
                raise DockerfileError(f"unsupported mount type {go_quote(value)}")
            opts["type"] = value.lower()
        elif key in ("from", "source", "src", "target", "dst", "destination", "id", "env"):
            opts[{"src": "source", "dst": "target", "destination": "target", "from": "from_"}.get(key, key)] = value
        elif key in ("readonly", "ro", "readwrite", "rw", "required"):
            if value.lower() not in ("1", "t", "true", "0", "f", "false"):
                raise DockerfileError(f"invalid value for {key}: {value}")
            flag = value.lower() in ("1", "t", "true")
            if key == "required":
                if mtype not in ("secret", "ssh"):
                    raise DockerfileError(f"unexpected key '{key}' for mount type '{mtype}'")
                opts["required"] = flag
            else:
                opts["readonly"], ro_auto = flag if key in ("readonly", "ro") else not flag, False
        elif key == "sharing":
            if value.lower() not in ("shared", "private", "locked"):
                raise DockerfileError(f"unsupported sharing value {go_quote(value)}")
            opts["sharing"] = value.lower()
        elif key in ("mode", "uid", "gid"):
            try:
                opts[key] = int(value, 8 if key == "mode" else 10)
            except ValueError:
                raise DockerfileError(f"invalid value {value} for {key}") from None
        elif key == "size" and mtype == "tmpfs":
            m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?", value.lower())
            if not m:
                raise DockerfileError(f"invalid size: {go_quote(value)}")
            opts["size"] = int(float(m.group(1)) * 1024 ** " kmgtp".index(m.group(2) or " "))
        elif key == "size":
            raise DockerfileError(f"unexpected key '{key}' for mount type '{mtype}'")
        else:
            raise DockerfileError(f"unexpected key '{key}' in '{fld}'")
    mtype = opts["type"]
    for key in ("mode", "uid", "gid"):
        if key in opts and mtype not in ("secret", "ssh", "cache"):
            raise DockerfileError(f"{key} not allowed for {go_quote(mtype)} type mounts")
    if ro_auto:
        opts["readonly"] = mtype not in ("cache", "tmpfs")
    if opts.get("sharing") and mtype != "cache":
        raise DockerfileError(f"invalid cache sharing set for {mtype} mount")
    if mtype == "secret":
        if opts.get("from_"):
            raise DockerfileError("secret mount should not have a from")
        if opts.get("source") and opts.get("id"):
            raise DockerfileError("both source and id can't be set")
        opts["id"] = opts.get("source") or opts.get("id") or posixpath.basename(opts.get("target", ""))
        if not opts["id"]:
            raise DockerfileError("invalid secret mount. one of source, target required")
        if not opts.get("target") and opts.get("env") is None:
            opts["target"] = "/run/secrets/" + posixpath.basename(opts["id"])
    elif mtype == "ssh":
        opts.setdefault("id", "default")
        if not opts.get("target"):
            opts["target"] = "/run/buildkit/ssh_agent.0"
    elif not opts.get("target"):
        raise DockerfileError(f"mount target is required: {go_quote(spec)}")
    if mtype == "cache":
        opts["sharing"] = opts.get("sharing") or "shared"
        opts["id"] = opts.get("id") or opts["target"]
    opts.setdefault("target", "")
    return Mount(**opts)


def parse_duration(name: str, value: str) -> int:
    """Go's time.ParseDuration in nanoseconds, with HEALTHCHECK's 1ms minimum."""
    if not value:
        return 0
    body, sign, total = value, 1, 0.0
    if body[:1] in ("-", "+"):
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if body != "0":
        pos = 0
        while pos < len(body):
            m = _DURATION.match(body, pos)
            if not m or m.group(1) in ("", "."):
                unit_missing = bool(re.fullmatch(r"[\d.]+", body[pos:]))
                what = "missing unit in duration" if unit_missing else "invalid duration"
                raise DockerfileError(f"time: {what} {go_quote(value)}")
            total += float(m.group(1)) * _NANOS[m.group(2)]
            pos = m.end()
        if not body:
            raise DockerfileError(f"time: invalid duration {go_quote(value)}")
    nanos = sign * int(total)
    if nanos != 0 and nanos < 10**6:
        raise DockerfileError(f"Interval {go_quote(name)} cannot be less than 1ms")
    return nanos
