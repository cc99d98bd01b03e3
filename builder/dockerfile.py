"""The Dockerfile parser: text → stages of typed instructions (instructions.py), nothing expanded.

It follows BuildKit's frontend where the reference is silent. Parser directives (`syntax`, `escape`,
`check`; keys case-insensitive, each at most once) are read only while the file starts with them: the first
line that is not one (an instruction, a blank line, any other comment) ends them, and an unknown one is a
comment. Comment lines (`#` after optional whitespace) are dropped everywhere, even inside a continuation; a
`#` later in a line is an argument. The escape character plus optional spaces/tabs at the end of a line
continues the instruction; blank continuation lines are skipped (BuildKit warns, so do we). Heredoc bodies
(RUN/COPY/ADD in shell form, also under ONBUILD) follow the instruction line, verbatim.

RUN/CMD/ENTRYPOINT/SHELL (and HEALTHCHECK CMD) are in exec form when the argument is a JSON array of
strings; text that is not valid JSON (even `[…`) is shell form, as in Docker, but a valid JSON array holding
a non-string is an error. SHELL must be JSON. ADD/COPY/VOLUME take a JSON array or whitespace-split words.
Every instruction takes leading `--flag[=value]` words; an instruction rejects a flag it does not know.
Errors read `Dockerfile:LINE: message`, most with BuildKit's wording.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pinnace.builder.expand import (DockerfileError, go_quote, heredoc_word, heredocs_in_line, parse_key_values,
                                    split_words)
from pinnace.builder.instructions import (Add, Arg, Cmd, Copy, Dockerfile, Entrypoint, Env, Expose, Healthcheck,
                                          Heredoc, Instruction, Label, Maintainer, Mount, Onbuild, Run, Shell,
                                          Stage, StopSignal, User, Volume, Workdir, parse_duration,
                                          parse_mount)

__all__ = ["DockerfileError", "parse", "parse_trigger", "parse_mount", "Dockerfile", "Stage", "Instruction",
           "Heredoc", "Arg", "Env", "Label", "Maintainer", "Run", "Cmd", "Entrypoint", "Shell", "Expose",
           "Copy", "Add", "Volume", "User", "Workdir", "StopSignal", "Healthcheck", "Onbuild", "Mount"]

_GO_SPACE = " \t\n\f\r"
_DIRECTIVE = re.compile(rf"^#[{_GO_SPACE}]*([a-zA-Z][a-zA-Z0-9]*)[{_GO_SPACE}]*=[{_GO_SPACE}]*(.+?)[{_GO_SPACE}]*$")
_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_STR, _BOOL, _LIST = "string", "bool", "strings"
_FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": _STR},
    "RUN": {"mount": _LIST, "network": _STR, "security": _STR},
    "COPY": {"from": _STR, "chown": _STR, "chmod": _STR, "link": _BOOL, "parents": _BOOL, "exclude": _LIST},
    "ADD": {"chown": _STR, "chmod": _STR, "link": _BOOL, "checksum": _STR, "keep-git-dir": _BOOL,
            "exclude": _LIST, "unpack": _BOOL},
    "HEALTHCHECK": {"interval": _STR, "timeout": _STR, "start-period": _STR, "start-interval": _STR,
                    "retries": _STR},
}
_KINDS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
          "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
_NOT_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"


class _NotStrings(Exception):
    pass


# ------------------------------------------------------------------------------------------------ helpers

def _json_array(rest: str) -> list[str] | None:
    """The JSON array of strings rest holds, or None when rest is not JSON (then it is shell form)."""
    rest = rest.lstrip()
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest, parse_constant=_reject)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _NotStrings
    # Go's decoder turns a lone surrogate escape into U+FFFD; Python would keep an unencodable character
    return [item.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for item in value]


def _reject(name: str) -> None:
    raise ValueError(name)  # NaN/Infinity are not JSON to Go


def _extract_flags(text: str) -> tuple[list[str], str]:
    """BuildKit's leading `--name[=value]` words (quotes and backslashes processed; `--` ends them)."""
    flags, i, n = [], 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if not text.startswith("--", i):
            return flags, text[i:]
        word, quote = "", ""
        while i < n and (quote or not text[i].isspace()):
            ch = text[i]
            i += 1
            if ch == quote:
                quote = ""
                continue
            if not quote and ch in "'\"":
                quote = ch
                continue
            if ch == "\\":
                if i == n:
                    quote = ""
                    continue
                ch = text[i]
                i += 1
            word += ch
        if word == "--":
            return flags, text[i:]
        flags.append(word)


