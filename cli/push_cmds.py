"""`push` and `image push` (Podman's flags; Docker's `push NAME[:TAG]` is the same command)."""
from __future__ import annotations

import os
import sys

import typer

from pinnace.cli.state import engine


from pinnace.cli.push_progress import PushProgress as _PushProgress  # noqa: E402


def push(ctx: typer.Context, image: str = typer.Argument(..., metavar="IMAGE"),
         destination: str = typer.Argument(None, metavar="[DESTINATION]",
                                           help="[docker://]REGISTRY/REPOSITORY[:TAG] (default: IMAGE's name)."),
         fmt: str = typer.Option(None, "--format", "-f",
                                 help="Manifest type: oci or v2s2 (default: the image's own)."),
         compression: str = typer.Option(None, "--compression-format",
                                         help="gzip or zstd (default: layers as stored, gzip when uncompressed)."),
         digestfile: str = typer.Option(None, "--digestfile", help="Write the manifest digest to this file."),
         tls_verify: str = typer.Option(None, "--tls-verify", help="true|false (default: per registries.conf)."),
         creds: str = typer.Option(None, "--creds", help="USER[:PASSWORD] for the registry."),
         authfile: str = typer.Option(None, "--authfile"),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output.")) -> None:
    """Push an image to a registry; prints the manifest digest."""
    from pinnace.cli.image_cmds import _creds, _tls
    from pinnace.cli.progress import make_progress
    from pinnace.engine.contract import ImagePushOptions
    if authfile:
        os.environ["REGISTRY_AUTH_FILE"] = authfile
    opts = ImagePushOptions(image, destination, format=fmt, compression=compression, tls_verify=_tls(tls_verify),
                            credentials=_creds(creds), authfile=authfile)
    inner = make_progress(quiet)
    progress = _PushProgress(inner) if inner is not None else None
    try:
        report = engine(ctx).image_push(opts, progress or (lambda ev: None))
    finally:
        if progress is not None:
            progress.close()
    if digestfile:
        from pinnace.errors import InvalidArgument
        try:
            with open(digestfile, "w") as f:
                f.write(report.digest)
        except OSError as exc:
            raise InvalidArgument(f"cannot write digest file {digestfile}: {exc.strerror}") from None
    typer.echo(report.digest)


def register(app: typer.Typer, image_app: typer.Typer) -> None:
    # top-level `push` is on the fast path (cli/build_push_cmds.py, listed with the container commands)
    image_app.command("push")(push)
