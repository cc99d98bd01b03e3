"""Registry settings from Podman's `registries.conf` (TOML, version 2; the version 1
`[registries.insecure]`/`[registries.block]`/`[registries.search]` tables are read too).

File: `$CONTAINERS_REGISTRIES_CONF`, else `$XDG_CONFIG_HOME/containers/registries.conf` (default
`~/.config`), else `/etc/containers/registries.conf`; the first that exists is used alone, as in Podman.
Drop-in directories (`registries.conf.d`) and mirrors are not read.

Insecure registries (plain HTTP or unverified TLS allowed) are those marked `insecure = true` and,
like Docker (not Podman), loopback registries by default: `localhost`, `127.0.0.0/8` and `[::1]`, on
any port. An explicit `insecure = false` entry for a loopback registry turns that default off.
"""
from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pinnace.errors import InvalidArgument
from pinnace.registry.reference import normalize_registry

SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")


@dataclass(frozen=True)
class RegistryEntry:
    """One `[[registry]]` table. `prefix` defaults to `location`; `*.example.com` wildcards allowed."""

    prefix: str
    location: str
    insecure: bool | None = None  # None: not said (loopback default applies)
    blocked: bool = False


@dataclass(frozen=True)
class RegistriesConfig:
    path: Path | None = None
    registries: tuple[RegistryEntry, ...] = ()
    unqualified_search_registries: tuple[str, ...] = ()

    def _entry(self, registry: str) -> RegistryEntry | None:
        """The entry for this registry host: an exact host entry first, then the longest wildcard
        (`*.example.com`), then a namespaced one (`host/team`; the client works per host)."""
        registry = normalize_registry(registry)
        ranked = []
        for entry in self.registries:
            host, _, path = entry.prefix.partition("/")
            if _host_matches(host, registry):
                rank = 0 if path else (1 if host.startswith("*.") else 2)
                ranked.append((rank, len(host), entry))
        return max(ranked, key=lambda r: r[:2])[2] if ranked else None

    def is_insecure(self, registry: str) -> bool:
        """True when plain HTTP / unverified TLS may be used for `registry` (`host[:port]`)."""
        entry = self._entry(registry)
        if entry is not None and entry.insecure is not None:
            return entry.insecure
        return is_loopback(registry)

    def is_blocked(self, registry: str) -> bool:
        entry = self._entry(registry)
        return entry is not None and entry.blocked


def _host_matches(host: str, registry: str) -> bool:
    host = normalize_registry(host)
    if host.startswith("*."):
        return registry.split(":", 1)[0].endswith(host[1:])
    return host == registry


def is_loopback(registry: str) -> bool:
    """`localhost`, `127.x.y.z` or `[::1]`, with or without a port."""
    if registry.startswith("["):
        host = registry[1:].split("]", 1)[0]
    else:
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def registries_conf_path() -> Path | None:
    """The registries.conf in effect, or None when there is none."""
    if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
        return Path(os.environ["CONTAINERS_REGISTRIES_CONF"])
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for path in (config_home / "containers" / "registries.conf", SYSTEM_REGISTRIES_CONF):
        if path.exists():
            return path
    return None


def _strings(value: object, what: str, path: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"invalid registries configuration {path}: {what} must be a list of strings")
    return tuple(value)


def _entries(doc: dict, path: Path) -> list[RegistryEntry]:
    tables = doc.get("registry", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise InvalidArgument(f"invalid registries configuration {path}: [[registry]] must be an array of tables")
    entries = []
    for table in tables:
        location, prefix = table.get("location", ""), table.get("prefix", "")
        insecure, blocked = table.get("insecure"), table.get("blocked", False)
        if not isinstance(location, str) or not isinstance(prefix, str) or not (location or prefix):
            raise InvalidArgument(f"invalid registries configuration {path}: [[registry]] needs a location or prefix")
        if (insecure is not None and not isinstance(insecure, bool)) or not isinstance(blocked, bool):
            raise InvalidArgument(f"invalid registries configuration {path}: insecure/blocked of {location or prefix!r} must be true or false")
        entries.append(RegistryEntry(prefix or location, location or prefix, insecure, blocked))
    # version 1 format
    v1 = doc.get("registries", {})
    if not isinstance(v1, dict):
        raise InvalidArgument(f"invalid registries configuration {path}: [registries] must be a table")
    for table_name, flag in (("insecure", "insecure"), ("block", "blocked")):
        table = v1.get(table_name, {})
        hosts = _strings(table.get("registries") if isinstance(table, dict) else table, f"registries.{table_name}", path)
        for host in hosts:
            entries.append(RegistryEntry(host, host, True if flag == "insecure" else None, flag == "blocked"))
    return entries


def load_registries_config(path: Path | None = None) -> RegistriesConfig:
    """Read registries.conf (see the module docstring for which file); an empty config when there is none.

    Raises InvalidArgument naming the file when it is unreadable, not TOML, or has wrong types.
    """
    path = path or registries_conf_path()
    if path is None:
        return RegistriesConfig()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
            raise InvalidArgument(f"registries configuration {path} (from $CONTAINERS_REGISTRIES_CONF) does not exist") from None
        return RegistriesConfig()
    except OSError as exc:
        raise InvalidArgument(f"cannot read registries configuration {path}: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"malformed registries configuration {path}: {exc}") from None
    search = doc.get("unqualified-search-registries")
    v1_search = doc.get("registries", {}).get("search", {}) if isinstance(doc.get("registries"), dict) else {}
    if search is None and isinstance(v1_search, dict):
        search = v1_search.get("registries")
    return RegistriesConfig(path, tuple(_entries(doc, path)), _strings(search, "unqualified-search-registries", path))
