"""The engine contract for containers: what `create`/`run` take, what `ps` lists, what `exec` runs.

Part of the one engine contract (engine/contract.py re-exports it), in a module of its own so that the
`run` path does not create the image verbs' records.
"""
from __future__ import annotations

from dataclasses import dataclass

from pinnace.engine.container_list import ContainerSummary  # noqa: F401 - `ps` rows, a light class there


@dataclass(frozen=True)
class ContainerCreateOptions:
    """Everything `create`/`run` say about a container (Docker's flags; empty = the image's default)."""

    image: str
    command: tuple[str, ...] = ()
    name: str | None = None
    entrypoint: str | None = None
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    stdin: bool = False                  # -i: keep stdin open
    detach: bool = False
    autoremove: bool = False             # --rm
    hostname: str | None = None
    add_hosts: tuple[str, ...] = ()      # "name:ip"
    dns: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    restart: str = "no"
    init: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    security_opt: tuple[str, ...] = ()
    userns: str | None = None            # "keep-id" (rootless) or "host"
    memory: str | None = None
    memory_swap: str | None = None
    cpus: str | None = None
    cpu_shares: int | None = None
    pids_limit: int | None = None
    ulimits: tuple[str, ...] = ()
    pull: str = "missing"                # missing | always | never
    platform: str | None = None
    network: str = ""                    # "" (user-mode), host, none, container:NAME, a user network
    publish: tuple[str, ...] = ()        # -p specs
    publish_all: bool = False            # -P: every exposed port on a random host port
    expose: tuple[str, ...] = ()         # --expose (more ports for -P)
    network_aliases: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    mounts: tuple[str, ...] = ()
    tmpfs: tuple[str, ...] = ()
    read_only: bool = False
    stop_signal: str | None = None
    stop_timeout: int | None = None
    health_cmd: str | None = None
    health_interval: str | None = None
    health_timeout: str | None = None
    health_retries: int | None = None
    health_start_period: str | None = None
    no_healthcheck: bool = False
    log_max_size: str | None = None
    runtime: str | None = None           # path of an external OCI runtime (crun/runc)
    sdnotify: str | None = None          # systemd readiness: conmon | container | ignore (issue 7)
    host_env: tuple[tuple[str, str], ...] = ()   # the caller's environment, for `-e KEY` without a value


@dataclass(frozen=True)
class ExecOptions:
    container: str
    command: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    detach: bool = False
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    user: str | None = None
    workdir: str | None = None
    privileged: bool = False
