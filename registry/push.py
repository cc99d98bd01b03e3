"""Pushing to an OCI distribution registry: blob checks, cross-repository mounts, uploads, manifests.

The distribution spec's push flow, per blob:

1. `HEAD /v2/NAME/blobs/DIGEST` — 200: the repository has it, nothing to send.
2. `POST /v2/NAME/blobs/uploads/?mount=DIGEST&from=OTHER` when the blob is known to be in another
   repository of the same registry — 201: mounted (no bytes sent); 202: the registry could not (or
   will not) mount, and the answer is an ordinary upload session, which we go on to use.
   Without a mount candidate: `POST /v2/NAME/blobs/uploads/` — 202 with the session's `Location`.
3. Small blobs (≤ MONOLITHIC_MAX): one `PUT LOCATION?digest=DIGEST` with the whole blob as body.
   Larger blobs: `PATCH LOCATION` chunks of CHUNK_SIZE bytes with `Content-Range: start-end` (each answer
   gives the Location for the next request), then an empty `PUT LOCATION?digest=DIGEST`.

Why the 16 MiB threshold: a request body is held in memory so that a retry (5xx, a 401 challenge) can
send it again, and three uploads run at once; chunks bound that memory (3 × 16 MiB) and let a broken
upload resume at the last chunk the registry acknowledged (416 → `GET` the session's `Range`) instead
of starting again. Below 16 MiB the extra round trips of a session buy nothing. Measured on the 48.5 MB
debian layer against the local registry: 4, 16 and 64 MiB chunks all upload in 0.25-0.3 s.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote, urlencode, urlsplit

import urllib3

from pinnace.errors import (AuthenticationError, DigestMismatch, InvalidArgument, RegistryError,
                            UnsupportedMediaType)
from pinnace.registry.client import RegistryClient
from pinnace.registry.manifest import sha256_digest
from pinnace.registry.reference import TAG_RE
from pinnace.registry.transport import discard, error_message

log = logging.getLogger(__name__)

MONOLITHIC_MAX = 16 << 20
CHUNK_SIZE = 16 << 20
MAX_MOUNT_SOURCES = 3
_RANGE_RE = re.compile(r"(?:bytes=)?(\d+)-(\d+)\Z")
# Distribution error codes that say the manifest itself is wrong (not the connection, not the auth).
_MANIFEST_CODES = frozenset({"MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNVERIFIED", "BLOB_UNKNOWN",
                             "TAG_INVALID", "NAME_INVALID", "SIZE_INVALID"})

EXISTS, MOUNTED, UPLOADED = "exists", "mounted", "uploaded"


@dataclass(frozen=True)
class BlobPush:
    """What pushing one blob came to: `outcome` is EXISTS, MOUNTED (from `source`) or UPLOADED."""

    digest: str
    outcome: str
    source: str | None = None


def _codes(body: bytes) -> set[str]:
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, AttributeError):
        return set()
    if not isinstance(errors, list):
        return set()
    return {str(e.get("code", "")).upper() for e in errors if isinstance(e, dict)}


def push_error(resp: urllib3.BaseHTTPResponse, what: str) -> RegistryError:
    """The error for an unexpected answer, classed by the registry's error codes."""
    body = discard(resp)
    codes = _codes(body)
    message = error_message(body) or resp.reason or ""
    text = f"{what}: HTTP {resp.status}" + (f": {message}" if message else "")
    if "DIGEST_INVALID" in codes:
        return DigestMismatch(f"{what}: the registry says the content does not match its digest ({message})")
    if resp.status in (401, 403) or codes & {"DENIED", "UNAUTHORIZED"}:
        return AuthenticationError(text)
    if resp.status == 415:
        return UnsupportedMediaType(text)
    if codes & _MANIFEST_CODES:
        return RegistryError(f"{what}: rejected by the registry: {message}")
    return RegistryError(text)


