"""The fast path: hot read-only commands parsed without typer (~120 ms of imports saved).

Only the simplest flag forms are accepted here; anything unusual returns None and the full typer CLI
handles it, so behaviour never differs. The commands call the same engine and renderers as typer's.
"""
from __future__ import annotations

import sys

_GLOBAL_VALUE = {"--root", "--runroot"}  # --storage-driver and --log-level: typer validates them
_IMAGES_BOOL = {"-q": "quiet", "--quiet": "quiet", "-a": "all", "--all": "all", "--digests": "digests",
                "--no-trunc": "no_trunc", "-n": "noheading", "--noheading": "noheading"}
_IMAGES_VALUE = {"--format": "format", "-f": "filter", "--filter": "filter"}


def _split_flag(arg: str) -> tuple[str, str | None]:
    if arg.startswith("--") and "=" in arg:
        k, v = arg.split("=", 1)
        return k, v
    return arg, None


_GLOBAL_ANY = _GLOBAL_VALUE | {"--storage-driver", "--log-level"}


def split_globals(argv: list[str], allowed: set[str] = _GLOBAL_ANY) -> tuple[dict[str, str], list[str]] | None:
    """Global flags (all valued) and the rest; None when something else (--help, --version) comes first."""
    globals_: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        flag, value = _split_flag(argv[i])
        if flag not in allowed:
            return None
        if value is None:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
            i += 1
        globals_[flag] = value
        i += 1
    return globals_, argv[i:]


def try_fast_path(argv: list[str]) -> int | None:
    """Run `argv` (without the program name) if it is a hot command in a simple form; else None."""
    split = split_globals(argv, _GLOBAL_VALUE)  # --storage-driver and --log-level: typer validates them
    if split is None:
        return None
    globals_, rest = split
    import os
    if os.environ.get("PINNACE_STORAGE_DRIVER", "overlay") != "overlay":
        return None  # typer's path validates the driver
    if rest[:1] == ["images"]:
        args = rest[1:]
    elif rest[:2] in (["image", "ls"], ["image", "list"]):
        args = rest[2:]
    else:
        return None
    opts: dict[str, object] = {"filter": []}
    j = 0
    while j < len(args):
        flag, value = _split_flag(args[j])
        if flag in _IMAGES_BOOL and value is None:
            opts[_IMAGES_BOOL[flag]] = True
        elif flag in _IMAGES_VALUE:
            if value is None:
                if j + 1 >= len(args):
                    return None
                value = args[j + 1]
                j += 1
            key = _IMAGES_VALUE[flag]
            if key == "filter":
                opts["filter"].append(value)
            else:
                opts[key] = value
        elif not flag.startswith("-") and "reference" not in opts:
            opts["reference"] = flag  # `images [REPOSITORY[:TAG]]`
            opts["filter"].append(f"reference={flag}")
        else:
            return None  # combined short flags, --help, a second argument …: let typer decide
        j += 1
    from pinnace.cli.errors import run_guarded
    return run_guarded(lambda: _images(globals_, opts))


def _images(globals_: dict[str, str], opts: dict) -> int:
    # the same listing function LocalEngine.image_list uses, without loading the engine (dataclasses, pathlib)
    from pinnace.cli.images_view import ImagesView, render_images
    from pinnace.engine.image_list import list_images
    from pinnace.engine.paths import store_paths
    root, _ = store_paths(globals_.get("--root"), globals_.get("--runroot"))
    rows = list_images(root, opts["filter"])
    render_images(rows, ImagesView(quiet=bool(opts.get("quiet")), digests=bool(opts.get("digests")),
                                   no_trunc=bool(opts.get("no_trunc")), format=opts.get("format"),
                                   noheading=bool(opts.get("noheading"))))
    sys.stdout.flush()
    return 0
