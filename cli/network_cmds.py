"""`network create|ls|inspect|rm|prune|connect|disconnect|exists` (Podman's flags and output)."""
from __future__ import annotations

import sys
from typing import List

import typer

from pinnace.cli.state import confirmed, engine


def create(ctx: typer.Context, name: str = typer.Argument(None, metavar="[NAME]"),
           driver: str = typer.Option("bridge", "--driver", "-d", help="Only 'bridge'."),
           subnet: str = typer.Option(None, "--subnet", help="IPv4 CIDR (default: the first free 10.89.N.0/24)."),
           gateway: str = typer.Option(None, "--gateway", help="Gateway address inside --subnet."),
           internal: bool = typer.Option(False, "--internal", help="No outbound access."),
           label: List[str] = typer.Option([], "--label", "-l", help="KEY=VALUE"),
           opt: List[str] = typer.Option([], "--opt", "-o", help="driver option KEY=VALUE (none supported)"),
           ipv6: bool = typer.Option(False, "--ipv6", help="Not supported."),
           ignore: bool = typer.Option(False, "--ignore", help="Do nothing if the network exists.")) -> None:
    """Create a user network (a bridge with DNS for its containers)."""
    from pinnace.engine.network_contract import NetworkCreateOptions
    from pinnace.engine.volumes import parse_pairs
    from pinnace.errors import InvalidArgument
    if opt:
        raise InvalidArgument(f"network driver options are not supported: {', '.join(opt)}")
    opts = NetworkCreateOptions(name=name, driver=driver, subnet=subnet, gateway=gateway, internal=internal,
                                labels=parse_pairs(tuple(label), "label"), ipv6=ipv6, ignore_existing=ignore)
    typer.echo(engine(ctx).network_create(opts)["Name"])


def _template_row(d: dict, no_trunc: bool) -> dict:
    """Docker's `network ls` template fields next to the inspect ones."""
    return {**d, "ID": d["Id"] if no_trunc else d["Id"][:12], "IPv6": d["EnableIPv6"], "CreatedAt": d["Created"],
            "Subnets": ",".join(c["Subnet"] for c in d["IPAM"]["Config"])}


def ls(ctx: typer.Context, quiet: bool = typer.Option(False, "--quiet", "-q", help="Names only."),
       filter: List[str] = typer.Option([], "--filter", "-f", help="name=, label=, driver=, id="),
       fmt: str = typer.Option(None, "--format"), noheading: bool = typer.Option(False, "--noheading", "-n"),
       no_trunc: bool = typer.Option(False, "--no-trunc")) -> None:
    """List user networks."""
    from pinnace.cli.output import emit_formatted, print_json, tabulate
    rows = engine(ctx).network_list(tuple(filter))
    if quiet:
        typer.echo("".join(r["Name"] + "\n" for r in rows), nl=False)
        return
    if fmt == "json":
        print_json(rows)
        return
    if emit_formatted(fmt, [_template_row(r, no_trunc) for r in rows]):
        return
    table = [] if noheading else [["NETWORK ID", "NAME", "DRIVER"]]
    table += [[r["Id"] if no_trunc else r["Id"][:12], r["Name"], r["Driver"]] for r in rows]
    sys.stdout.write(tabulate(table, pad=4))


def inspect(ctx: typer.Context, names: List[str] = typer.Argument(..., metavar="NETWORK..."),
            fmt: str = typer.Option(None, "--format", "-f")) -> None:
    """Show networks as JSON."""
    from pinnace.cli.output import print_json
    data = [engine(ctx).network_inspect(n) for n in names]
    if fmt and fmt != "json":
        from pinnace.cli.template import render_rows
        sys.stdout.write(render_rows(fmt, data))
    else:
        print_json(data)


def rm(ctx: typer.Context, names: List[str] = typer.Argument(..., metavar="NETWORK..."),
       force: bool = typer.Option(False, "--force", "-f", help="Also remove the containers that use it."),
       time: float = typer.Option(None, "--time", "-t", help="Seconds to wait before killing containers.")) -> None:
    """Remove networks."""
    for n in names:
        typer.echo(engine(ctx).network_remove(n, force, time))


def prune(ctx: typer.Context, force: bool = typer.Option(False, "--force", "-f"),
          filter: List[str] = typer.Option([], "--filter", help="label=, until=")) -> None:
    """Remove networks no container uses."""
    if not confirmed(force, "network prune", "This removes all networks not used by at least one container."):
        return
    for name in engine(ctx).network_prune(tuple(filter)):
        typer.echo(name)


def connect(ctx: typer.Context, network: str = typer.Argument(..., metavar="NETWORK"),
            container: str = typer.Argument(..., metavar="CONTAINER"),
            alias: List[str] = typer.Option([], "--alias", help="Another name of the container on this network.")
            ) -> None:
    """Connect a container to a network."""
    engine(ctx).network_connect(network, container, tuple(alias))


def disconnect(ctx: typer.Context, network: str = typer.Argument(..., metavar="NETWORK"),
               container: str = typer.Argument(..., metavar="CONTAINER"),
               force: bool = typer.Option(False, "--force", "-f")) -> None:
    """Disconnect a container from a network."""
    engine(ctx).network_disconnect(network, container, force)


def exists(ctx: typer.Context, network: str = typer.Argument(..., metavar="NETWORK")) -> None:
    """Exit 0 when the network exists, 1 when not."""
    raise typer.Exit(0 if engine(ctx).network_exists(network) else 1)


def register(app: typer.Typer) -> None:
    network_app = typer.Typer(no_args_is_help=True, help="Manage user networks.")
    network_app.command("create")(create)
    network_app.command("ls")(ls)
    network_app.command("list")(ls)
    network_app.command("inspect")(inspect)
    network_app.command("rm")(rm)
    network_app.command("remove")(rm)
    network_app.command("prune")(prune)
    network_app.command("connect")(connect)
    network_app.command("disconnect")(disconnect)
    network_app.command("exists")(exists)
    app.add_typer(network_app, name="network")
