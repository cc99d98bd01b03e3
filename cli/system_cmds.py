"""System and registry commands: info, system df/check/reset, login, logout, unshare."""
from __future__ import annotations

import sys
from typing import List

import typer

from pinnace.cli.state import confirmed, engine


def info(ctx: typer.Context, fmt: str = typer.Option(None, "--format", "-f", help="json or a Go template.")) -> None:
    """Show how pinnace is set up on this machine."""
    data = engine(ctx).system_info()
    from pinnace.cli.output import emit_formatted
    if emit_formatted(fmt, data):
        return
    host, store = data["host"], data["store"]
    lines = [f"version: {data['version']['Version']} (Python {data['version']['PythonVersion']})",
             "host:", f"  arch: {host['arch']}", f"  kernel: {host['kernel']}", f"  hostname: {host['hostname']}",
             f"  rootless: {str(host['rootless']).lower()}", f"  uid: {host['uid']}"]
    if host["rootless"]:
        maps = host["idMappings"]
        if maps:
            for kind in ("uidmap", "gidmap"):
                lines.append(f"  {kind}:")
                lines += [f"    - container_id: {r['container_id']}, host_id: {r['host_id']}, size: {r['size']}"
                          for r in maps[kind]]
        else:
            lines.append("  idMappings: none (no /etc/subuid range: single-uid mapping, image owners are lost)")
        lines.append(f"  namespaceHolderPid: {host['namespaceHolderPid'] or 'not running'}")
        lines += [f"  {dev}: {state}" for dev, state in host["devices"].items()]
    net = host["network"]
    lines += ["  network:", f"    default: {net['defaultNetwork']} ({net['backend']})", f"    gateway: {net['gateway']}",
              f"    dns: {net['dns']}", f"    icmp: {net['icmp']}", f"    ipv6: {net['ipv6']}",
              f"    userNetworks: {', '.join(net['userNetworks']) or 'none'}"]
    lines += ["store:", f"  graphRoot: {store['graphRoot']}", f"  runRoot: {store['runRoot']}",
              f"  graphDriverName: {store['graphDriverName']} ({store['graphDriverReason']})",
              f"  imageCount: {store['imageCount']}",
              f"  configDir: {store['configDir']}"]
    typer.echo("\n".join(lines))


def df(ctx: typer.Context, fmt: str = typer.Option(None, "--format", help="json or a Go template.")) -> None:
    """Show disk usage."""
    from pinnace.cli.output import emit_formatted, human_size, tabulate
    rows = engine(ctx).system_df()
    data = [{"Type": r.type, "Total": r.total, "Active": r.active, "Size": r.size, "Reclaimable": r.reclaimable}
            for r in rows]
    if emit_formatted(fmt, data):
        return
    table = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
    for r in rows:
        pct = f" ({100 * r.reclaimable // r.size}%)" if r.size else " (0%)"
        table.append([r.type, str(r.total), str(r.active), human_size(r.size), human_size(r.reclaimable) + pct])
    sys.stdout.write(tabulate(table, pad=3))


def reset(ctx: typer.Context, force: bool = typer.Option(False, "--force", "-f", help="Do not ask.")) -> None:
    """Remove all images, layers and state of this user's store."""
    eng = engine(ctx)
    if confirmed(force, "system reset", f"This removes all images, volumes and state in {eng.config.root}."):
        eng.system_reset()


def check(ctx: typer.Context, repair: bool = typer.Option(False, "--repair", "-r", help="Fix what is broken."),
          quick: bool = typer.Option(False, "--quick", help="Accepted for Podman compatibility.")) -> int:
    """Check the store for consistency (and repair it)."""
    report = engine(ctx).system_check(repair)
    for p in report.problems:
        typer.echo(f"problem: {p}")
    for r in report.repaired:
        typer.echo(f"repaired: {r}")
    typer.echo(f"{report.images} images, {report.layers} layers, {report.blobs} blobs: "
               + ("ok" if not report.problems else "repaired" if repair else f"{len(report.problems)} problem(s)"))
    if report.problems and not repair:
        sys.stderr.write("Error: the store has problems: run `pinnace system check --repair`\n")
        return 125
    return 0


def login(ctx: typer.Context, registry: str = typer.Argument(..., metavar="REGISTRY"),
          username: str = typer.Option(None, "--username", "-u"),
          password: str = typer.Option(None, "--password", "-p"),
          password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
          tls_verify: str = typer.Option(None, "--tls-verify", help="true|false"),
          authfile: str = typer.Option(None, "--authfile")) -> None:
    """Log in to a registry (credentials are checked, then stored in auth.json)."""
    from pinnace.cli.image_cmds import _tls
    from pinnace.engine.contract import LoginOptions
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    if not username:
        if not sys.stdin.isatty():
            from pinnace.errors import InvalidArgument
            raise InvalidArgument("login needs --username when stdin is not a terminal")
        username = input("Username: ")
    if password is None:
        import getpass
        password = getpass.getpass("Password: ")
    engine(ctx).login(LoginOptions(registry, username, password, _tls(tls_verify), authfile))
    typer.echo("Login Succeeded!")


def logout(ctx: typer.Context, registry: str = typer.Argument(None, metavar="[REGISTRY]"),
           all: bool = typer.Option(False, "--all", "-a"), authfile: str = typer.Option(None, "--authfile")) -> int:
    """Remove stored credentials of a registry (or all)."""
    removed = engine(ctx).logout(registry, all=all, authfile=authfile)
    if all:
        typer.echo("Removed login credentials for all registries")
    elif removed:
        typer.echo(f"Removed login credentials for {registry}")
    else:
        sys.stderr.write(f"Error: not logged into {registry}\n")
        return 125
    return 0


def unshare(ctx: typer.Context, command: List[str] = typer.Argument(None, metavar="[COMMAND...]")) -> None:
    """Run a command (default: your shell) in the user and mount namespace pinnace uses."""
    import os
    argv = list(command or [os.environ.get("SHELL") or "/bin/sh"])
    engine(ctx).unshare(argv)


def register(app: typer.Typer, system_app: typer.Typer) -> None:
    app.command("info")(info)
    system_app.command("info")(info)
    system_app.command("df")(df)
    system_app.command("reset")(reset)
    system_app.command("check")(check)
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("unshare", context_settings={"allow_interspersed_args": False,
                                             "ignore_unknown_options": True})(unshare)
