"""Image commands: pull, images, inspect, tag, untag, rmi, prune, history, save, load, import, mount."""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import typer

from pinnace.cli.state import confirmed, engine


from pinnace.cli.registry_flags import creds as _creds, tls as _tls  # noqa: E402 - shared with the fast path


def pull(ctx: typer.Context, reference: str = typer.Argument(..., metavar="IMAGE"),
         platform: str = typer.Option(None, "--platform", help="os/arch[/variant], default: this host's."),
         tls_verify: str = typer.Option(None, "--tls-verify", help="true|false (default: per registries.conf)."),
         creds: str = typer.Option(None, "--creds", help="USER[:PASSWORD] for the registry."),
         authfile: str = typer.Option(None, "--authfile"),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the image ID.")) -> None:
    """Pull an image from a registry."""
    from pinnace.cli.progress import make_progress
    from pinnace.engine.contract import ImagePullOptions
    if authfile:
        os.environ["REGISTRY_AUTH_FILE"] = authfile
    progress = make_progress(quiet)
    if progress is not None:
        sys.stderr.write(f"Trying to pull {reference}...\n")
    try:
        report = engine(ctx).image_pull(
            ImagePullOptions(reference, platform=platform, tls_verify=_tls(tls_verify), credentials=_creds(creds)),
            progress or (lambda ev: None))
    finally:
        if progress is not None:
            progress.close()
    typer.echo(report.image_id.removeprefix("sha256:"))


def images(ctx: typer.Context,
           reference: str = typer.Argument(None, metavar="[REPOSITORY[:TAG]]"),
           all: bool = typer.Option(False, "--all", "-a", help="Show intermediate images too."),
           quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only image IDs."),
           digests: bool = typer.Option(False, "--digests", help="Show digests."),
           no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not truncate IDs."),
           noheading: bool = typer.Option(False, "--noheading", "-n", help="No header row."),
           filter: List[str] = typer.Option([], "--filter", "-f", help="reference=, dangling=, label=, id=, digest="),
           fmt: str = typer.Option(None, "--format", help="json, table, or a Go template.")) -> None:
    """List images."""
    from pinnace.cli.images_view import ImagesView, render_images
    from pinnace.engine.contract import ImageListOptions
    filters = tuple(filter) + ((f"reference={reference}",) if reference else ())
    rows = engine(ctx).image_list(ImageListOptions(all=all, filters=filters))
    render_images(rows, ImagesView(quiet, digests, no_trunc, fmt, noheading))


def inspect(ctx: typer.Context, names: List[str] = typer.Argument(..., metavar="IMAGE..."),
            fmt: str = typer.Option(None, "--format", "-f", help="json (default) or a Go template.")) -> None:
    """Show the configuration of one or more images as JSON."""
    from pinnace.cli.output import print_json
    from pinnace.errors import PinnaceError
    data, failures = [], []
    for n in names:  # like Docker: show what was found, then say what was not
        try:
            data.append(engine(ctx).image_inspect(n))
        except PinnaceError as exc:
            failures.append(exc)
    if fmt and fmt != "json":
        from pinnace.cli.template import render_rows
        sys.stdout.write(render_rows(fmt, data))
    elif data or not failures:
        print_json(data)
    for exc in failures[:-1]:
        sys.stderr.write(f"Error: {exc}\n")
    if failures:
        raise failures[-1]


def tag(ctx: typer.Context, source: str = typer.Argument(..., metavar="IMAGE"),
        targets: List[str] = typer.Argument(..., metavar="TARGET...")) -> None:
    """Give an image more names."""
    engine(ctx).image_tag(source, tuple(targets))


def untag(ctx: typer.Context, image: str = typer.Argument(..., metavar="IMAGE"),
          names: List[str] = typer.Argument(None, metavar="[NAME...]")) -> None:
    """Remove names from an image (all of them when none are given)."""
    engine(ctx).image_untag(image, tuple(names or ()))


def rmi(ctx: typer.Context, names: List[str] = typer.Argument(None, metavar="IMAGE..."),
        force: bool = typer.Option(False, "--force", "-f", help="Remove even if tagged more than once or in use."),
        all: bool = typer.Option(False, "--all", "-a", help="Remove all images.")) -> int:
    """Remove images (and the layers nothing else uses)."""
    from pinnace.engine.contract import ImageRemoveOptions
    from pinnace.errors import InvalidArgument
    if not names and not all:
        raise InvalidArgument("rmi needs at least one image name or ID (or --all)")
    report = engine(ctx).image_remove(ImageRemoveOptions(tuple(names or ()), force=force, all=all))
    for name in report.untagged:
        typer.echo(f"Untagged: {name}")
    for iid in report.deleted:
        typer.echo(f"Deleted: {iid.removeprefix('sha256:')}")
    for err in report.errors:
        sys.stderr.write(f"Error: {err}\n")
    return report.exit_code


def prune(ctx: typer.Context,
          all: bool = typer.Option(False, "--all", "-a", help="Also remove tagged images no container uses."),
          force: bool = typer.Option(False, "--force", "-f", help="Do not ask."),
          filter: List[str] = typer.Option([], "--filter")) -> None:
    """Remove dangling images (and unused ones with --all)."""
    from pinnace.engine.contract import ImagePruneOptions
    what = "all images without at least one container" if all else "all dangling images"
    if not confirmed(force, "image prune", f"This command removes {what}."):
        return
    for iid in engine(ctx).image_prune(ImagePruneOptions(all=all, filters=tuple(filter))):
        typer.echo(iid.removeprefix("sha256:"))


def history(ctx: typer.Context, image: str = typer.Argument(..., metavar="IMAGE"),
            no_trunc: bool = typer.Option(False, "--no-trunc"),
            quiet: bool = typer.Option(False, "--quiet", "-q"),
            human: bool = typer.Option(True, "--human/--no-human", "-H"),
            fmt: str = typer.Option(None, "--format")) -> None:
    """Show the history of an image."""
    from pinnace.cli.output import emit_formatted, human_size, short_id, since, tabulate
    entries = engine(ctx).image_history(image)
    ids = [e.id if e.id == "<missing>" else short_id(e.id, no_trunc) for e in entries]
    if quiet:
        typer.echo("\n".join(ids))
        return
    rows = [{"ID": i, "Created": e.created, "CreatedSince": since(e.created), "CreatedBy": e.created_by,
             "Size": e.size, "Comment": e.comment} for i, e in zip(ids, entries)]
    if emit_formatted(fmt, rows):
        return
    table = [["ID", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    for r in rows:
        by = r["CreatedBy"] if no_trunc or len(r["CreatedBy"]) <= 45 else r["CreatedBy"][:44] + "…"
        table.append([r["ID"], r["CreatedSince"] if human else (r["Created"] or ""), by,
                      human_size(r["Size"]) if human else str(r["Size"]), r["Comment"]])
    sys.stdout.write(tabulate(table, pad=3))


def save(ctx: typer.Context, names: List[str] = typer.Argument(..., metavar="IMAGE..."),
         output: str = typer.Option(None, "--output", "-o", help="Write to a file instead of stdout."),
         fmt: str = typer.Option("docker-archive", "--format", help="docker-archive or oci-archive.")) -> None:
    """Save images to a tar archive."""
    from pinnace.engine.contract import ImageSaveOptions
    from pinnace.errors import InvalidArgument
    opts = ImageSaveOptions(tuple(names), output, fmt)
    if output:
        tmp = f"{output}.partial-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                engine(ctx).image_save(opts, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    if sys.stdout.isatty():
        raise InvalidArgument("refusing to write an archive to a terminal: use -o FILE or redirect stdout")
    engine(ctx).image_save(opts, sys.stdout.buffer)
    sys.stdout.buffer.flush()


def _spooled_stdin(eng) -> "object":  # noqa: ANN001
    """Archives need random access; stdin is spooled to a temp file in the store's own tmp dir."""
    import shutil
    import tempfile
    f = tempfile.TemporaryFile(dir=eng.spool_dir())
    shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
    f.seek(0)
    return f


def load(ctx: typer.Context, input: str = typer.Option(None, "--input", "-i", help="Read from a file, not stdin."),
         quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Load images from a docker-archive or oci-archive tarball."""
    from pinnace.errors import InvalidArgument
    eng = engine(ctx)
    if input:
        try:
            f = open(input, "rb")
        except OSError as exc:
            raise InvalidArgument(f"cannot open {input}: {exc.strerror}") from None
    else:
        if sys.stdin.isatty():
            raise InvalidArgument("no archive on stdin: use -i FILE or redirect stdin")
        f = _spooled_stdin(eng)
    with f:
        report = eng.image_load(f)
    for name in report.names:
        typer.echo(f"Loaded image: {name}")
    named = {n for n in report.names}
    if not named:
        for iid in report.image_ids:
            typer.echo(f"Loaded image: {iid}")


def import_(ctx: typer.Context, source: str = typer.Argument(..., metavar="FILE|-"),
            reference: str = typer.Argument(None, metavar="[REFERENCE]"),
            change: List[str] = typer.Option([], "--change", "-c", help="Dockerfile instruction, e.g. 'CMD [\"sh\"]'."),
            message: str = typer.Option("", "--message", "-m"),
            quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Create an image from a root filesystem tarball."""
    from pinnace.engine.contract import ImageImportOptions
    from pinnace.errors import InvalidArgument
    if "://" in source:
        raise InvalidArgument("importing from a URL is not supported: download the tarball first")
    opts = ImageImportOptions(source, reference, tuple(change), message)
    if source == "-":
        iid = engine(ctx).image_import(opts, sys.stdin.buffer)
    else:
        try:
            f = open(source, "rb")
        except OSError as exc:
            raise InvalidArgument(f"cannot open {source}: {exc.strerror}") from None
        with f:
            iid = engine(ctx).image_import(opts, f)
    typer.echo(iid.removeprefix("sha256:"))


def mount(ctx: typer.Context, names: List[str] = typer.Argument(None, metavar="[IMAGE...]")) -> None:
    """Mount images read-only in the user namespace and print where (see `pinnace unshare`)."""
    eng = engine(ctx)
    if not names:
        for iid, path in eng.image_mounts():
            typer.echo(f"{iid.removeprefix('sha256:')[:12]} {path}")
        return
    for n in names:
        typer.echo(str(eng.image_mount(n)))


def unmount(ctx: typer.Context, names: List[str] = typer.Argument(..., metavar="IMAGE...")) -> None:
    """Unmount images mounted with `image mount`."""
    for n in names:
        engine(ctx).image_unmount(n)


def register(app: typer.Typer, image_app: typer.Typer) -> None:
    for fn, top, sub in ((pull, ["pull"], ["pull"]), (images, ["images"], ["ls", "list"]),
                         (inspect, ["inspect"], ["inspect"]), (tag, ["tag"], ["tag"]), (untag, ["untag"], ["untag"]),
                         (rmi, ["rmi"], ["rm"]), (prune, [], ["prune"]), (history, ["history"], ["history"]),
                         (save, ["save"], ["save"]), (load, ["load"], ["load"]), (import_, ["import"], ["import"]),
                         (mount, [], ["mount"]), (unmount, [], ["unmount", "umount"])):
        for name in top:
            app.command(name)(fn)
        for name in sub:
            image_app.command(name)(fn)
