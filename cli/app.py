"""The typer application: global flags, command groups, and the error edge."""
from __future__ import annotations

import sys

import typer

from pinnace.cli.state import AppState

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="pinnace: rootless, daemonless containers with Docker/Podman commands.")
image_app = typer.Typer(no_args_is_help=True, help="Manage images.")
system_app = typer.Typer(no_args_is_help=True, help="Manage pinnace itself.")
app.add_typer(image_app, name="image")
app.add_typer(system_app, name="system")


def _version(value: bool) -> None:
    if value:
        from pinnace import __version__
        typer.echo(f"pinnace version {__version__}")
        raise typer.Exit()


@app.callback()
def root(ctx: typer.Context,
         root_dir: str = typer.Option(None, "--root", help="Storage root (images, layers, state.db)."),
         runroot: str = typer.Option(None, "--runroot", help="Runtime state (namespace holder, mounts)."),
         storage_driver: str = typer.Option(None, "--storage-driver", help="Storage driver: overlay, fuse or vfs (default: chosen once per store)."),
         log_level: str = typer.Option("warn", "--log-level", help="debug, info, warn, error."),
         version: bool = typer.Option(False, "--version", "-v", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    import logging
    level = getattr(logging, log_level.upper(), None)
    if level is None and log_level.lower() != "warn":
        from pinnace.errors import InvalidArgument
        raise InvalidArgument(f"invalid log level {log_level!r} (debug, info, warn, error)")
    logging.basicConfig(level=level or logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    ctx.obj = AppState(root_dir, runroot, storage_driver, log_level)


@app.command("version")
def version_cmd(fmt: str = typer.Option(None, "--format", "-f")) -> None:
    """Print the version."""
    import platform
    from pinnace import __version__
    info = {"Version": __version__, "PythonVersion": platform.python_version(), "OsArch": f"linux/{platform.machine()}"}
    from pinnace.cli.output import emit_formatted
    if not emit_formatted(fmt, info):
        typer.echo(f"Version:      {info['Version']}\nPython:       {info['PythonVersion']}\nOS/Arch:      {info['OsArch']}")


def _register() -> None:
    from pinnace.cli import image_cmds, network_cmds, system_cmds, volume_cmds
    image_cmds.register(app, image_app)
    system_cmds.register(app, system_app)
    volume_cmds.register(app)
    network_cmds.register(app)
    __import__("pinnace.cli.generate_cmds", fromlist=["register"]).register(app, system_app)
    __import__("pinnace.cli.push_cmds", fromlist=["register"]).register(app, image_app)
    __import__("pinnace.cli.build_cmds", fromlist=["register"]).register(app, image_app)
    _register_container_commands()


def _register_container_commands() -> None:
    """The container commands are parsed by cli/flags.py before typer loads (__main__); they are listed
    here so that `pinnace --help` shows them, and reached here only after global flags typer handles."""
    from pinnace.cli.container_cmds import COMMANDS, CONTAINER_ONLY, run_command
    container_app = typer.Typer(no_args_is_help=True, help="Manage containers.")
    app.add_typer(container_app, name="container")
    settings = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}

    def make(cmd, fn):  # noqa: ANN001, ANN202
        def handler(ctx: typer.Context) -> int:
            state = ctx.find_root().obj
            globals_ = {"--root": state.root, "--runroot": state.runroot, "--storage-driver": state.storage_driver}
            code = run_command(globals_, cmd, fn, list(ctx.args))
            raise typer.Exit(code)
        handler.__doc__ = cmd.help
        return handler
    for name, (cmd, fn) in COMMANDS.items():
        if name in ("inspect",):
            continue  # typer's own `inspect` stays for images; the fast dispatch handles containers first
        app.command(name, context_settings=settings, add_help_option=False)(make(cmd, fn))
        container_app.command(name, context_settings=settings, add_help_option=False)(make(cmd, fn))
    for name, (cmd, fn) in CONTAINER_ONLY.items():
        container_app.command(name, context_settings=settings, add_help_option=False)(make(cmd, fn))


# Boolean flags that Podman also accepts with a value (`--tls-verify=false`): typer takes them as strings,
# so the bare form is spelled out here.
_VALUED_BOOLS = ("--tls-verify",)


def run(argv: list[str]) -> int:
    from pinnace.cli.errors import fail, run_guarded
    _register()
    argv = [f"{a}=true" if a in _VALUED_BOOLS else a for a in argv]

    def invoke() -> int:
        try:
            result = app(args=argv, prog_name="pinnace", standalone_mode=False)
        except typer.Exit as exc:  # pragma: no cover - typer raises its own Exit in some paths
            return exc.exit_code
        except Exception as exc:  # click usage errors carry exit_code + format_message
            if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
                if exc.__class__.__name__ == "Abort":
                    return fail("aborted", 125)
                return fail(exc.format_message(), 125 if exc.exit_code == 2 else exc.exit_code)
            raise
        return result if isinstance(result, int) else 0
    return run_guarded(invoke)
