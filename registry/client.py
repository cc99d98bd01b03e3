"""The OCI distribution client: ping, manifests and blobs of one registry, every byte checked.

Manifests are read whole (capped) and hashed; blobs stream through `BlobReader`, which hashes while it
is read and raises from `read()` when the stream ends wrong, so a consumer that decompresses and
untars on the fly learns of a bad blob before it commits anything.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from pinnace import __version__
from pinnace.errors import (AuthenticationError, DigestMismatch, InvalidArgument, ManifestUnknown, RegistryError,
                            StorageError, UnsupportedMediaType)
from pinnace.registry.config import RegistriesConfig
from pinnace.registry.manifest import GENERIC_TYPES, MANIFEST_ACCEPT, SCHEMA1_TYPES, sha256_digest
from pinnace.registry.reference import DIGEST_RE, TAG_RE
from pinnace.registry.transport import Transport, describe, discard, error_message, read_body

log = logging.getLogger(__name__)

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
MAX_BLOB_IN_MEMORY = 64 * 1024 * 1024
CHUNK = 1024 * 1024  # large reads: the per-call overhead, not the socket, limits Python's throughput
_REPOSITORY_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z")


@dataclass(frozen=True)
class FetchedManifest:
    data: bytes
    media_type: str
    digest: str


class BlobReader(io.RawIOBase):
    """A blob being downloaded: a readable binary stream that checks the content as it goes.

    When the stream ends (or the announced size is reached), the read that gets there raises
    RegistryError("… truncated: got N of M bytes") or DigestMismatch instead of returning its data;
    later reads raise the same error. `verify()` reads whatever is left and checks, for consumers
    (gzip, tar) that stop before the end of the stream. `size` is the length announced by the
    registry (or the descriptor), None when unknown. Closing before the end drops the connection.
    """

    def __init__(self, resp: urllib3.BaseHTTPResponse, digest: str, where: str, size: int | None,
                 *, size_is_content_length: bool = True):
        super().__init__()
        self._resp, self.digest, self._where, self.size = resp, digest, where, size
        # When `size` only comes from the descriptor, the end of the stream is checked, not assumed.
        self._framed = size_is_content_length
        self._hash = hashlib.sha256()
        self._count = 0
        self._done = False
        self._error: RegistryError | None = None

    @property
    def bytes_read(self) -> int:
        return self._count

    def readable(self) -> bool:
        return True

    def _fail(self, error: RegistryError) -> None:
        self._error, self._done = error, True
        self._resp.close()
        raise error

    def _truncated(self, reason: str = "") -> RegistryError:
        if self.size is not None:
            err = RegistryError(f"blob {self.digest} ({self._where}) truncated: got {self._count} of {self.size} bytes"
                                + (f" ({reason})" if reason else ""))
        else:
            err = RegistryError(f"blob {self.digest} ({self._where}): connection lost after {self._count} bytes"
                                + (f": {reason}" if reason else ""))
        err.retryable = True  # type: ignore[attr-defined]  # fetch_blob starts the blob again
        return err

    def _finish(self, at_eof: bool) -> None:
        self._done = True
        if not at_eof and not self._framed:
            try:
                extra = self._resp.read(1, decode_content=False)
            except (Urllib3Error, OSError) as exc:
                self._fail(self._truncated(describe(exc)))
            self._count += len(extra)
        if self.size is not None and self._count < self.size:
            self._fail(self._truncated())
        if self.size is not None and self._count > self.size:
            self._fail(RegistryError(f"blob {self.digest} ({self._where}): more than the expected {self.size} bytes"))
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self.digest:
            self._fail(DigestMismatch(f"blob {self.digest}: content hashes to {actual} ({self._where})"))
        self._resp.release_conn()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("read from a closed BlobReader")
        if self._error is not None:
            raise self._error
        if self._done or size == 0:
            return b""
        try:
            data = self._resp.read(size, decode_content=False)
        except (Urllib3Error, OSError) as exc:
            self._fail(self._truncated(describe(exc)))
        self._count += len(data)
        self._hash.update(data)
        if not data or (self.size is not None and self._count >= self.size):
            self._finish(at_eof=not data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(memoryview(buffer).cast("B")))
        memoryview(buffer).cast("B")[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def verify(self) -> None:
        """Read the rest of the blob and raise if it is not what was asked for."""
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        if not self.closed:
            if not self._done:
                self._resp.close()  # an unread body cannot go back to the pool
            super().close()


class RegistryClient:
    """One registry (`host[:port]`, `docker.io` for Docker Hub); safe to share between threads.

    `tls_verify`: None follows registries.conf (and the loopback default) — insecure registries get
    HTTPS without verification, then plain HTTP; False makes any registry insecure; True means
    verified HTTPS only. `credentials` are used when the registry asks for them (None: anonymous).
    Retries: connection errors and 429/5xx, `retries` times with backoff `backoff`·2ⁿ seconds.
    """

    def __init__(self, registry: str, *, tls_verify: bool | None = None, credentials: tuple[str, str] | None = None,
                 config: RegistriesConfig | None = None, user_agent: str = f"pinnace/{__version__}",
                 retries: int = 4, timeout: float = 60, backoff: float = 0.2):
        self._transport = Transport(registry, tls_verify=tls_verify, credentials=credentials, config=config,
                                    user_agent=user_agent, retries=retries, timeout=timeout, backoff=backoff)
        self.registry = self._transport.registry
        self._retries, self._backoff = retries, backoff

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_repository(self, repository: str) -> None:
        if not _REPOSITORY_RE.match(repository):
            raise InvalidArgument(f"invalid repository name {repository!r}")

    def _check_digest(self, digest: str) -> None:
        if not DIGEST_RE.match(digest):
            raise InvalidArgument(f"invalid digest {digest!r}")

    def _status_error(self, resp: urllib3.BaseHTTPResponse, what: str) -> RegistryError:
        message = error_message(discard(resp)) or resp.reason or ""
        cls = AuthenticationError if resp.status == 403 else RegistryError
        return cls(f"{what}: HTTP {resp.status}" + (f": {message}" if message else ""))

    def ping(self) -> None:
        """GET /v2/: checks that this is a registry and that the credentials (if any) are accepted."""
        resp = self._transport.request("GET", "/v2/", what=self.registry)
        if resp.status != 200:
            raise self._status_error(resp, f"{self.registry}: /v2/")
        discard(resp)

    def get_manifest(self, repository: str, reference: str, accept: Sequence[str] | str = MANIFEST_ACCEPT,
                     ) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest; its digest is computed from the body and checked."""
        self._check_repository(repository)
        by_digest = bool(DIGEST_RE.match(reference))
        if not by_digest and not TAG_RE.match(reference):
            raise InvalidArgument(f"invalid tag or digest {reference!r}")
        where = f"{self.registry}/{repository}{'@' if by_digest else ':'}{reference}"
        headers = {"Accept": accept if isinstance(accept, str) else ", ".join(accept)}
        resp = self._transport.request("GET", f"/v2/{repository}/manifests/{reference}",
                                       scope=f"repository:{repository}:pull", headers=headers, what=where)
        if resp.status == 404:
            discard(resp)
            raise ManifestUnknown(f"manifest unknown: {where}")
        if resp.status != 200:
            raise self._status_error(resp, f"manifest {where}")
        data = read_body(resp, MAX_MANIFEST_SIZE, f"manifest {where}")
        media_type = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media_type in SCHEMA1_TYPES:
            raise UnsupportedMediaType(f"schema 1 manifests are not supported: {where}")
        digest = sha256_digest(data)
        if by_digest and digest != reference:
            raise DigestMismatch(f"manifest {where}: content hashes to {digest}")
        announced = resp.headers.get("Docker-Content-Digest", "").strip()
        if announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(f"manifest {where}: registry says {announced} but content hashes to {digest}")
        if media_type in GENERIC_TYPES:
            try:
                declared = json.loads(data).get("mediaType")
            except (ValueError, AttributeError):
                declared = None
            media_type = declared if isinstance(declared, str) else media_type
        return FetchedManifest(data, media_type, digest)

    def open_blob(self, repository: str, digest: str, *, expected_size: int | None = None) -> BlobReader:
        """Start downloading a blob; see BlobReader for how content is checked. Close it (context manager)."""
        self._check_repository(repository)
        self._check_digest(digest)
        where = f"{self.registry}/{repository}"
        resp = self._transport.request("GET", f"/v2/{repository}/blobs/{digest}",
                                       scope=f"repository:{repository}:pull", what=f"blob {where}@{digest}")
        if resp.status == 404:
            discard(resp)
            raise RegistryError(f"blob unknown: {where}@{digest}")
        if resp.status != 200:
            raise self._status_error(resp, f"blob {where}@{digest}")
        length = resp.headers.get("Content-Length", "")
        announced = int(length) if length.isdigit() else None
        if expected_size is not None and announced is not None and announced != expected_size:
            resp.close()
            raise RegistryError(f"blob {digest} ({where}): registry announces {announced} bytes, "
                                f"the manifest says {expected_size}")
        return BlobReader(resp, digest, where, expected_size if expected_size is not None else announced,
                          size_is_content_length=announced is not None)

    def fetch_blob(self, repository: str, digest: str, dest: BinaryIO, *, expected_size: int | None = None,
                   progress: Callable[[int], None] | None = None) -> int:
        """Download a blob into `dest`, verified; returns its size.

        A broken download starts again (up to `retries` times) when `dest` is seekable: it is truncated
        back to where it was. `progress(n)` gets the bytes received so far (back to 0 on a restart).
        On error, `dest` may hold partial or bad content: the caller discards it.
        """
        start = dest.tell() if dest.seekable() else None
        for attempt in range(self._retries + 1):
            try:
                with self.open_blob(repository, digest, expected_size=expected_size) as blob:
                    total = 0
                    while chunk := blob.read(CHUNK):
                        try:
                            dest.write(chunk)
                        except OSError as exc:
                            raise StorageError(f"writing blob {digest}: {exc}") from None
                        total += len(chunk)
                        if progress is not None:
                            progress(total)
                    return total
            except RegistryError as exc:
                if not getattr(exc, "retryable", False) or attempt >= self._retries or start is None:
                    raise
                log.info("%s; downloading it again", exc)
                time.sleep(self._backoff * 2 ** attempt)
                try:
                    dest.seek(start)
                    dest.truncate()
                except OSError as exc2:
                    raise StorageError(f"rewinding blob {digest}: {exc2}") from None
                if progress is not None:
                    progress(0)
        raise AssertionError("unreachable")

    def get_blob(self, repository: str, digest: str, *, expected_size: int | None = None,
                 max_size: int = MAX_BLOB_IN_MEMORY) -> bytes:
        """A small blob (an image config) in memory, verified; RegistryError beyond `max_size` bytes."""
        if expected_size is not None and expected_size > max_size:
            raise RegistryError(f"blob {digest}: {expected_size} bytes is more than the {max_size}-byte limit")
        buf = _CappedBuffer(max_size, digest)
        self.fetch_blob(repository, digest, buf, expected_size=expected_size)
        return buf.getvalue()

    def blob_exists(self, repository: str, digest: str, *, push: bool = False) -> bool:
        """HEAD the blob: True when the registry has it (in this repository)."""
        self._check_repository(repository)
        self._check_digest(digest)
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        where = f"blob {self.registry}/{repository}@{digest}"
        resp = self._transport.request("HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope, what=where)
        if resp.status == 404:
            discard(resp)
            return False
        if resp.status != 200:
            raise self._status_error(resp, where)
        discard(resp)
        return True


class _CappedBuffer(io.BytesIO):
    def __init__(self, limit: int, digest: str):
        super().__init__()
        self._limit, self._digest = limit, digest

    def write(self, data) -> int:
        if self.tell() + len(data) > self._limit:
            raise RegistryError(f"blob {self._digest}: more than the {self._limit}-byte limit")
        return super().write(data)
