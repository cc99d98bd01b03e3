"""The one error hierarchy. Every layer raises these; only cli/ turns them into exit codes
(and api/ into HTTP statuses)."""
from __future__ import annotations


class PinnaceError(Exception):
    """Root of all engine errors: exit 125, HTTP 500 unless a subclass says otherwise."""

    exit_code: int = 125
    http_status: int = 500


class InvalidArgument(PinnaceError):
    http_status = 400


class NotFound(PinnaceError):
    http_status = 404


class ImageNotFound(NotFound):
    pass


class Conflict(PinnaceError):
    """The object exists, is in use, or is in a state that forbids the operation."""

    http_status = 409


class RegistryError(PinnaceError):
    """The registry answered with an error or could not be reached."""

    http_status = 502


class AuthenticationError(RegistryError):
    http_status = 401


class ManifestUnknown(RegistryError, NotFound):
    http_status = 404


class DigestMismatch(RegistryError):
    """Content did not hash to the digest it was fetched by: never stored."""


class UnsupportedMediaType(RegistryError):
    http_status = 415


class LayerError(PinnaceError):
    """A layer could not be applied (hostile paths, unsupported entries, I/O)."""


class StorageError(PinnaceError):
    """The store is inconsistent, locked, or the filesystem refused an operation."""


class NamespaceError(PinnaceError):
    """The user namespace could not be created or joined (uidmap, sysctl, /dev/fuse …)."""


class CannotInvoke(PinnaceError):
    exit_code = 126


class CommandNotFound(PinnaceError):
    exit_code = 127


class BuildFailed(PinnaceError):
    """A build step failed (a RUN exited non-zero): exit 1, as `docker build` and `podman build`."""
    exit_code = 1
