"""`images` rendering, shared by the typer command and the fast path (same output, byte for byte)."""
from __future__ import annotations

import sys

from pinnace.cli.output import human_size, parse_time, print_json, short_id, since, tabulate
from pinnace.engine.image_list import ImageSummary


class ImagesView:
    """How to show the list (flags of `images`). A plain class: this module is on the fast path."""

    __slots__ = ("quiet", "digests", "no_trunc", "format", "noheading")

    def __init__(self, quiet: bool = False, digests: bool = False, no_trunc: bool = False,
                 format: str | None = None, noheading: bool = False):  # noqa: A002
        self.quiet, self.digests, self.no_trunc, self.format, self.noheading = quiet, digests, no_trunc, format, noheading


def _row_fields(s: ImageSummary, no_trunc: bool) -> dict:
    created = parse_time(s.created)
    return {
        "ID": short_id(s.id, no_trunc), "Id": s.id.removeprefix("sha256:"), "Repository": s.repository,
        "Tag": s.tag, "Digest": s.digest, "CreatedSince": since(s.created), "CreatedAt": s.created or "",
        "Created": int(created) if created else 0, "Size": human_size(s.size), "Names": list(s.names),
        "Labels": s.labels, "Containers": s.containers, "RepoDigests": list(s.repo_digests),
    }


def _json_entry(s: ImageSummary) -> dict:
    created = parse_time(s.created)
    return {"Id": s.id.removeprefix("sha256:"), "ParentId": "", "RepoTags": list(s.names),
            "RepoDigests": list(s.repo_digests), "Size": s.size, "SharedSize": 0, "VirtualSize": s.size,
            "Labels": s.labels, "Containers": s.containers, "Names": list(s.names), "Digest": s.digest,
            "Created": int(created) if created else 0, "CreatedAt": s.created}


def render_images(rows: list[ImageSummary], view: ImagesView) -> None:
    out = sys.stdout
    if view.quiet:
        seen = []
        for s in rows:
            sid = short_id(s.id, view.no_trunc)
            if sid not in seen:
                seen.append(sid)
        out.write("".join(i + "\n" for i in seen))
        return
    if view.format == "json":
        unique = {}
        for s in rows:
            unique.setdefault(s.id, s)
        print_json([_json_entry(s) for s in unique.values()])
        return
    if view.format and view.format != "table":
        from pinnace.cli.template import render_rows
        out.write(render_rows(view.format, [_row_fields(s, view.no_trunc) for s in rows]))
        return
    header = ["REPOSITORY", "TAG"] + (["DIGEST"] if view.digests else []) + ["IMAGE ID", "CREATED", "SIZE"]
    table = [] if view.noheading else [header]
    for s in rows:
        f = _row_fields(s, view.no_trunc)
        table.append([f["Repository"], f["Tag"]] + ([s.digest] if view.digests else []) +
                     [f["ID"], f["CreatedSince"], f["Size"]])
    out.write(tabulate(table, pad=3))
