"""A small OCI registry for tests that can be told to lie.

It serves images of an OCI image layout (the fixture `oci/` directory) over plain HTTP on 127.0.0.1,
answers like Distribution 2.8 does, and applies *faults* — per-request lies — so tests can prove that
the client notices each of them.

    from fakeregistry import FakeRegistry

    with FakeRegistry(images={"test/busybox": "busybox"}) as reg:   # layout: fixtures_layout()
        reg.host                                    # "127.0.0.1:PORT" (plain HTTP)
        reg.add_fault("status", path="/manifests/", status=500, times=2)   # 500 twice, then the truth
        reg.add_fault("corrupt", path="/blobs/")    # blob bytes that hash differently
        reg.requests                                # [Request(method, path, headers, server), …]

`layout_dir` defaults to `fixtures_layout()` (`$PINNACE_FIXTURES_DIR/oci`). `images` maps
`repository[:tag]` (tag `latest` when omitted) to an `org.opencontainers.image.ref.name` of the
layout; by default every ref name NAME is served as `fixtures/NAME:latest`, like the fixture
registries. Any manifest or blob of the layout can be fetched by digest from any served repository.
Manifests in OCI formats are only served to clients whose Accept header lists them (Distribution does
the same).

Authentication (`auth=`): None (open), `"basic"` (htpasswd-style, `users`), or `"bearer"`: a token
service at `/token` on the same server (`realm="http://HOST/token",service="fake-registry"`) that
checks Basic credentials from `users`, grants anonymous pull when `anonymous_pull` is true, and issues
tokens for exactly the scopes asked; registry requests need a token covering `repository:NAME:pull`
(`push` for writes). `challenge_scope=False` leaves `scope` out of the challenges, so the client must
build it; `token_field` names the JSON field of the token (`"token"` or `"access_token"`).

Fault kinds (`add_fault(kind, path=REGEX, method=None, times=None, **options)`; for each `/v2/…`
request that passed authentication, the first active fault whose `path` regex is found in the request
path (query included), and whose method matches, applies; `times` limits how many requests it lies
to, None = all; `fault.hits` counts them; `clear_faults()` removes them all):

- `status`      answer `status` (404, 401, 500, 429, …) with a distribution error body
                (`code`/`message` options override it; `headers` adds headers, e.g. Retry-After)
- `disconnect`  close the connection without answering
- `corrupt`     the real Docker-Content-Digest but other bytes: one byte flipped in a blob (same
                length), a leading space in a manifest
- `truncate`    announce the full Content-Length, send half of the body, close the connection
- `media-type`  (manifests) serve with Content-Type `media_type`
- `body`        (manifests) serve `body` (bytes) with Content-Type `media_type` (default
                application/json) and an honest Docker-Content-Digest (for malformed JSON, schema 1, …)
- `no-digest`   (manifests) leave out Docker-Content-Digest (and corrupt the body when `corrupt=True`)
- `chunked`     send a blob with Transfer-Encoding: chunked and no Content-Length (then the bytes
                `body`, if given: trailing junk after the real content)
- `redirect`    307 a blob to the storage server on another port (`reg.storage_host`), which refuses
                requests that carry an Authorization header (400), like cloud blob storage
- `redirect-same` 307 a blob to `/storage/…` on this server (same host: credentials may stay)
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
SERVICE = "fake-registry"
FAULT_KINDS = frozenset({"status", "disconnect", "corrupt", "truncate", "media-type", "body", "no-digest",
                         "chunked", "redirect", "redirect-same"})
_ERROR_CODES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND",
                429: "TOOMANYREQUESTS", 500: "UNKNOWN", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}
_ROUTE = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags)/(?P<ref>[^/]+)$")


def fixtures_layout() -> Path:
    """The fixture OCI layout (`$PINNACE_FIXTURES_DIR/oci`, same default as tests/conftest.py)."""
    base = os.environ.get("PINNACE_FIXTURES_DIR") or Path(os.environ.get("XDG_CACHE_HOME")
                                                           or Path.home() / ".cache") / "pinnace-fixtures"
    return Path(base) / "oci"


@dataclass
class Fault:
    kind: str
    path: str = ""
    method: str | None = None
    times: int | None = None
    status: int = 500
    code: str | None = None
    message: str | None = None
    media_type: str | None = None
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    corrupt: bool = False
    hits: int = 0

    def active(self) -> bool:
        return self.times is None or self.hits < self.times


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    headers: dict
    server: str  # "registry" or "storage"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # a client hanging up early is expected


class FakeRegistry:
    def __init__(self, layout_dir: str | Path | None = None, images: dict[str, str] | None = None, *, auth: str | None = None,
                 users: dict[str, str] | None = None, anonymous_pull: bool = True, challenge_scope: bool = True,
                 token_field: str = "token"):
        if auth not in (None, "basic", "bearer"):
            raise ValueError(f"auth must be None, 'basic' or 'bearer', not {auth!r}")
        self.layout = Path(layout_dir) if layout_dir is not None else fixtures_layout()
        index = json.loads((self.layout / "index.json").read_text())
        self._refs = {m["annotations"][REF_NAME]: m["digest"] for m in index["manifests"]
                      if REF_NAME in (m.get("annotations") or {})}
        if images is None:
            images = {f"fixtures/{name}": name for name in self._refs}
        self.tags: dict[str, dict[str, str]] = {}
        for key, ref_name in images.items():
            repo, _, tag = key.partition(":")
            self.add_image(repo, ref_name, tag or "latest")
        self.auth, self.users = auth, dict(users if users is not None else {"tester": "secret"})
        self.anonymous_pull, self.challenge_scope, self.token_field = anonymous_pull, challenge_scope, token_field
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.tokens: dict[str, set[str]] = {}  # token → granted "repository:NAME:action" entries
        self._lock = threading.Lock()
        self._servers: list[_Server] = []
        self.host = self.storage_host = ""

    # -- configuration ----------------------------------------------------------------------

    def add_image(self, repository: str, ref_name: str, tag: str = "latest") -> str:
        """Serve layout image `ref_name` as `repository:tag`; returns its manifest digest."""
        digest = self._refs[ref_name]
        self.tags.setdefault(repository, {})[tag] = digest
        return digest

    def add_fault(self, kind: str, *, path: str = "", method: str | None = None, times: int | None = None,
                  **options) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (one of {sorted(FAULT_KINDS)})")
        fault = Fault(kind, path, method, times, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def requests_to(self, pattern: str, server: str | None = None) -> list[Request]:
        """Logged requests whose path matches the regex `pattern` (optionally on one server)."""
        with self._lock:
            return [r for r in self.requests if re.search(pattern, r.path) and server in (None, r.server)]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeRegistry:
        for role in ("registry", "storage"):
            server = _Server(("127.0.0.1", 0), _Handler)
            server.registry, server.role = self, role  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._servers.append(server)
        self.host = "127.0.0.1:%d" % self._servers[0].server_address[1]
        self.storage_host = "127.0.0.1:%d" % self._servers[1].server_address[1]
        return self

    def stop(self) -> None:
        stoppers = [threading.Thread(target=server.shutdown) for server in self._servers]  # in parallel:
        for t in stoppers:                                                                # each waits a poll
            t.start()
        for t in stoppers:
            t.join()
        for server in self._servers:
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # -- helpers for the handler ------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.active() and re.search(fault.path, path) and fault.method in (None, method):
                    fault.hits += 1
                    return fault
        return None

    def _blob_path(self, digest: str) -> Path | None:
        m = re.fullmatch(r"sha256:([a-f0-9]{64})", digest)
        path = self.layout / "blobs" / "sha256" / m.group(1) if m else None
        return path if path is not None and path.is_file() else None

    def _issue_token(self, scopes: set[str]) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self.tokens[token] = scopes
        return token


def _expand_scopes(scope_params: list[str], allowed_actions: set[str]) -> set[str]:
    granted = set()
    for scope in " ".join(scope_params).split():
        parts = scope.split(":")
        if len(parts) == 3 and parts[0] == "repository":
            for action in parts[2].split(","):
                if action in allowed_actions:
                    granted.add(f"repository:{parts[1]}:{action}")
    return granted


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-registry/1"

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass

    @property
    def reg(self) -> FakeRegistry:
        return self.server.registry  # type: ignore[attr-defined]

    # -- response helpers -------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, length: int | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None = None, message: str | None = None,
               headers: dict | None = None) -> None:
        code = code or _ERROR_CODES.get(status, "UNKNOWN")
        message = message or code.lower().replace("_", " ")
        body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
        self._send(status, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    def _challenge(self, scope: str | None) -> None:
        if self.reg.auth == "basic":
            header = 'Basic realm="fake-registry"'
        else:
            header = f'Bearer realm="http://{self.reg.host}/token",service="{SERVICE}"'
            if scope and self.reg.challenge_scope:
                header += f',scope="{scope}"'
        self._error(401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": header})

    def _basic_user(self) -> str | None:
        """The user of a valid Basic header, "" for none, None for wrong credentials."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return ""
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if self.reg.users.get(user) == password and user else None

    def _authorized(self, name: str | None) -> bool:
        reg = self.reg
        if reg.auth is None:
            return True
        action = "pull" if self.command in ("GET", "HEAD") else "push"
        scope = f"repository:{name}:{action}" if name else None
        if reg.auth == "basic":
            if self._basic_user():
                return True
            self._challenge(scope)
            return False
        header = self.headers.get("Authorization", "")
        granted = reg.tokens.get(header[7:]) if header.startswith("Bearer ") else None
        if granted is not None and (scope is None or scope in granted):
            return True
        self._challenge(f"repository:{name}:{'pull' if action == 'pull' else 'pull,push'}" if name else None)
        return False

    # -- routes -----------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        reg, url = self.reg, urlsplit(self.path)
        with reg._lock:
            reg.requests.append(Request(self.command, self.path, dict(self.headers.items()), self.server.role))
        if self.server.role == "storage" or url.path.startswith("/storage/"):  # type: ignore[attr-defined]
            return self._storage(url.path, refuse_auth=self.server.role == "storage")  # type: ignore[attr-defined]
        route = _ROUTE.match(url.path)
        if url.path == "/token":
            return self._token(url.query)
        if url.path not in ("/v2", "/v2/") and not route:
            return self._error(404, "NOT_FOUND", "no such endpoint")
        if not self._authorized(route.group("name") if route else None):
            return
        fault = reg._take_fault(self.command, self.path)
        if fault is not None and fault.kind == "status":
            return self._error(fault.status, fault.code, fault.message, fault.headers)
        if fault is not None and fault.kind == "disconnect":
            self.close_connection = True
            return
        if not route:
            return self._send(200, b"{}", {"Content-Type": "application/json",
                                           "Docker-Distribution-API-Version": "registry/2.0"})
        name, kind, ref = route.group("name", "kind", "ref")
        if name not in reg.tags:
            return self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
        if kind == "tags":
            body = json.dumps({"name": name, "tags": sorted(reg.tags[name])}).encode()
            return self._send(200, body, {"Content-Type": "application/json"})
        if kind == "manifests":
            return self._manifest(name, ref, fault)
        return self._blob(ref, fault)

    def _token(self, query: str) -> None:
        reg = self.reg
        params = parse_qsl(query)
        user = self._basic_user()
        if user is None:
            body = json.dumps({"details": "incorrect username or password"}).encode()
            return self._send(401, body, {"Content-Type": "application/json"})
        if not user and not reg.anonymous_pull:
            return self._error(401, "UNAUTHORIZED", "authentication required")
        scopes = [v for k, v in params if k == "scope"]
        granted = _expand_scopes(scopes, {"pull", "push"} if user else {"pull"})
        body = json.dumps({reg.token_field: reg._issue_token(granted), "expires_in": 300}).encode()
        self._send(200, body, {"Content-Type": "application/json"})

    def _manifest(self, name: str, ref: str, fault: Fault | None) -> None:
        reg = self.reg
        digest = reg.tags[name].get(ref) if not ref.startswith("sha256:") else ref
        path = reg._blob_path(digest) if digest else None
        if path is None:
            return self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        body = path.read_bytes()
        try:
            media_type = json.loads(body).get("mediaType") or OCI_MANIFEST
        except ValueError:
            return self._error(404, "MANIFEST_UNKNOWN", "not a manifest")
        accept = self.headers.get("Accept", "")
        if media_type in (OCI_MANIFEST, OCI_INDEX) and media_type not in accept:
            # Distribution 2.8 hides OCI documents from clients that do not ask for them
            return self._error(404, "MANIFEST_UNKNOWN", "OCI manifest found, but accept header does not support OCI manifests")
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
        if fault is not None:
            if fault.kind == "corrupt" or (fault.kind == "no-digest" and fault.corrupt):
                body = b" " + body
            if fault.kind == "no-digest":
                del headers["Docker-Content-Digest"]
            if fault.kind == "media-type":
                headers["Content-Type"] = fault.media_type or "application/octet-stream"
            if fault.kind == "body":
                body = fault.body or b""
                headers = {"Content-Type": fault.media_type or "application/json",
                           "Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()}
            if fault.kind == "truncate":
                return self._truncated(body, headers)
        self._send(200, body, headers)

    def _blob(self, digest: str, fault: Fault | None) -> None:
        reg = self.reg
        path = reg._blob_path(digest)
        if path is None:
            return self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if fault is not None and fault.kind in ("redirect", "redirect-same"):
            host = reg.storage_host if fault.kind == "redirect" else reg.host
            location = f"http://{host}/storage/{digest.replace(':', '/')}?sig=fake"
            return self._send(307, b"", {"Location": location})
        self._serve_file(path, digest, fault)

    def _serve_file(self, path: Path, digest: str, fault: Fault | None) -> None:
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        size = path.stat().st_size
        if fault is not None and fault.kind in ("corrupt", "truncate"):
            data = bytearray(path.read_bytes())
            if fault.kind == "truncate":
                return self._truncated(bytes(data), headers)
            data[len(data) // 2] ^= 0xFF
            return self._send(200, bytes(data), headers)
        if fault is not None and fault.kind == "chunked":
            data = path.read_bytes() + (fault.body or b"")
            self.send_response(200)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(data), 100_000):
                    piece = data[i:i + 100_000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command != "HEAD":
            with open(path, "rb") as f:
                self.wfile.flush()
                self.connection.sendfile(f)

    def _truncated(self, body: bytes, headers: dict) -> None:
        self._send(200, body[: len(body) // 2], headers, length=len(body))
        self.close_connection = True

    def _storage(self, path: str, refuse_auth: bool) -> None:
        """Blob storage: `/storage/sha256/HEX`; the other-port server refuses Authorization (like S3
        with a signed URL), the same-server path accepts anything."""
        if refuse_auth and "Authorization" in self.headers:
            body = b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>"
            return self._send(400, body, {"Content-Type": "application/xml"})
        m = re.fullmatch(r"/storage/sha256/([a-f0-9]{64})", path)
        blob = self.reg._blob_path(f"sha256:{m.group(1)}") if m else None
        if blob is None:
            return self._send(404, b"", {})
        self._serve_file(blob, f"sha256:{m.group(1)}", None)
