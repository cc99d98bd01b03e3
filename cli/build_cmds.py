"""`build` and `image build`: Docker's and Podman's flags; progress step by step (Podman's format)."""
from __future__ import annotations

import os
import sys

import typer

from pinnace.cli.build_push_cmds import BuildPrinter
from pinnace.cli.state import engine


def build(ctx: typer.Context,
          context: str = typer.Argument(".", metavar="[CONTEXT]", help="Directory, tar archive, or - (stdin)."),
          file: str = typer.Option(None, "--file", "-f", help="Dockerfile (default CONTEXT/Dockerfile or Containerfile); - reads stdin."),
          tag: list[str] = typer.Option([], "--tag", "-t", help="Name the image (repeatable)."),
          build_arg: list[str] = typer.Option([], "--build-arg", help="KEY=VALUE for an ARG (repeatable)."),
          target: str = typer.Option(None, "--target", help="Build up to this stage."),
          no_cache: bool = typer.Option(False, "--no-cache", help="Do not use the build cache."),
          pull: str = typer.Option(None, "--pull", help="missing (default), always, never; --pull alone = always.",
                                   show_default=False),
          label: list[str] = typer.Option([], "--label", help="KEY=VALUE label on the image (repeatable)."),
          iidfile: str = typer.Option(None, "--iidfile", help="Write the image ID to this file."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the image ID."),
          platform: str = typer.Option(None, "--platform", help="Only this host's platform."),
          network: str = typer.Option("", "--network", help="RUN's network: default, host or none."),
          secret: list[str] = typer.Option([], "--secret", help="id=ID,src=PATH for RUN --mount=type=secret."),
          layers: bool = typer.Option(True, "--layers/--no-layers", hidden=True, help="Accepted (Podman)."),
          rm: bool = typer.Option(True, "--rm/--no-rm", hidden=True, help="Accepted (Docker)."),
          force_rm: bool = typer.Option(False, "--force-rm", hidden=True, help="Accepted (Docker).")) -> None:
    """Build an image from a Dockerfile (or Containerfile)."""
    from pinnace.engine.contract import ImageBuildOptions
    del layers, rm, force_rm
    opts = ImageBuildOptions(context=context, dockerfile=file, tags=tuple(tag), build_args=tuple(build_arg),
                             target=target, no_cache=no_cache, pull=_pull_policy(pull), labels=tuple(label),
                             platform=platform, network="" if network in ("", "default", "bridge") else network,
                             secrets=tuple(secret), stdin=sys.stdin.buffer, environ=tuple(os.environ.items()))

    report = engine(ctx).image_build(opts, BuildPrinter(quiet))
    if iidfile:
        with open(iidfile, "w") as f:
            f.write(report.image_id)
    if not quiet:
        for name in report.names:
            sys.stdout.write(f"Successfully tagged {name}\n")
    sys.stdout.write(report.image_id.removeprefix("sha256:") + "\n")


def _pull_policy(value: str | None) -> str:
    if value is None or value == "":
        return "missing"
    v = value.lower()
    return {"true": "always", "false": "missing", "always": "always", "missing": "missing", "never": "never",
            "newer": "always"}.get(v, v)


def register(app: typer.Typer, image_app: typer.Typer) -> None:
    # top-level `build` is on the fast path (cli/build_push_cmds.py, listed with the container commands)
    image_app.command("build")(build)
