"""A small Docker-style flag parser for the container commands.

Why not typer here: loading it costs ~150 ms and `run` must start a container in less than Podman's
~120 ms. The flag tables double as help text. Docker's rules: `--flag value` / `--flag=value`, combined
short booleans (`-it`, `-dit`), a short flag's value attached (`-eFOO=1`) or last in a group (`-ite X`),
booleans accept `=true|false`, and for `run`/`exec`/`create` parsing stops at the first positional
argument (the rest is the container's command).
"""
from __future__ import annotations

import sys
from pinnace.errors import InvalidArgument

BOOL, VALUE, LIST, OPTIONAL = "bool", "value", "list", "optional"   # OPTIONAL: `--flag` or `--flag=VALUE`


class Flag:
    """One flag: its names, where the value goes, its kind, and help. (A plain class, not a dataclass:
    importing dataclasses costs `ps` and `run` ~6 ms.)"""

    __slots__ = ("names", "dest", "kind", "help", "metavar", "default")

    def __init__(self, names: tuple[str, ...], dest: str, kind: str = BOOL, help: str = "", metavar: str = "VALUE",
                 default: object = None):   # default for BOOL: None means False
        self.names, self.dest, self.kind, self.help, self.metavar, self.default = names, dest, kind, help, metavar, default


class Command:
    __slots__ = ("name", "usage", "help", "flags", "stop_at_positional")

    def __init__(self, name: str, usage: str, help: str, flags: tuple[Flag, ...], stop_at_positional: bool = False):
        # stop_at_positional: run/create/exec — everything after the image/container is the command
        self.name, self.usage, self.help, self.flags = name, usage, help, flags
        self.stop_at_positional = stop_at_positional


class HelpRequested(Exception):
    pass


def _truthy(value: str, flag: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidArgument(f"invalid boolean value {value!r} for {flag}")


def parse(cmd: Command, argv: list[str]) -> tuple[dict, list[str]]:
    by_name = {n: f for f in cmd.flags for n in f.names}
    opts: dict = {f.dest: ([] if f.kind == LIST else (bool(f.default) if f.kind == BOOL else
                                                      (None if f.kind == OPTIONAL else f.default)))
                  for f in cmd.flags}
    positional: list[str] = []
    i = 0

    def take(flag: Flag, name: str, value: str | None) -> None:
        nonlocal i
        if flag.kind == BOOL:
            opts[flag.dest] = True if value is None else _truthy(value, name)
            return
        if flag.kind == OPTIONAL:
            # `--pull` alone means "true"; a following word the flag knows (its default: a tuple of
            # words) is taken as its value, so both `--pull=never` and `--pull never` work
            if value is None and i + 1 < len(argv) and argv[i + 1] in (flag.default or ()):
                i += 1
                value = argv[i]
            opts[flag.dest] = "true" if value is None else value
            return
        if value is None:
            if i + 1 >= len(argv):
                raise InvalidArgument(f"flag needs an argument: {name}")
            i += 1
            value = argv[i]
        if flag.kind == LIST:
            opts[flag.dest].append(value)
        else:
            opts[flag.dest] = value

    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            positional += argv[i + 1:]
            break
        if arg == "--help" or (arg == "-h" and "-h" not in by_name):
            raise HelpRequested()
        if arg.startswith("--"):
            name, sep, value = arg.partition("=")
            flag = by_name.get(name)
            if flag is None:
                raise InvalidArgument(f"unknown flag: {name}\nSee 'pinnace {cmd.name} --help'")
            take(flag, name, value if sep else None)
        elif arg.startswith("-") and len(arg) > 1:
            j = 1
            while j < len(arg):
                name = "-" + arg[j]
                flag = by_name.get(name)
                if flag is None:
                    raise InvalidArgument(f"unknown shorthand flag: {arg[j]!r} in {arg}\nSee 'pinnace {cmd.name} --help'")
                rest = arg[j + 1:]
                if flag.kind == BOOL:
                    if rest.startswith("="):
                        take(flag, name, rest[1:])
                        break
                    take(flag, name, None)
                    j += 1
                    continue
                take(flag, name, rest.removeprefix("=") if rest else None)
                break
        else:
            positional.append(arg)
            if cmd.stop_at_positional:
                positional += argv[i + 1:]
                break
        i += 1
    return opts, positional


def help_text(cmd: Command) -> str:
    lines = [f"Usage: pinnace {cmd.usage}", "", cmd.help, ""]
    if cmd.flags:
        lines.append("Options:")
        rows = []
        for f in cmd.flags:
            names = ", ".join(f.names)
            if f.kind != BOOL:
                names += f" {f.metavar}"
            rows.append((names, f.help))
        width = max(len(r[0]) for r in rows) + 2
        lines += [f"  {n.ljust(width)}{h}" for n, h in rows]
    return "\n".join(lines) + "\n"


def print_help(cmd: Command) -> int:
    sys.stdout.write(help_text(cmd))
    return 0


def to_int(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value {value!r} for {flag}: a whole number") from None