class UploadSession:
    """An open blob upload: `write()` chunks (PATCH), then `finish()` (PUT ?digest=), or `cancel()`."""

    def __init__(self, client: PushClient, repository: str, location: str, what: str):
        self._client, self.repository, self.location, self._what = client, repository, location, what
        self.offset = 0  # bytes the registry has acknowledged

    def _request(self, method: str, headers: dict[str, str], body: bytes | None = None,
                 query: dict[str, str] | None = None) -> urllib3.BaseHTTPResponse:
        return self._client.location_request(method, self.location, self.repository, headers=headers, body=body,
                                             query=query, what=self._what)

    def _follow(self, resp: urllib3.BaseHTTPResponse) -> None:
        if resp.headers.get("Location"):  # each answer names where the upload continues
            self.location = resp.headers["Location"]

    def status(self) -> int:
        """How many bytes the registry holds for this upload (GET on the session: its Range header)."""
        resp = self._request("GET", {})
        if resp.status not in (200, 204):
            raise push_error(resp, f"{self._what}: upload status")
        discard(resp)
        self._follow(resp)
        m = _RANGE_RE.match(resp.headers.get("Range", "").strip())
        return int(m.group(2)) + 1 if m and int(m.group(2)) > 0 else 0

    def write(self, data: bytes) -> None:
        """Send the next chunk. A 416 (the registry holds a different amount than we think: an earlier
        attempt got partly through) is resolved by asking the session where it stands and resuming."""
        start = 0
        for _ in range(3):
            piece = data if start == 0 else data[start:]
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(piece)),
                       "Content-Range": f"{self.offset}-{self.offset + len(piece) - 1}"}
            resp = self._request("PATCH", headers, piece)
            if resp.status == 202:
                discard(resp)
                self._follow(resp)
                self.offset += len(piece)
                return
            if resp.status != 416:
                raise push_error(resp, self._what)
            discard(resp)
            held = self.status()
            if not self.offset <= held <= self.offset + len(piece):
                raise RegistryError(f"{self._what}: upload out of step (registry holds {held} bytes, "
                                    f"{self.offset} were sent before this chunk)")
            start += held - self.offset
            self.offset = held
            if start == len(data):
                return
        raise RegistryError(f"{self._what}: the registry keeps refusing the chunk at offset {self.offset}")

    def finish(self, digest: str, data: bytes = b"") -> None:
        """Complete the upload: the registry checks that everything it got hashes to `digest`."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        resp = self._request("PUT", headers, data, {"digest": digest})
        if resp.status not in (201, 204):
            raise push_error(resp, self._what)
        discard(resp)
        announced = resp.headers.get("Docker-Content-Digest", "").strip()
        if announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(f"{self._what}: registry stored {announced}, we sent {digest}")

    def cancel(self) -> None:
        """Drop the session (best effort: registries purge abandoned uploads anyway)."""
        try:
            discard(self._request("DELETE", {}))
        except RegistryError as exc:
            log.debug("%s: cancelling the upload: %s", self._what, exc)


class PushClient(RegistryClient):
    """A RegistryClient that also writes: blobs (with mounts and chunked uploads) and manifests."""

    def _scope(self, repository: str) -> str:
        return f"repository:{repository}:pull,push"

    def location_request(self, method: str, location: str, repository: str, *, headers: dict[str, str],
                         body: bytes | None = None, query: dict[str, str] | None = None,
                         what: str) -> urllib3.BaseHTTPResponse:
        """A request to an upload Location (absolute or relative, maybe with a query of its own)."""
        parts = urlsplit(location)
        params = parts.query
        if query:
            params = (params + "&" if params else "") + urlencode(query, quote_via=quote, safe=":")
        target = parts.path + (f"?{params}" if params else "")
        if parts.netloc and parts.netloc != self._transport.host:
            # an upload endpoint on another host (blob storage): it must not see the registry credentials
            url = f"{parts.scheme}://{parts.netloc}{target}"
            resp, _ = self._transport.send(method, [url], {"User-Agent": self._transport.user_agent, **headers}, body)
            return resp
        if not target.startswith("/"):
            raise RegistryError(f"{what}: registry sent an invalid upload location {location!r}")
        return self._transport.request(method, target, scope=self._scope(repository), headers=headers, body=body,
                                       what=what)

    def start_upload(self, repository: str, *, mount: str | None = None,
                     source: str | None = None) -> UploadSession | None:
        """Open an upload session; with `mount`/`source`, first ask for a cross-repository mount, which
        returns None when the registry mounted the blob (201)."""
        self._check_repository(repository)
        where = f"{self.registry}/{repository}"
        path, scope = f"/v2/{repository}/blobs/uploads/", self._scope(repository)
        what = f"upload to {where}"
        if mount and source:
            self._check_digest(mount)
            self._check_repository(source)
            path += "?" + urlencode({"mount": mount, "from": source}, quote_via=quote, safe=":/")
            scope += f" repository:{source}:pull"
            what = f"blob {where}@{mount}"
        resp = self._transport.request("POST", path, scope=scope, headers={"Content-Length": "0"}, body=b"",
                                       what=what)
        if resp.status == 201 and mount and source:
            discard(resp)
            return None
        if resp.status != 202:
            raise push_error(resp, what)
        discard(resp)
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"{what}: the registry opened an upload without a Location")
        return UploadSession(self, repository, location, f"blob {where}@{mount}" if mount else what)

    def push_blob(self, repository: str, digest: str, size: int, open_blob: Callable[[], BinaryIO], *,
                  mount_from: Sequence[str] = (), progress: Callable[[int], None] | None = None,
                  exists: bool | None = None) -> BlobPush:
        """Make sure `repository` has the blob: HEAD (unless `exists` already says), then a mount from one
        of `mount_from` (repositories of this registry that may hold it), then an upload of `open_blob()`."""
        if exists if exists is not None else self.blob_exists(repository, digest, push=True):
            return BlobPush(digest, EXISTS)
        session: UploadSession | None = None
        sources = [s for s in dict.fromkeys(mount_from) if s != repository][:MAX_MOUNT_SOURCES]
        for i, source in enumerate(sources):
            session = self.start_upload(repository, mount=digest, source=source)
            if session is None:
                return BlobPush(digest, MOUNTED, source)
            if i < len(sources) - 1:
                session.cancel()  # the next candidate opens its own session
        if session is None:
            session = self.start_upload(repository)
        session._what = f"blob {self.registry}/{repository}@{digest}"
        try:
            self._send(session, digest, size, open_blob, progress)
        except BaseException:
            session.cancel()
            raise
        return BlobPush(digest, UPLOADED)

    def _send(self, session: UploadSession, digest: str, size: int, open_blob: Callable[[], BinaryIO],
              progress: Callable[[int], None] | None) -> None:
        def short(got: int) -> RegistryError:
            return RegistryError(f"blob {digest}: {size} bytes expected, the local copy has {got}")
        with open_blob() as f:
            if size <= MONOLITHIC_MAX:
                data = f.read(size + 1)
                if len(data) != size:
                    raise short(len(data))
                session.finish(digest, data)
                if progress is not None:
                    progress(size)
                return
            sent = 0
            while chunk := f.read(min(CHUNK_SIZE, size + 1 - sent)):
                if sent + len(chunk) > size:
                    raise short(sent + len(chunk))
                session.write(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(sent)
            if sent != size:
                raise short(sent)
            session.finish(digest)

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT a manifest by tag (or digest); returns its digest, checked against the registry's."""
        self._check_repository(repository)
        digest = sha256_digest(data)
        if reference.startswith("sha256:"):
            self._check_digest(reference)
            if reference != digest:
                raise InvalidArgument(f"manifest hashes to {digest}, not {reference}")
        elif not TAG_RE.match(reference):
            raise InvalidArgument(f"invalid tag {reference!r}")
        where = f"manifest {self.registry}/{repository}:{reference}"
        resp = self._transport.request("PUT", f"/v2/{repository}/manifests/{reference}",
                                       scope=self._scope(repository), headers={"Content-Type": media_type},
                                       body=data, what=where)
        if resp.status not in (200, 201, 202):
            raise push_error(resp, where)
        discard(resp)
        announced = resp.headers.get("Docker-Content-Digest", "").strip()
        if announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(f"{where}: registry stored {announced}, we sent {digest}")
        return digest
