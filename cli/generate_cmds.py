"""`generate systemd`, `generate quadlet` and `system check-linger`: containers as systemd user services."""
from __future__ import annotations

import os
import sys
from typing import List

import typer

from pinnace.cli.state import engine


def _linger_warning() -> None:
    """Rootless services live in the user's systemd manager, which logind stops at logout unless the
    user lingers: say so where units are made."""
    from pinnace.engine.systemd_units import current_user, linger_enabled
    user = current_user()
    if os.getuid() != 0 and not linger_enabled(user):
        sys.stderr.write(f"WARNING: lingering is not enabled for {user}: your containers' services stop when you "
                         f"log out. Enable it with: loginctl enable-linger {user}\n")


def _emit(units: list[tuple[str, str]], files: bool, fmt: str | None) -> None:
    """Print the units, or with --files write them to the current directory and print their paths."""
    import json
    if files:
        paths = []
        for name, text in units:
            path = os.path.abspath(name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            paths.append(path)
        typer.echo(json.dumps(paths, indent=4) if fmt == "json" else "\n".join(paths))
    elif fmt == "json":
        typer.echo(json.dumps(dict(units), indent=4))
    else:
        typer.echo("\n".join(text for _, text in units), nl=False)


def _check_format(fmt: str | None) -> None:
    if fmt not in (None, "", "json"):
        from pinnace.errors import InvalidArgument
        raise InvalidArgument(f"invalid --format {fmt!r} (json)")


def systemd(ctx: typer.Context, container: str = typer.Argument(None, metavar="CONTAINER"),
            name: bool = typer.Option(False, "--name", "-n", help="Use the container's name instead of its ID."),
            new: bool = typer.Option(False, "--new", help="The unit creates the container and removes it again."),
            files: bool = typer.Option(False, "--files", "-f", help="Write <prefix>-<name>.service here; print paths."),
            fmt: str = typer.Option(None, "--format", help="json"),
            no_header: bool = typer.Option(False, "--no-header", help="No comment header."),
            restart_policy: str = typer.Option(None, "--restart-policy",
                                               help="systemd's Restart= (default on-failure; with --new the "
                                                    "container's own policy)"),
            restart_sec: int = typer.Option(None, "--restart-sec", help="systemd's RestartSec= (seconds)."),
            stop_timeout: int = typer.Option(None, "--time", "-t", "--stop-timeout",
                                             help="Seconds `stop` waits (default: the container's, 10)."),
            start_timeout: int = typer.Option(None, "--start-timeout",
                                              help="TimeoutStartSec= (default with --new: 300, pulls included)."),
            prefix: str = typer.Option("container", "--container-prefix", help="Unit name prefix."),
            separator: str = typer.Option("-", "--separator", help="Between prefix and name."),
            after: List[str] = typer.Option([], "--after", help="After= (repeatable)."),
            requires: List[str] = typer.Option([], "--requires", help="Requires= (repeatable)."),
            wants: List[str] = typer.Option([], "--wants", help="Wants= (repeatable)."),
            restart_unit: bool = typer.Option(False, "--restart-unit",
                                              help="pinnace-restart.service instead: starts --restart=always "
                                                   "containers when your systemd manager starts.")) -> None:
    """Generate a systemd unit that runs a container as a service (supervisor = main process, Type=notify)."""
    from pinnace import __version__
    from pinnace.engine import systemd_units as su
    from pinnace.errors import InvalidArgument
    _check_format(fmt)
    eng = engine(ctx)
    exe = su.pinnace_executable()
    if restart_unit:
        if container:
            raise InvalidArgument("--restart-unit takes no container")
        unit = su.restart_unit(exe, su.root_args(str(eng.config.root), str(eng.config.runroot)),
                               version=__version__, no_header=no_header)
    else:
        if not container:
            raise InvalidArgument("generate systemd needs a container (or --restart-unit)")
        facts = su.load(eng.store, container)
        opts = su.UnitOptions(executable=exe, use_name=name, new=new, restart_policy=restart_policy,
                              restart_sec=restart_sec, stop_timeout=stop_timeout, start_timeout=start_timeout,
                              container_prefix=prefix, separator=separator, wants=tuple(wants), after=tuple(after),
                              requires=tuple(requires), root_args=su.root_args(facts.root, facts.runroot),
                              no_header=no_header, version=__version__)
        unit = su.container_unit(facts, opts)
    for warning in unit.warnings:
        sys.stderr.write(f"WARNING: {warning}\n")
    _linger_warning()
    _emit([(unit.name, unit.text)], files, fmt)


def quadlet(ctx: typer.Context, container: str = typer.Argument(..., metavar="CONTAINER"),
            files: bool = typer.Option(False, "--files", "-f", help="Write <name>.container here; print its path."),
            fmt: str = typer.Option(None, "--format", help="json"),
            no_header: bool = typer.Option(False, "--no-header", help="No comment header.")) -> None:
    """Generate a Quadlet .container file for a container (for ~/.config/containers/systemd/)."""
    from pinnace import __version__
    from pinnace.engine import systemd_units as su
    _check_format(fmt)
    facts = su.load(engine(ctx).store, container)
    _linger_warning()
    _emit([su.quadlet_file(facts, version=__version__, no_header=no_header,
                           root_args=su.root_args(facts.root, facts.runroot))], files, fmt)


def check_linger(ctx: typer.Context) -> int:
    """Is lingering enabled (do your user services outlive your login session)?"""
    from pinnace.engine.systemd_units import current_user, linger_enabled
    user = current_user()
    if linger_enabled(user):
        typer.echo(f"lingering is enabled for {user}: your user services keep running after you log out")
        return 0
    typer.echo(f"lingering is not enabled for {user}: your user services (and their containers) stop when you "
               f"log out\nenable it with: loginctl enable-linger {user}")
    return 1


def register(app: typer.Typer, system_app: typer.Typer) -> None:
    generate_app = typer.Typer(no_args_is_help=True, help="Generate systemd units and Quadlet files.")
    generate_app.command("systemd")(systemd)
    generate_app.command("quadlet")(quadlet)
    app.add_typer(generate_app, name="generate")
    system_app.command("check-linger")(check_linger)
