"""From what a user types (a name, a short name, an ID prefix, a digest) to one stored image."""
from __future__ import annotations

import re

from pinnace.errors import ImageNotFound, InvalidArgument
from pinnace.registry.reference import Reference, parse_reference
from pinnace.storage.images import ImageStore

_HEX_PREFIX = re.compile(r"^(sha256:)?[0-9a-f]{3,64}$")


def canonical_name(text: str) -> str:
    """'busybox' → 'docker.io/library/busybox:latest' (a tag is added when missing)."""
    ref = parse_reference(text)
    if ref.digest:
        raise InvalidArgument(f"{text}: an image name takes a tag here, not a digest")
    return str(ref)


def resolve_image(images: ImageStore, text: str) -> tuple[str, str | None]:
    """Return (image id, the stored name the text matched, or None when it matched an ID or digest)."""
    if text.startswith("sha256:") and len(text) == 71:
        if images.get(text):
            return text, None
        ids = images.ids_by_digest(text)
        if len(ids) == 1:
            return ids[0], None
    ref: Reference | None
    try:
        ref = parse_reference(text)
    except InvalidArgument:
        ref = None
    if ref is not None:
        if ref.digest:
            iid = images.id_by_repo_digest(f"{ref.name}@{ref.digest}")
            if iid:
                return iid, None
            ids = images.ids_by_digest(ref.digest)
            if len(ids) == 1:
                return ids[0], None
        else:
            iid = images.id_by_name(str(ref))
            if iid:
                return iid, str(ref)
    if _HEX_PREFIX.match(text):
        ids = images.ids_with_prefix(text.removeprefix("sha256:"))
        if len(ids) == 1:
            return ids[0], None
        if len(ids) > 1:
            raise InvalidArgument(f"{text}: ambiguous image ID prefix ({len(ids)} images match)")
    if ref is None:
        raise InvalidArgument(f"{text}: invalid image name or ID")
    raise ImageNotFound(f"{text}: no such image")