def _command(rest: str) -> tuple[tuple[str, ...], bool]:
    """(args, json) of RUN/CMD/ENTRYPOINT/SHELL: the JSON array, or the shell text as one element."""
    if not rest:
        return (), False
    array = _json_array(rest)
    return (tuple(array), True) if array is not None else ((rest,), False)


def _words_or_json(rest: str) -> tuple[list[str], bool]:
    array = _json_array(rest)
    if array is not None:
        return array, True
    return (_WHITESPACE.split(rest) if rest else []), False


class _Parser:
    def __init__(self, text: str, filename: str):
        text = text.removeprefix("\ufeff")
        pieces = text.split("\n")
        self.lines = [piece + "\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
        self.filename, self.n = filename, 0  # n: lines consumed so far (= 1-based number of the last one)
        self.escape, self.continuation = "\\", re.compile(r"\\[ \t]*$")
        self.directives: dict[str, str] = {}
        self.directives_done = False
        self.warnings: list[str] = []

    def fail(self, message: str, line: int | None) -> DockerfileError:
        return DockerfileError(message, self.filename, line)

    def directive(self, token: str) -> None:
        if self.directives_done:
            return
        m = _DIRECTIVE.match(token)
        key = m.group(1).lower() if m else ""
        if key not in ("syntax", "escape", "check"):
            self.directives_done = True  # anything else ends the directives (an unknown one is a comment)
            return
        value = m.group(2)
        if key in self.directives:
            raise self.fail(f"only one {key} parser directive can be used", self.n)
        if key == "escape":
            if value not in ("\\", "`"):
                raise self.fail(f"invalid escape token '{value}' does not match ` or \\", self.n)
            self.escape, self.continuation = value, re.compile(re.escape(value) + r"[ \t]*$")
        self.directives[key] = value

    def trim_continuation(self, token: str) -> tuple[str, bool]:
        m = self.continuation.search(token)
        return (token[:m.start()], False) if m else (token, True)

    def logical_line(self) -> tuple[int, str] | None:
        """The next instruction's line number and text (continuations joined, comments dropped)."""
        while self.n < len(self.lines):
            token = self.lines[self.n].rstrip("\r\n").lstrip()
            self.n += 1
            self.directive(token)
            if token.startswith("#"):
                continue
            text, done = self.trim_continuation(token)
            if done and not text:
                continue
            start, parts, blank = self.n, [text], False
            while not done and self.n < len(self.lines):
                token = self.lines[self.n].rstrip("\r\n")
                self.n += 1
                self.directive(token)
                if token.lstrip().startswith("#"):
                    continue
                if not token.strip():
                    blank = True
                    continue
                text, done = self.trim_continuation(token)
                parts.append(text)
            line = "".join(parts)
            if blank:
                self.warnings.append(f"{self.filename}:{start}: empty continuation line found in: {line.strip()}")
            return start, line
        return None

    def body(self, name: str, chomp: bool, start: int) -> str:
        content = []
        while self.n < len(self.lines):
            raw = self.lines[self.n]
            self.n += 1
            candidate = raw.rstrip("\r\n")
            if (candidate.lstrip("\t") if chomp else candidate) == name:
                return "".join(content)
            content.append(raw)
        raise self.fail(f"unterminated heredoc {name}", start)

    @staticmethod
    def head(line: str) -> tuple[str, list[str], str]:
        parts = _WHITESPACE.split(line.strip(), maxsplit=1)
        flags, rest = _extract_flags(parts[1]) if len(parts) == 2 else ([], "")
        return parts[0].upper(), flags, rest.strip()

    def instruction(self, line: str, start: int) -> Instruction:
        try:
            kind, flags, rest = self.head(line)
            heredocs = []
            nested_kind, nested_rest = self.head(rest)[::2] if kind == "ONBUILD" and rest else (kind, rest)
            if "<<" in line and nested_kind in ("RUN", "COPY", "ADD") and _json_array(nested_rest) is None:
                for name, chomp, expand in heredocs_in_line(line):
                    content = self.body(name, chomp, start)
                    heredocs.append(Heredoc(name=name, content=content, expand=expand, chomp=chomp))
            return self.make(kind, flags, rest, tuple(heredocs), line.strip(), start)
        except _NotStrings:
            raise self.fail(_NOT_STRINGS, start) from None
        except DockerfileError as exc:
            raise (exc if exc.filename else exc.at(self.filename, start)) from None

    def flags(self, kind: str, words: list[str]) -> dict:
        spec, out = _FLAGS.get(kind, {}), {}
        for word in words:
            name, eq, value = word[2:].partition("=")
            kind_of = spec.get(name)
            if kind_of is None:
                takes = ", ".join("--" + f for f in spec) or "no flags"
                raise DockerfileError(f"unknown flag: --{name} ({kind} takes {takes})")
            if name in out and kind_of != _LIST:
                raise DockerfileError(f"duplicate flag specified: {name}")
            if kind_of == _BOOL:
                if (eq and not value) or value.lower() not in ("", "true", "false"):
                    raise DockerfileError(f"expecting boolean value for flag {name}, not: {value}")
                out[name] = value.lower() != "false"
            elif not eq:
                raise DockerfileError(f"missing a value on flag: {name}")
            elif kind_of == _STR:
                out[name] = value
            else:
                out.setdefault(name, []).append(value)
        return out

    def make(self, kind: str, flag_words: list[str], rest: str, heredocs: tuple[Heredoc, ...], original: str,
             start: int) -> Instruction:
        if kind not in _KINDS:
            raise DockerfileError(f"unknown instruction: {kind}")
        kw = {"kind": kind, "line": start, "end_line": self.n, "original": original}
        flags = self.flags(kind, flag_words)
        if kind in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
            args, is_json = _command(rest)
            if kind == "SHELL":
                if not args:
                    raise DockerfileError("SHELL requires at least one argument")
                if not is_json:
                    raise DockerfileError("SHELL requires the arguments to be in JSON form")
                return Shell(**kw, args=args)
            if kind != "RUN":
                return (Cmd if kind == "CMD" else Entrypoint)(**kw, args=args, json=is_json)
            if not args:
                raise DockerfileError("RUN requires at least one argument")
            mounts = tuple(flags.get("mount", ()))
            for spec in mounts:
                parse_mount(spec)
            network, security = flags.get("network"), flags.get("security")
            if network not in (None, "default", "none", "host"):
                raise DockerfileError(f"unsupported network mode {go_quote(network)}")
            if security not in (None, "sandbox", "insecure"):
                raise DockerfileError(f"unsupported security mode {go_quote(security)}")
            return Run(**kw, args=args, json=is_json, heredocs=heredocs, mounts=mounts, network=network,
                       security=security)
        if kind in ("ENV", "LABEL"):
            pairs = tuple(parse_key_values(rest, kind, self.escape))
            if not pairs:
                raise DockerfileError(f"{kind} requires at least one argument")
            if any(not key for key, _ in pairs):
                raise DockerfileError(f"{kind} names can not be blank")
            return (Env if kind == "ENV" else Label)(**kw, pairs=pairs)
        if kind == "ARG":
            words = split_words(rest, self.escape)
            if not words:
                raise DockerfileError("ARG requires at least one argument")
            args = tuple((w.partition("=")[0], w.partition("=")[2] if "=" in w else None) for w in words)
            if any(not name for name, _ in args):
                raise DockerfileError("ARG names can not be blank")
            return Arg(**kw, args=args)
        if kind in ("EXPOSE", "VOLUME"):
            words = _words_or_json(rest)[0] if kind == "VOLUME" else _WHITESPACE.split(rest) if rest else []
            if not words:
                raise DockerfileError(f"{kind} requires at least one argument")
            if kind == "EXPOSE":
                return Expose(**kw, ports=tuple(words))
            if any(not w.strip() for w in words):
                raise DockerfileError("VOLUME specified can not be an empty string")
            return Volume(**kw, paths=tuple(w.strip() for w in words))
        if kind in ("USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER"):
            if not rest:
                raise DockerfileError(f"{kind} requires exactly one argument")
            if kind == "MAINTAINER":
                self.warnings.append(f"{self.filename}:{start}: MAINTAINER is deprecated: use LABEL")
                return Maintainer(**kw, name=rest)
            cls, field = {"USER": (User, "user"), "WORKDIR": (Workdir, "path"),
                          "STOPSIGNAL": (StopSignal, "signal")}[kind]
            return cls(**kw, **{field: rest})
        if kind in ("COPY", "ADD"):
            return self.transfer(kind, kw, flags, rest, heredocs)
        if kind == "HEALTHCHECK":
            return self.healthcheck(kw, flags, rest)
        if kind == "ONBUILD":
            if not rest:
                raise DockerfileError("ONBUILD requires at least one argument")
            sub_kind, sub_flags, sub_rest = self.head(rest)
            if sub_kind == "ONBUILD":
                raise DockerfileError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
            if sub_kind in ("MAINTAINER", "FROM"):
                raise DockerfileError(f"{sub_kind} isn't allowed as an ONBUILD trigger")
            trigger = self.make(sub_kind, sub_flags, sub_rest, heredocs, rest, start)
            expression = re.sub(r"(?i)^[ \t\n\f\r]*ONBUILD[ \t\n\f\r]*", "", original)
            expression += "".join("\n" + doc.content + doc.name for doc in heredocs)
            return Onbuild(**kw, trigger=trigger, expression=expression)
        # FROM: a stage header, turned into a Stage by run()
        args = _WHITESPACE.split(rest) if rest else []
        name = None
        if len(args) == 3 and args[1].lower() == "as":
            name = args[2].lower()
            if not _STAGE_NAME.match(name):
                raise DockerfileError(f"invalid name for build stage: {go_quote(args[2])}, name can't start with "
                                      "a number or contain symbols")
        elif len(args) != 1:
            raise DockerfileError("FROM requires either one or three arguments")
        return _From(**kw, base=args[0], name=name, platform=flags.get("platform"))

    def transfer(self, kind: str, kw: dict, flags: dict, rest: str, heredocs: tuple[Heredoc, ...]) -> Instruction:
        args, is_json = _words_or_json(rest)
        if len(args) < 2:
            raise DockerfileError(f"{kind} requires at least two arguments" + (
                ", but only one was provided. Destination could not be determined" if args else ""))
        if not is_json and heredoc_word(args[-1]):
            raise DockerfileError(f"{kind} cannot accept a heredoc as a destination")
        by_name = {doc.name: doc for doc in heredocs}
        sources, docs = [], []
        for src in args[:-1]:
            opener = None if is_json else heredoc_word(src)
            if opener is None:
                sources.append(src)
            else:
                docs.append(by_name.get(opener[0]) or Heredoc(name=opener[0], content="", expand=opener[2],
                                                               chomp=opener[1]))
        common = dict(kw, sources=tuple(sources), dest=args[-1], heredocs=tuple(docs), json=is_json,
                      chown=flags.get("chown"), chmod=flags.get("chmod"), link=flags.get("link", False),
                      exclude=tuple(flags.get("exclude", ())))
        if kind == "COPY":
            return Copy(**common, from_=flags.get("from"), parents=flags.get("parents", False))
        return Add(**common, checksum=flags.get("checksum"), keep_git_dir=flags.get("keep-git-dir", False),
                   unpack=flags.get("unpack"))

    def healthcheck(self, kw: dict, flags: dict, rest: str) -> Healthcheck:
        if not rest:
            raise DockerfileError("HEALTHCHECK requires at least one argument")
        typ, *tail = rest.split(None, 1)
        typ = typ.upper()
        args, is_json = _command(tail[0] if tail else "")
        if typ == "NONE":
            if args:
                raise DockerfileError("HEALTHCHECK NONE takes no arguments")
            return Healthcheck(**kw, test=("NONE",))
        if typ != "CMD":
            raise DockerfileError(f"Unknown type {go_quote(typ)} in HEALTHCHECK (try CMD)")
        if not args:
            raise DockerfileError("Missing command after HEALTHCHECK CMD")
        retries = flags.get("retries", "")
        if retries and not re.fullmatch(r"[+-]?\d+", retries):
            raise DockerfileError(f"strconv.ParseInt: parsing {go_quote(retries)}: invalid syntax")
        if retries and int(retries) < 0:
            raise DockerfileError(f"--retries cannot be negative ({int(retries)})")
        times = {key.replace("-", "_"): parse_duration(key, flags.get(key, ""))
                 for key in ("interval", "timeout", "start-period", "start-interval")}
        test = ("CMD", *args) if is_json else ("CMD-SHELL", args[0])
        return Healthcheck(**kw, test=test, retries=int(retries or 0), **times)

    def run(self) -> Dockerfile:
        global_args: list[Arg] = []
        stages: list[Stage] = []
        header: _From | None = None
        body: list[Instruction] = []
        names: set[str] = set()
        seen = False

        def close() -> None:
            if header is not None:
                stages.append(Stage(index=len(stages), name=header.name, base=header.base,
                                    platform=header.platform, line=header.line, original=header.original,
                                    instructions=tuple(body)))
        while (item := self.logical_line()) is not None:
            seen = True
            inst = self.instruction(item[1], item[0])
            if isinstance(inst, _From):
                if inst.name is not None and inst.name in names:
                    raise self.fail(f"duplicate stage name {go_quote(inst.name)}", inst.line)
                if inst.name is not None:
                    names.add(inst.name)
                close()
                header, body = inst, []
            elif header is not None:
                body.append(inst)
            elif isinstance(inst, Arg):
                global_args.append(inst)
            else:
                raise self.fail(f"no build stage in current context: {inst.kind} before the first FROM", inst.line)
        close()
        if not seen:
            raise self.fail("file with no instructions", None)
        if not stages:
            raise self.fail("dockerfile contains no stages to build: FROM missing", None)
        return Dockerfile(filename=self.filename, escape=self.escape, syntax=self.directives.get("syntax"),
                          check=self.directives.get("check"), global_args=tuple(global_args),
                          stages=tuple(stages), warnings=tuple(self.warnings))


@dataclass(frozen=True, kw_only=True)
class _From(Instruction):  # a stage header: run() makes it a Stage
    base: str
    name: str | None
    platform: str | None


def parse(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile; DockerfileError (`filename:line: message`) on any error."""
    return _Parser(text, filename).run()


def parse_trigger(expression: str, filename: str = "ONBUILD") -> Instruction:
    """One ONBUILD trigger as a base image's config records it (heredoc bodies included), parsed as the
    instruction the child build runs."""
    parser = _Parser(expression, filename)
    parser.directives_done = True
    item = parser.logical_line()
    if item is None:
        raise parser.fail("ONBUILD requires at least one argument", None)
    kind = parser.head(item[1])[0]
    if kind in ("ONBUILD", "FROM", "MAINTAINER"):
        raise parser.fail(f"{kind} isn't allowed as an ONBUILD trigger", item[0])
    return parser.instruction(item[1], item[0])
