"""The systemd generator role: `pinnace __systemd-generator [--user] [--dryrun] OUTDIR [EARLY LATE]`
(dispatched in __main__ before typer loads) turns the Quadlet files of the search path into services in
OUTDIR (engine/quadlet.py translates one file).

Install it for a user's manager as an executable `~/.config/systemd/user-generators/pinnace`, either a
symlink to the pinnace executable (the role is recognised by the directory name) or a script
`exec /path/to/pinnace __systemd-generator --user "$@"`; then `systemctl --user daemon-reload`.
"""
from __future__ import annotations

import os
import sys

from pinnace.engine.quadlet import KINDS, GeneratedUnit, Source, read_source, translate
from pinnace.errors import PinnaceError


def unit_dirs(rootless: bool) -> list[str]:
    """Where Quadlet files are searched, highest precedence first (podman-systemd.unit(5));
    $QUADLET_UNIT_DIRS (colon-separated) replaces the list, as with Podman."""
    override = os.environ.get("QUADLET_UNIT_DIRS")
    if override:
        return [d for d in override.split(":") if d]
    if not rootless:
        return ["/run/containers/systemd", "/etc/containers/systemd", "/usr/share/containers/systemd"]
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    dirs = [os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "systemd")] \
        if os.environ.get("XDG_RUNTIME_DIR") else []
    return dirs + [os.path.join(config, "containers", "systemd"), f"/etc/containers/systemd/users/{os.getuid()}",
                   "/etc/containers/systemd/users"]


def find_files(dirs: list[str]) -> list[str]:
    """Quadlet files below `dirs` (recursively, through symlinks); the first of a name wins."""
    found: dict[str, str] = {}
    for top in dirs:
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.endswith(".d"))
            for name in sorted(filenames):
                if os.path.splitext(name)[1] in KINDS and name not in found:
                    found[name] = os.path.join(dirpath, name)
    return [found[n] for n in sorted(found)]


def generate(dirs: list[str], executable: str, *, rootless: bool) -> tuple[list[GeneratedUnit], list[str]]:
    """(units, errors) for every Quadlet file below `dirs`; a file with an error is left out."""
    sources: dict[str, Source] = {}
    errors: list[str] = []
    for path in find_files(dirs):
        try:
            sources[os.path.basename(path)] = read_source(path)
        except PinnaceError as exc:
            errors.append(str(exc))
    units = []
    for source in sources.values():
        try:
            units.append(translate(source, sources, executable, rootless=rootless))
        except PinnaceError as exc:
            errors.append(str(exc))
    return units, errors


def write_units(outdir: str, units: list[GeneratedUnit]) -> None:
    os.makedirs(outdir, exist_ok=True)
    for unit in units:
        with open(os.path.join(outdir, unit.name), "w", encoding="utf-8") as f:
            f.write(unit.text)
        for link, target in unit.links:
            path = os.path.join(outdir, link)
            os.makedirs(os.path.dirname(path) or outdir, exist_ok=True)
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(target, path)


def generator_main(argv: list[str]) -> int:
    """`pinnace __systemd-generator [--user] [--dryrun] OUTDIR [EARLY LATE]`: systemd runs generators with
    three directories and writes nothing else; errors go to stderr (the journal), exit 1 if there were any."""
    user = "--user" in argv or "user-generators" in (sys.argv[0] if sys.argv else "")
    dryrun = "--dryrun" in argv
    dirs = [a for a in argv if not a.startswith("--")]
    if not dirs and not dryrun:
        sys.stderr.write("usage: pinnace __systemd-generator [--user] [--dryrun] OUTDIR [EARLY LATE]\n")
        return 2
    from pinnace.engine.systemd_units import pinnace_executable
    try:
        rootless = user or os.getuid() != 0
        units, errors = generate(unit_dirs(rootless), pinnace_executable(), rootless=rootless)
        if dryrun:
            for unit in units:
                sys.stdout.write(f"---{unit.name}---\n{unit.text}")
        else:
            write_units(dirs[0], units)
    except (PinnaceError, OSError) as exc:
        errors = [str(exc)]
    for error in errors:
        sys.stderr.write(f"pinnace-generator: {error}\n")
    return 1 if errors else 0
