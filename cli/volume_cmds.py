"""`volume create|ls|inspect|rm|prune` (Podman's flags and output)."""
from __future__ import annotations

import sys
from typing import List

import typer

from pinnace.cli.state import confirmed, engine


def create(ctx: typer.Context, name: str = typer.Argument(None, metavar="[NAME]"),
           driver: str = typer.Option("local", "--driver", "-d"),
           label: List[str] = typer.Option([], "--label", "-l", help="KEY=VALUE"),
           opt: List[str] = typer.Option([], "--opt", "-o", help="driver option KEY=VALUE"),
           ignore: bool = typer.Option(False, "--ignore", help="Do nothing if the volume exists.")) -> None:
    """Create a named volume (a random name when none is given)."""
    data = engine(ctx).volume_create(name, tuple(label), tuple(opt), driver, ignore)
    typer.echo(data["Name"])


def ls(ctx: typer.Context, quiet: bool = typer.Option(False, "--quiet", "-q"),
       filter: List[str] = typer.Option([], "--filter", "-f", help="name=, label=, dangling=, driver="),
       fmt: str = typer.Option(None, "--format"), noheading: bool = typer.Option(False, "--noheading", "-n")) -> None:
    """List volumes."""
    from pinnace.cli.output import emit_formatted, tabulate
    rows = engine(ctx).volume_list(tuple(filter))
    if quiet:
        typer.echo("".join(r["Name"] + "\n" for r in rows), nl=False)
        return
    if emit_formatted(fmt, rows):
        return
    table = ([] if noheading else [["DRIVER", "VOLUME NAME"]]) + [[r["Driver"], r["Name"]] for r in rows]
    sys.stdout.write(tabulate(table, pad=4))


def inspect(ctx: typer.Context, names: List[str] = typer.Argument(..., metavar="VOLUME..."),
            fmt: str = typer.Option(None, "--format", "-f")) -> None:
    """Show volumes as JSON."""
    from pinnace.cli.output import print_json
    data = [engine(ctx).volume_inspect(n) for n in names]
    if fmt and fmt != "json":
        from pinnace.cli.template import render_rows
        sys.stdout.write(render_rows(fmt, data))
    else:
        print_json(data)


def rm(ctx: typer.Context, names: List[str] = typer.Argument(..., metavar="VOLUME..."),
       force: bool = typer.Option(False, "--force", "-f")) -> None:
    """Remove volumes."""
    for n in names:
        engine(ctx).volume_remove(n, force)
        typer.echo(n)


def prune(ctx: typer.Context, force: bool = typer.Option(False, "--force", "-f"),
          filter: List[str] = typer.Option([], "--filter")) -> None:
    """Remove volumes no container uses."""
    if not confirmed(force, "volume prune", "This removes all volumes not used by at least one container."):
        return
    for name in engine(ctx).volume_prune(tuple(filter)):
        typer.echo(name)


def register(app: typer.Typer) -> None:
    volume_app = typer.Typer(no_args_is_help=True, help="Manage volumes.")
    volume_app.command("create")(create)
    volume_app.command("ls")(ls)
    volume_app.command("list")(ls)
    volume_app.command("inspect")(inspect)
    volume_app.command("rm")(rm)
    volume_app.command("remove")(rm)
    volume_app.command("prune")(prune)
    app.add_typer(volume_app, name="volume")
