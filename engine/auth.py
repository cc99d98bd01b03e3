"""`login` / `logout`: check credentials against the registry, then store them like Podman does."""
from __future__ import annotations

from pathlib import Path

from pinnace.engine.contract import LoginOptions
from pinnace.errors import InvalidArgument


def normalize_registry(text: str) -> str:
    host = text.strip()
    for scheme in ("https://", "http://"):
        host = host.removeprefix(scheme)
    host = host.split("/", 1)[0]
    if not host:
        raise InvalidArgument(f"invalid registry {text!r}")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = "docker.io"
    return host


def login(opts: LoginOptions) -> Path:
    from pinnace.registry.auth import save_credentials
    from pinnace.registry.client import RegistryClient
    from pinnace.registry.config import load_registries_config
    registry = normalize_registry(opts.registry)
    if not opts.username or not opts.password:
        raise InvalidArgument("login needs a username and a password")
    client = RegistryClient(registry, tls_verify=opts.tls_verify, credentials=(opts.username, opts.password),
                            config=load_registries_config())
    client.ping()
    return save_credentials(registry, opts.username, opts.password, Path(opts.authfile) if opts.authfile else None)


def logout(registry: str | None, *, all: bool = False, authfile: str | None = None) -> bool:
    from pinnace.registry.auth import remove_all_credentials, remove_credentials
    path = Path(authfile) if authfile else None
    if all:
        remove_all_credentials(path)
        return True
    if not registry:
        raise InvalidArgument("logout needs a registry (or --all)")
    return remove_credentials(normalize_registry(registry), path)
