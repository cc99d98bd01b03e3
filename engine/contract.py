"""The engine contract: option and report records shared by the CLI and (later) the REST API.

Every engine verb takes one `XxxOptions` and returns one `XxxReport` (or a list of records); progress goes
through a callback, never to a terminal. Keep this module import-light: the fast CLI path loads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from collections.abc import Callable

from pinnace.engine.image_list import ImageSummary  # noqa: F401 - part of the contract, kept light there


class ProgressKind(StrEnum):
    RESOLVED = "resolved"        # manifest resolved; message = canonical reference, total = layer count
    LAYER_EXISTS = "exists"      # layer already in the store
    LAYER_START = "start"        # total = compressed size (or 0 if unknown)
    LAYER_PROGRESS = "progress"  # current = bytes received so far
    LAYER_DONE = "done"
    LAYER_RETRY = "retry"        # message = why
    WRITING = "writing"          # manifest/config being written
    WARNING = "warning"          # message = one line for the user


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long operation, for progress display."""

    kind: ProgressKind
    id: str = ""                 # blob digest the event is about
    current: int = 0
    total: int = 0
    message: str = ""


def no_progress(event: ProgressEvent) -> None:
    return None


# -- images ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePullOptions:
    """What to pull and how to reach the registry."""

    reference: str
    platform: str | None = None          # "linux/arm64"; None = the host's
    tls_verify: bool | None = None       # None = per registries.conf (loopback is insecure by default)
    credentials: tuple[str, str] | None = None
    authfile: str | None = None


@dataclass(frozen=True)
class ImagePullReport:
    """What a pull stored."""

    image_id: str
    reference: str                       # canonical name that was pulled
    digest: str                          # manifest digest (the index digest when the reference was an index)
    layers_pulled: int
    layers_reused: int


@dataclass(frozen=True)
class ImageListOptions:
    """Which images to list."""

    all: bool = False
    filters: tuple[str, ...] = ()        # "reference=busybox*", "dangling=true", "label=k=v", "id=…"


@dataclass(frozen=True)
class ImageRemoveOptions:
    """Which images to remove."""

    images: tuple[str, ...]
    force: bool = False
    all: bool = False


@dataclass(frozen=True)
class ImageRemoveReport:
    """What rmi did, and what it could not do."""

    untagged: tuple[str, ...]
    deleted: tuple[str, ...]
    errors: tuple[str, ...] = ()         # one line per image that could not be removed
    exit_code: int = 0                   # podman's rmi codes: 1 no such image, 2 image in use


@dataclass(frozen=True)
class ImagePruneOptions:
    """Which unused images to remove."""

    all: bool = False                    # also tagged images no container uses
    filters: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistoryEntry:
    """One step of an image history, newest first."""

    id: str                              # layer's image id for the top entry, "<missing>" otherwise
    created: str | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool


@dataclass(frozen=True)
class ImageSaveOptions:
    """Images to write to an archive."""

    images: tuple[str, ...]
    output: str | None                   # path, or None for the stream passed to image_save
    format: str = "docker-archive"       # or "oci-archive"


@dataclass(frozen=True)
class ImageLoadReport:
    """Images that came out of an archive."""

    image_ids: tuple[str, ...]
    names: tuple[str, ...]


@dataclass(frozen=True)
class ImageImportOptions:
    """A root filesystem tarball to turn into an image."""

    source: str                          # path or "-"
    reference: str | None = None
    changes: tuple[str, ...] = ()        # Dockerfile-style "CMD [...]", "ENV A=b" …
    message: str = ""
    platform: str | None = None


@dataclass(frozen=True)
class LoginOptions:
    """Credentials to check and store."""

    registry: str
    username: str
    password: str
    tls_verify: bool | None = None
    authfile: str | None = None


@dataclass(frozen=True)
class CheckReport:
    """Result of a store integrity check."""

    problems: tuple[str, ...]
    repaired: tuple[str, ...]
    images: int
    layers: int
    blobs: int


@dataclass(frozen=True)
class DiskUsageRow:
    """One row of `system df`."""

    type: str                            # "Images", "Containers", "Local Volumes"
    total: int
    active: int
    size: int
    reclaimable: int


ProgressCallback = Callable[[ProgressEvent], None]  # called from worker threads too


# The container records live in engine/container_contract.py (re-exported here): `run` loads only those,
# since creating the image records' dataclasses costs ~6 ms of its start-up.
from pinnace.engine.container_contract import ContainerCreateOptions, ContainerSummary, ExecOptions  # noqa: E402,F401
from pinnace.engine.network_contract import NetworkCreateOptions, NetworkRecord, NetworkUser  # noqa: E402,F401


# -- push (appended for issue 5) ----------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePushOptions:
    """A local image and where to push it."""

    image: str                           # name, ID or digest of the local image
    destination: str | None = None       # [docker://]registry/repository[:tag]; None = the image's own name
    format: str | None = None            # "oci" | "v2s2"; None = the stored manifest's type
    compression: str | None = None       # "gzip" | "zstd"; None = blobs as stored (gzip for uncompressed ones)
    tls_verify: bool | None = None
    credentials: tuple[str, str] | None = None
    authfile: str | None = None


@dataclass(frozen=True)
class ImagePushReport:
    """What a push did."""

    reference: str                       # canonical destination, registry/repository:tag
    digest: str                          # manifest digest in the registry
    media_type: str                      # manifest media type pushed
    blobs_uploaded: int
    blobs_mounted: int
    blobs_skipped: int                   # already in the repository
    layers_compressed: int               # compressed for this push (not found in the store's blob cache)


@dataclass(frozen=True)
class ImageBuildOptions:
    """What `build` says (Docker's and Podman's flags)."""

    context: str = "."                        # a directory, a tar file, or "-" (stdin)
    dockerfile: str | None = None             # -f (a path, or "-" for stdin)
    tags: tuple[str, ...] = ()
    build_args: tuple[str, ...] = ()          # KEY=VALUE, or KEY (taken from the environment)
    target: str | None = None
    no_cache: bool = False
    pull: str = "missing"                     # missing | always | never
    labels: tuple[str, ...] = ()
    platform: str | None = None
    network: str = ""
    secrets: tuple[str, ...] = ()             # id=ID,src=PATH
    stdin: object = None                      # a binary stream for "-"
    environ: tuple[tuple[str, str], ...] = ()  # the caller's environment (for --build-arg KEY)


@dataclass(frozen=True)
class ImageBuildReport:
    image_id: str
    names: tuple[str, ...]
