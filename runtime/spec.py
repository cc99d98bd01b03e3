"""OCI runtime-spec `config.json` for a container: the one description both our own runtime and an
external one (crun/runc, `--runtime`) execute.

Rules follow Docker where the OCI spec leaves them open: the entrypoint/cmd merge, environment merge,
default PATH and HOSTNAME/HOME/TERM; capabilities, masked and read-only paths follow Podman's defaults.
The user namespace is not listed: rootless containers are started inside the per-user namespace holder
(as Podman runs its OCI runtime inside its pause process's namespace), so ids here are container ids.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, field

from pinnace.errors import InvalidArgument
from pinnace.runtime.users import ExecUser

OCI_VERSION = "1.1.0"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

from pinnace.runtime.caps import ALL_CAPS, DEFAULT_CAPS  # noqa: F401 - re-exported for callers

MASKED_PATHS = ("/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/fs/selinux",
                "/sys/dev/block", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


@dataclass(frozen=True)
class ProcessOptions:
    """What `run`/`create` say about the process, before the image's defaults are merged in."""

    command: tuple[str, ...] = ()            # arguments after the image name
    entrypoint: str | None = None            # --entrypoint ("" clears the image's)
    env: tuple[str, ...] = ()                # -e KEY=VALUE, or KEY alone (taken from the host if set)
    workdir: str | None = None               # -w
    tty: bool = False
    hostname: str = ""
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    no_new_privileges: bool = True
    ulimits: tuple[str, ...] = ()            # "nofile=1024:2048"
    init: bool = False                       # --init: a minimal pid 1 reaps orphans and forwards signals
    host_env: dict[str, str] = field(default_factory=dict)


def merge_command(image_config: dict, opts: ProcessOptions) -> list[str]:
    """Docker's rule: --entrypoint replaces the image ENTRYPOINT and drops the image CMD; arguments after
    the image replace CMD; the process is ENTRYPOINT + CMD."""
    cfg = image_config.get("config") or {}
    if opts.entrypoint is not None:
        entrypoint = [opts.entrypoint] if opts.entrypoint else []
        default_cmd: list[str] = []
    else:
        entrypoint = list(cfg.get("Entrypoint") or [])
        default_cmd = list(cfg.get("Cmd") or [])
    argv = entrypoint + (list(opts.command) if opts.command else default_cmd)
    if not argv:
        raise InvalidArgument("no command specified: the image has no ENTRYPOINT or CMD, give one after the image")
    return argv


def merge_env(image_config: dict, opts: ProcessOptions, user: ExecUser) -> list[str]:
    """Image ENV, then -e (later wins, by key); PATH, HOSTNAME, HOME and TERM defaulted as Docker does."""
    env: dict[str, str] = {}
    for item in (image_config.get("config") or {}).get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    for item in opts.env:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable {item!r}")
        if sep:
            env[key] = value
        elif key in opts.host_env:
            env[key] = opts.host_env[key]   # `-e KEY`: the host's value, if it has one
    env.setdefault("PATH", DEFAULT_PATH)
    if opts.hostname:
        env.setdefault("HOSTNAME", opts.hostname)
    env.setdefault("HOME", user.home or "/")
    if opts.tty:
        env.setdefault("TERM", "xterm")
    return [f"{k}={v}" for k, v in env.items()]


def _cap_name(cap: str) -> str:
    name = cap.upper()
    if name == "ALL":
        return name
    name = name if name.startswith("CAP_") else "CAP_" + name
    if name not in ALL_CAPS:
        raise InvalidArgument(f"unknown capability {cap!r}")
    return name


def capabilities(opts: ProcessOptions) -> list[str]:
    """Podman's defaults, then --cap-drop and --cap-add (ALL allowed in either); --privileged: all."""
    if opts.privileged:
        return list(ALL_CAPS)
    drop = {_cap_name(c) for c in opts.cap_drop}
    add = {_cap_name(c) for c in opts.cap_add}
    caps = set() if "ALL" in drop else set(DEFAULT_CAPS) - drop
    caps |= set(ALL_CAPS) if "ALL" in add else add
    return sorted(caps)


