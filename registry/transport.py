"""HTTP for the registry client: one urllib3 PoolManager, scheme choice, retries, auth challenges, redirects.

The distribution spec's auth dance: a request answered 401 carries `WWW-Authenticate`. For `Basic` we
resend with the credentials. For `Bearer realm=…,service=…[,scope=…]` we get a token from the realm
(with Basic credentials when we have them, anonymously otherwise) for the scope of what we are doing
(`repository:NAME:pull`), cache it per scope, and resend. Once a registry is known to use tokens, new
scopes get their token before the first request, saving a 401 round trip per repository.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import InsecureRequestWarning
from urllib3.util.ssl_ import create_urllib3_context

from pinnace.errors import AuthenticationError, RegistryError
from pinnace.registry.config import RegistriesConfig, load_registries_config
from pinnace.registry.reference import normalize_registry, registry_api_host

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
MAX_RETRY_AFTER = 30.0
ERROR_BODY_LIMIT = 64 * 1024
_PARAM_RE = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*,?')
_SCHEME_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s+|$)")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lowercased: "bearer", "basic", …
    params: dict[str, str]


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse WWW-Authenticate header values (each may hold several challenges)."""
    challenges: list[Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            m = _SCHEME_RE.match(value, pos)
            if not m:
                break
            scheme, pos, params = m.group(1).lower(), m.end(), {}
            while True:
                p = _PARAM_RE.match(value, pos)
                if not p or not p.group(0).strip():
                    break
                raw = p.group(2)
                params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
                pos = p.end()
            challenges.append(Challenge(scheme, params))
            pos = value.find(",", pos) + 1 if not _SCHEME_RE.match(value, pos) else pos
            if pos <= 0:
                break
    return challenges


def error_message(body: bytes) -> str:
    """The registry's explanation from an error body: distribution `errors`, or token-service shapes."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace").strip()
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors:
            parts = []
            for e in errors:
                if isinstance(e, dict):
                    code, msg = str(e.get("code", "")).lower(), str(e.get("message", "")).strip()
                    parts.append(f"{code}: {msg}" if code and msg else code or msg)
            return "; ".join(p for p in parts if p)
        for key in ("details", "detail", "error_description", "error", "message"):
            if isinstance(doc.get(key), str):
                return doc[key]
    return ""


def unauthorized(what: str, message: str) -> AuthenticationError:
    """AuthenticationError("WHAT: unauthorized: WHY") without repeating the registry's own code."""
    message = message.strip()
    for prefix in ("unauthorized:", "denied:"):
        if message.lower().startswith(prefix):
            message = message[len(prefix):].strip()
    return AuthenticationError(f"{what}: unauthorized: {message or 'authentication required'}")


def describe(exc: BaseException) -> str:
    """A one-line reason for a connection-level failure, without urllib3's object reprs."""
    reason = getattr(exc, "reason", None) or exc
    return re.sub(r"<[^>]*>:\s*", "", str(reason)) or type(exc).__name__


def read_body(resp: urllib3.BaseHTTPResponse, limit: int, what: str) -> bytes:
    """The whole body, at most `limit` bytes (RegistryError beyond); the connection is released."""
    length = resp.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        resp.close()
        raise RegistryError(f"{what}: response of {int(length)} bytes exceeds the {limit}-byte limit")
    try:
        data = resp.read(limit + 1, decode_content=True)  # digests are over the content, not its encoding
    except (Urllib3Error, OSError) as exc:
        resp.close()
        raise RegistryError(f"{what}: connection lost while reading the response: {describe(exc)}") from None
    if len(data) > limit:
        resp.close()
        raise RegistryError(f"{what}: response exceeds the {limit}-byte limit")
    resp.release_conn()
    return data


def discard(resp: urllib3.BaseHTTPResponse) -> bytes:
    """Read (up to a small limit) and release a response we only need the status of; returns what was read."""
    try:
        return read_body(resp, ERROR_BODY_LIMIT, "error response")
    except RegistryError:
        return b""


class Transport:
    """Requests to one registry. Thread-safe: the pool, the token cache and the scheme are shared."""

    def __init__(self, registry: str, *, tls_verify: bool | None, credentials: tuple[str, str] | None,
                 config: RegistriesConfig | None, user_agent: str, retries: int, timeout: float, backoff: float):
        self.registry = normalize_registry(registry)
        self.host = registry_api_host(self.registry)
        if tls_verify is None:
            insecure = (config if config is not None else load_registries_config()).is_insecure(self.registry)
        else:
            insecure = not tls_verify
        # Insecure: HTTPS without verification first, then plain HTTP (Docker's and Podman's order).
        self.schemes = ("https", "http") if insecure else ("https",)
        self._scheme: str | None = None if insecure else "https"
        self.credentials = credentials
        self.user_agent, self.retries, self.backoff = user_agent, retries, backoff
        if insecure:
            urllib3.disable_warnings(InsecureRequestWarning)  # the user asked for no verification
        tls: dict = {"cert_reqs": "CERT_REQUIRED"}
        if insecure:
            # Our own context: urllib3 would otherwise load the system CA store (~25 ms) for nothing.
            tls = {"cert_reqs": "CERT_NONE", "ssl_context": create_urllib3_context(cert_reqs=ssl.CERT_NONE)}
        self.pool = urllib3.PoolManager(num_pools=8, maxsize=16, block=False, retries=False,
                                        timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout), **tls)
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._bearer: Challenge | None = None
        self._basic: str | None = None

    def close(self) -> None:
        self.pool.clear()

    # -- sending ------------------------------------------------------------------------------

    def _sleep(self, attempt: int, resp: urllib3.BaseHTTPResponse | None) -> None:
        delay = self.backoff * (2 ** attempt)
        retry_after = resp.headers.get("Retry-After", "") if resp is not None else ""
        if retry_after.isdigit():
            delay = min(float(retry_after), MAX_RETRY_AFTER)
        time.sleep(delay)

    def send(self, method: str, urls: list[str], headers: dict[str, str],
             body: bytes | None = None) -> tuple[urllib3.BaseHTTPResponse, str]:
        """Send to the first of `urls` that connects, retrying connection errors and 429/5xx with
        exponential backoff. Returns the response (body not read) and the URL that answered."""
        last_error: BaseException | None = None
        for attempt in range(self.retries + 1):
            for url in urls:
                try:
                    resp = self.pool.urlopen(method, url, headers=headers, body=body, redirect=False,
                                             retries=False, preload_content=False, decode_content=False)
                except (Urllib3Error, OSError) as exc:
                    log.debug("%s %s: %s", method, url, describe(exc))
                    last_error = exc
                    continue
                if resp.status in RETRY_STATUSES and attempt < self.retries:
                    log.debug("%s %s: HTTP %d, retrying", method, url, resp.status)
                    discard(resp)
                    last_error = None
                    self._sleep(attempt, resp)
                    break
                return resp, url
            else:
                if attempt < self.retries:
                    self._sleep(attempt, None)
        host = urlsplit(urls[0]).netloc
        reason = describe(last_error) if last_error else "no answer"
        if isinstance(last_error, urllib3.exceptions.SSLError) and len(urls) == 1:
            reason += " (if this registry speaks plain HTTP, TLS verification must be turned off for it)"
        raise RegistryError(f"cannot reach {host}: {reason}")

    def _send_registry(self, method: str, path: str, headers: dict[str, str],
                       body: bytes | None) -> tuple[urllib3.BaseHTTPResponse, str]:
        scheme = self._scheme
        urls = [f"{s}://{self.host}{path}" for s in ((scheme,) if scheme else self.schemes)]
        resp, url = self.send(method, urls, headers, body)
        if scheme is None:
            self._scheme = urlsplit(url).scheme  # remember what worked for this registry
        return resp, url

    def request(self, method: str, path: str, *, scope: str | None = None, headers: dict[str, str] | None = None,
                body: bytes | None = None, what: str | None = None) -> urllib3.BaseHTTPResponse:
        """Send `method path` (`/v2/…`) with authentication and redirects. The response's status is
        anything but 401 (AuthenticationError) and its body is unread: read it or `discard` it."""
        what = what or self.registry
        for attempt in range(2):
            hdrs = {"User-Agent": self.user_agent, "Accept-Encoding": "identity", **(headers or {})}
            auth = self._authorization(scope)
            if auth:
                hdrs["Authorization"] = auth
            resp, url = self._send_registry(method, path, hdrs, body)
            if resp.status != 401:
                return self._follow_redirects(method, resp, url, hdrs)
            challenges = parse_challenges(resp.headers.getlist("WWW-Authenticate"))
            message = error_message(discard(resp)) or "authentication required"
            if auth is not None and auth == self._basic:
                message += f" (credentials for {self.credentials[0]} rejected)"
            if attempt == 1 or not challenges:
                raise unauthorized(what, message)
            self._answer_challenge(challenges, scope, message, what, sent=auth)
        raise AssertionError("unreachable")

    def _follow_redirects(self, method: str, resp: urllib3.BaseHTTPResponse, url: str,
                          headers: dict[str, str]) -> urllib3.BaseHTTPResponse:
        for _ in range(MAX_REDIRECTS):
            location = resp.headers.get("Location")
            if resp.status not in REDIRECT_STATUSES or not location:
                return resp
            discard(resp)
            target = urljoin(url, location)
            old, new = urlsplit(url), urlsplit(target)
            if new.scheme not in ("http", "https"):
                raise RegistryError(f"{self.registry}: redirect to unsupported URL {target}")
            if (new.netloc, new.scheme) != (old.netloc, old.scheme):
                # blob storage on another host must not see the registry credentials
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if resp.status == 303:
                method = "GET" if method != "HEAD" else method
            resp, url = self.send(method, [target], headers)
        raise RegistryError(f"{self.registry}: too many redirects (last: {url})")

    # -- authentication -----------------------------------------------------------------------

    def _authorization(self, scope: str | None) -> str | None:
        if self._basic:
            return self._basic
        bearer = self._bearer
        if bearer is None:
            return None
        key = scope or ""
        with self._lock:
            cached = self._tokens.get(key)
        if cached and cached[1] > time.monotonic():
            return f"Bearer {cached[0]}"
        return f"Bearer {self._fetch_token(bearer, key, [scope] if scope else [])}"

    def _answer_challenge(self, challenges: list[Challenge], scope: str | None, message: str, what: str,
                          sent: str | None) -> None:
        by_scheme = {c.scheme: c for c in challenges}
        if "bearer" in by_scheme:
            challenge = by_scheme["bearer"]
            if not challenge.params.get("realm"):
                raise RegistryError(f"{self.registry}: Bearer challenge without a realm")
            self._bearer = challenge
            scopes = [scope] if scope else []
            scopes += [s for s in challenge.params.get("scope", "").split() if s not in scopes]
            self._fetch_token(challenge, scope or "", scopes)
        elif "basic" in by_scheme:
            if not self.credentials:
                raise unauthorized(what, f"{message} (no credentials given)")
            if sent and sent == self._basic:
                raise unauthorized(what, message)
            user, password = self.credentials
            self._basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        else:
            raise AuthenticationError(f"{what}: unsupported authentication scheme {challenges[0].scheme!r}")

    def _fetch_token(self, challenge: Challenge, key: str, scopes: list[str]) -> str:
        realm = challenge.params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"{self.registry}: invalid token realm {realm!r}")
        params = [("service", challenge.params["service"])] if challenge.params.get("service") else []
        params += [("scope", s) for s in scopes]
        url = realm + ("&" if "?" in realm else "?") + urlencode(params) if params else realm
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        if self.credentials:
            user, password = self.credentials
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        resp, _ = self.send("GET", [url], headers)
        body = read_body(resp, 1024 * 1024, f"{self.registry}: token service")
        if resp.status in (401, 403):
            reason = error_message(body) or ("invalid username or password" if self.credentials else "authentication required")
            raise unauthorized(self.registry, reason)
        if resp.status != 200:
            raise RegistryError(f"{self.registry}: token service {realm} answered HTTP {resp.status}: {error_message(body)}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            expires_in = doc.get("expires_in") or 60
        except (ValueError, AttributeError):
            raise RegistryError(f"{self.registry}: token service {realm} sent an invalid answer") from None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.registry}: token service {realm} sent no token")
        lifetime = max(float(expires_in), 60.0) if isinstance(expires_in, (int, float)) else 60.0
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + lifetime * 0.9)
        return token
