"""Registry credentials in Podman's auth.json and Docker's config.json format.

Both files hold `{"auths": {KEY: {"auth": base64("user:password")}}}`. KEY is a registry host
(`quay.io`), a host with a repository prefix (`quay.io/team`, Podman's per-namespace credentials), or
a URL (`https://index.docker.io/v1/`, `https://host/`, as Docker writes them). Lookups go from the most
specific prefix of the name to the bare host. Docker credential helpers (`credsStore`, `credHelpers`)
are not run.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from pathlib import Path

from pinnace.errors import InvalidArgument
from pinnace.registry.reference import normalize_registry


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def auth_file_path() -> Path:
    """Where `login` writes: `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`,
    else `$XDG_CONFIG_HOME/containers/auth.json` (default `~/.config`)."""
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    return _config_home() / "containers" / "auth.json"


def _search_paths() -> list[Path]:
    docker_dir = Path(os.environ["DOCKER_CONFIG"]) if os.environ.get("DOCKER_CONFIG") else Path.home() / ".docker"
    paths = [auth_file_path(), _config_home() / "containers" / "auth.json", docker_dir / "config.json"]
    return list(dict.fromkeys(paths))  # the first two may be the same file


def _normalize_key(key: str) -> str:
    """A stored key as `host[/path]`: URLs lose scheme and path (Docker keys), Docker Hub → docker.io."""
    stripped = key.removeprefix("http://").removeprefix("https://")
    if stripped != key:  # a URL: Docker stores `https://host/v1/`-style keys, only the host matters
        stripped = stripped.split("/", 1)[0]
    stripped = stripped.rstrip("/")
    host, sep, rest = stripped.partition("/")
    return normalize_registry(host) + sep + rest


def _read(path: Path) -> dict | None:
    """The parsed file, None when it does not exist; InvalidArgument naming it when it is unusable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read credentials file {path}: {exc}") from None
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument(f"malformed credentials file {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise InvalidArgument(f"malformed credentials file {path}: expected an object with an 'auths' object")
    return doc


def _decode(entry: object, key: str, path: Path) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"malformed credentials file {path}: entry {key!r} is not an object")
    auth = entry.get("auth")
    if auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, ValueError, TypeError):
            raise InvalidArgument(f"malformed credentials file {path}: entry {key!r} has an invalid 'auth' value") from None
        if not sep or not user:
            raise InvalidArgument(f"malformed credentials file {path}: entry {key!r} is not base64 of user:password")
        return user, password
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str) and entry["username"]:
        return entry["username"], entry["password"]
    return None  # e.g. `{}` written by Docker when a credential helper holds the secret


def _candidates(name: str) -> list[str]:
    """`host/a/b` → [`host/a/b`, `host/a`, `host`]: Podman's most-specific-first lookup."""
    parts = _normalize_key(name).split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]


def load_credentials(registry: str) -> tuple[str, str] | None:
    """(username, password) for `registry` (a host, or `host/repository` for namespaced entries), or None.

    Looks in auth_file_path(), then `$XDG_CONFIG_HOME/containers/auth.json`, then Docker's
    `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`); the first match wins.
    """
    wanted = _candidates(registry)
    for path in _search_paths():
        doc = _read(path)
        if not doc:
            continue
        entries: dict[str, tuple[str, object]] = {}
        for key, entry in doc.get("auths", {}).items():
            entries.setdefault(_normalize_key(key), (key, entry))
        for candidate in wanted:
            if candidate in entries:
                key, entry = entries[candidate]
                creds = _decode(entry, key, path)
                if creds is not None:
                    return creds
    return None


def _write_atomic(path: Path, doc: dict) -> None:
    """temp file + fsync + rename, mode 0600, parent directories created 0700."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                json.dump(doc, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise InvalidArgument(f"cannot write credentials file {path}: {exc}") from None


def save_credentials(registry: str, username: str, password: str, path: Path | None = None) -> Path:
    """Store credentials for `registry` (or `host/namespace`), keeping every other entry; returns the file."""
    path = path or auth_file_path()
    key = _normalize_key(registry)
    if not key or not username:
        raise InvalidArgument("a registry and a username are required to store credentials")
    doc = _read(path) or {}
    auths = {k: v for k, v in doc.get("auths", {}).items() if _normalize_key(k) != key}
    auths[key] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    doc["auths"] = auths
    _write_atomic(path, doc)
    return path


def remove_credentials(registry: str, path: Path | None = None) -> bool:
    """Remove the entries for `registry` (every spelling of it); True when something was removed."""
    path = path or auth_file_path()
    doc = _read(path)
    if not doc or not doc.get("auths"):
        return False
    key = _normalize_key(registry)
    kept = {k: v for k, v in doc["auths"].items() if _normalize_key(k) != key}
    if len(kept) == len(doc["auths"]):
        return False
    doc["auths"] = kept
    _write_atomic(path, doc)
    return True


def remove_all_credentials(path: Path | None = None) -> int:
    """Empty `auths` (other keys of the file are kept); returns how many entries were removed."""
    path = path or auth_file_path()
    doc = _read(path)
    if not doc or not doc.get("auths"):
        return 0
    count = len(doc["auths"])
    doc["auths"] = {}
    _write_atomic(path, doc)
    return count