_RLIMITS = {"core": "RLIMIT_CORE", "cpu": "RLIMIT_CPU", "data": "RLIMIT_DATA", "fsize": "RLIMIT_FSIZE",
            "locks": "RLIMIT_LOCKS", "memlock": "RLIMIT_MEMLOCK", "msgqueue": "RLIMIT_MSGQUEUE",
            "nice": "RLIMIT_NICE", "nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "rss": "RLIMIT_RSS",
            "rtprio": "RLIMIT_RTPRIO", "rttime": "RLIMIT_RTTIME", "sigpending": "RLIMIT_SIGPENDING",
            "stack": "RLIMIT_STACK", "as": "RLIMIT_AS"}


def _host_hard(name: str) -> int:
    hard = resource.getrlimit(getattr(resource, name))[1]
    return 2**64 - 1 if hard == resource.RLIM_INFINITY else hard


def rlimits(opts: ProcessOptions) -> list[dict]:
    """NOFILE (and NPROC) raised like Podman's defaults but never above the host's hard limit (an
    unprivileged user cannot raise it); --ulimit name=soft[:hard] on top."""
    limits: dict[str, tuple[int, int]] = {}
    for name, want in (("RLIMIT_NOFILE", 1048576), ("RLIMIT_NPROC", 4194304)):
        hard = min(want, _host_hard(name))
        limits[name] = (hard, hard)
    for item in opts.ulimits:
        key, sep, value = item.partition("=")
        if not sep or key not in _RLIMITS:
            raise InvalidArgument(f"invalid --ulimit {item!r} (name=soft[:hard], names: {', '.join(sorted(_RLIMITS))})")
        soft_s, _, hard_s = value.partition(":")
        try:
            soft = 2**64 - 1 if soft_s == "-1" else int(soft_s)
            hard = soft if not hard_s else (2**64 - 1 if hard_s == "-1" else int(hard_s))
        except ValueError:
            raise InvalidArgument(f"invalid --ulimit {item!r}: limits are numbers") from None
        if soft > hard:
            raise InvalidArgument(f"invalid --ulimit {item!r}: soft limit above hard limit")
        name = _RLIMITS[key]
        if hard > _host_hard(name):
            raise InvalidArgument(f"--ulimit {item}: above this user's hard limit ({_host_hard(name)})")
        limits[name] = (soft, hard)
    return [{"type": k, "soft": s, "hard": h} for k, (s, h) in sorted(limits.items())]


def default_mounts(*, own_netns: bool, rootless: bool) -> list[dict]:
    """The kernel filesystems every container gets (before volumes and /etc bind mounts)."""
    devpts = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
    if not rootless:
        devpts.append("gid=5")  # tty group; unmapped in a user namespace, so only as root
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": devpts},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    ]
    if own_netns:
        mounts.append({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                       "options": ["nosuid", "noexec", "nodev", "ro"]})
    else:
        # sysfs can only be mounted by the owner of the network namespace: bind the host's, read-only
        mounts.append({"destination": "/sys", "type": "bind", "source": "/sys",
                       "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    return mounts


def build_spec(*, image_config: dict, opts: ProcessOptions, user: ExecUser, rootfs: str, readonly_rootfs: bool = False,
               own_netns: bool = True, rootless: bool = True, extra_mounts: list[dict] | None = None) -> dict:
    """The complete config.json document."""
    cfg = image_config.get("config") or {}
    caps = capabilities(opts)
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup")]
    if own_netns:
        namespaces.append({"type": "network"})
    return {
        "ociVersion": OCI_VERSION,
        "annotations": {"io.pinnace.init": "true"} if opts.init else {},
        "process": {
            "terminal": opts.tty,
            "user": {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.additional_gids)},
            "args": merge_command(image_config, opts),
            "env": merge_env(image_config, opts, user),
            "cwd": opts.workdir or cfg.get("WorkingDir") or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": rlimits(opts),
            "noNewPrivileges": opts.no_new_privileges,
        },
        "root": {"path": rootfs, "readonly": readonly_rootfs},
        "hostname": opts.hostname,
        "mounts": default_mounts(own_netns=own_netns, rootless=rootless) + list(extra_mounts or []),
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": [] if opts.privileged else list(MASKED_PATHS),
            "readonlyPaths": [] if opts.privileged else list(READONLY_PATHS),
        },
    }
