"""`push` and `image push` (Podman's flags; Docker's `push NAME[:TAG]` is the same command)."""
from __future__ import annotations

import os
import sys

import typer

from pinnace.cli.state import engine


class _PushProgress:
    """Pull's progress display (rich bars on a terminal, Podman's lines otherwise) plus the one thing a
    push has that a pull has not: a blob mounted from another repository."""

    def __init__(self, inner):  # noqa: ANN001 - PlainProgress | RichProgress
        self._inner = inner

    def __call__(self, ev) -> None:  # noqa: ANN001 - ProgressEvent
        from pinnace.engine.contract import ProgressEvent, ProgressKind
        if ev.kind == ProgressKind.LAYER_EXISTS and ev.message.startswith("mounted"):
            line = f"Copying blob {ev.id.removeprefix('sha256:')[:12]} {ev.message}"
            console = getattr(getattr(self._inner, "progress", None), "console", None)
            if console is not None:
                console.print(line)
                self._inner(ProgressEvent(ProgressKind.LAYER_DONE, id=ev.id, current=ev.total, total=ev.total))
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            return
        self._inner(ev)

    def close(self) -> None:
        self._inner.close()


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
    app.command("push")(push)
    image_app.command("push")(push)
