"""Image references (`[registry/]repository[:tag][@digest]`) with Docker's normalisation.

This module sits on hot paths (name matching in `images`, `rmi`, `tag`), so it imports only `re` and
`dataclasses`. The grammar is the one of the distribution reference package (what Docker and Podman
accept); the normalisation rules are Docker's:

- a name without a registry gets `docker.io`; a single-component `docker.io` repository gets `library/`;
- the first path component is a registry when it contains `.` or `:`, is `localhost`, or has an
  uppercase letter (repositories are lowercase, so it cannot be one);
- `index.docker.io` and `registry-1.docker.io` are spellings of `docker.io`;
- the tag defaults to `latest` only when neither a tag nor a digest is given.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from pinnace.errors import InvalidArgument

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}\Z")
# Any algorithm the grammar allows, so that `sha512:…` gets "unsupported" rather than "invalid".
_ANY_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN_RE = re.compile(
    r"(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
    r"(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[a-fA-F0-9:]+\])"
    r"(?::[0-9]+)?\Z"
)
_HEX64_RE = re.compile(r"[a-f0-9]{64}\Z")
_NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference. `str()` gives the canonical form `registry/repository[:tag][@digest]`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def with_tag(self, tag: str | None) -> Reference:
        """Same name (and digest, if any) with `tag` (None removes the tag)."""
        if tag is not None and not TAG_RE.match(tag):
            raise InvalidArgument(f"invalid tag {tag!r}: a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -")
        return replace(self, tag=tag)

    def with_digest(self, digest: str | None) -> Reference:
        """Same name (and tag, if any) with `digest` (None removes the digest)."""
        if digest is not None:
            _check_digest(digest, digest)
        return replace(self, digest=digest)


def is_digest(text: str) -> bool:
    """True for a `sha256:` digest with 64 lowercase hex digits (the only algorithm pinnace handles)."""
    return bool(DIGEST_RE.match(text))


def registry_api_host(registry: str) -> str:
    """The host that serves the /v2/ API for `registry` (Docker Hub's is not `docker.io`)."""
    return DOCKER_HUB_API if registry in _DOCKER_HUB_ALIASES else registry


def normalize_registry(registry: str) -> str:
    """`index.docker.io`/`registry-1.docker.io` → `docker.io`; anything else unchanged."""
    return DOCKER_HUB if registry in _DOCKER_HUB_ALIASES else registry


def _check_digest(digest: str, text: str) -> None:
    if DIGEST_RE.match(digest):
        return
    if _ANY_DIGEST_RE.match(digest):
        algorithm = digest.split(":", 1)[0]
        if algorithm != "sha256":
            raise InvalidArgument(f"invalid reference {text!r}: unsupported digest algorithm {algorithm!r} (only sha256)")
    raise InvalidArgument(f"invalid reference {text!r}: invalid digest {digest!r} (expected sha256: and 64 lowercase hex digits)")


def _split_registry(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep or ("." not in first and ":" not in first and first != "localhost" and first == first.lower()):
        return DOCKER_HUB, name
    return normalize_registry(first), rest


def parse_reference(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse and normalise `text` (`busybox` → `docker.io/library/busybox:latest`).

    `default_tag=None` leaves `tag` None when the text names no tag. Raises InvalidArgument.
    """
    if not isinstance(text, str) or not text:
        raise InvalidArgument("invalid reference: empty name")
    name, at, digest = text.partition("@")
    if at:
        _check_digest(digest, text)
    else:
        digest = None
    tag = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], name[colon + 1:]
        if not TAG_RE.match(tag):
            raise InvalidArgument(f"invalid reference {text!r}: invalid tag {tag!r}")
    if not name:
        raise InvalidArgument(f"invalid reference {text!r}: empty name")
    if _HEX64_RE.match(name):
        raise InvalidArgument(f"invalid reference {text!r}: cannot specify 64-byte hexadecimal strings")
    registry, repository = _split_registry(name)
    if not _DOMAIN_RE.match(registry):
        raise InvalidArgument(f"invalid reference {text!r}: invalid registry {registry!r}")
    if not repository:
        raise InvalidArgument(f"invalid reference {text!r}: empty repository name")
    if repository != repository.lower():
        raise InvalidArgument(f"invalid reference {text!r}: repository name must be lowercase")
    for component in repository.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            raise InvalidArgument(f"invalid reference {text!r}: invalid repository name component {component!r}")
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if len(repository) > _NAME_MAX:
        raise InvalidArgument(f"invalid reference {text!r}: repository name must not be longer than {_NAME_MAX} characters")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(registry, repository, tag, digest)
