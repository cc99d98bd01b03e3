"""Quadlet files → systemd services: `~/.config/containers/systemd/*.container|.volume|.network` in
Podman's documented key format (podman-systemd.unit(5)), so that users' existing Quadlet files run with
pinnace. Entry point of the systemd generator role (`pinnace __systemd-generator OUTDIR [EARLY LATE]`).

`name.container` → `name.service` (`run` with the keys as flags; container `systemd-%N` unless
ContainerName=), `name.volume` → `name-volume.service` (`volume create --ignore`), `name.network` →
`name-network.service` (`network create --ignore`). [Unit], [Service], [Install] and other sections pass
through; [Install] is applied as `systemctl enable` would (symlinks in OUTDIR), since generated units
cannot be enabled. A key pinnace does not know, or a Podman key it cannot honour, is an error naming the
file and line: the file is skipped, the others are generated.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from pinnace.engine.unit_syntax import Entry, format_command, parse_unit, split_words
from pinnace.errors import InvalidArgument

KINDS = {".container": "", ".volume": "-volume", ".network": "-network"}
SECTION = {".container": "Container", ".volume": "Volume", ".network": "Network"}
DEPENDENCY_KEYS = ("Wants", "Requires", "Requisite", "BindsTo", "PartOf", "Upholds", "Conflicts", "Before", "After")
START_TIMEOUT = 300   # a pull may come first (systemd's default is 90 s)

# key → (how the value is read, `run` flag). value: the line, literally; words: a command line;
# env: Environment= syntax; bool: systemd's booleans; special: see _container_args
CONTAINER_KEYS = {
    "AddCapability": ("words", "--cap-add"), "AddHost": ("value", "--add-host"),
    "AutoUpdate": ("special", ""), "ContainerName": ("special", ""), "DNS": ("value", "--dns"),
    "DropCapability": ("words", "--cap-drop"), "Entrypoint": ("value", "--entrypoint"),
    "Environment": ("env", "--env"), "EnvironmentFile": ("special", ""), "Exec": ("special", ""),
    "ExposeHostPort": ("value", "--expose"), "GlobalArgs": ("special", ""), "Group": ("special", ""),
    "HealthCmd": ("value", "--health-cmd"), "HealthInterval": ("value", "--health-interval"),
    "HealthRetries": ("value", "--health-retries"), "HealthStartPeriod": ("value", "--health-start-period"),
    "HealthTimeout": ("value", "--health-timeout"), "HostName": ("value", "--hostname"),
    "Image": ("special", ""), "Label": ("env", "--label"), "LogDriver": ("value", "--log-driver"),
    "LogOpt": ("value", "--log-opt"), "Memory": ("value", "--memory"), "Mount": ("special", ""),
    "Network": ("special", ""), "NetworkAlias": ("value", "--network-alias"),
    "NoNewPrivileges": ("bool", "--security-opt=no-new-privileges"), "Notify": ("special", ""),
    "PidsLimit": ("value", "--pids-limit"), "PodmanArgs": ("special", ""), "PublishPort": ("value", "--publish"),
    "Pull": ("value", "--pull"), "ReadOnly": ("bool", "--read-only"), "RunInit": ("bool", "--init"),
    "SeccompProfile": ("special", ""), "SecurityLabelDisable": ("bool", "--security-opt=label=disable"),
    "StopSignal": ("value", "--stop-signal"), "StopTimeout": ("special", ""), "Tmpfs": ("value", "--tmpfs"),
    "Ulimit": ("value", "--ulimit"), "User": ("special", ""), "UserNS": ("value", "--userns"),
    "Volume": ("special", ""), "WorkingDir": ("value", "--workdir"),
}
VOLUME_KEYS = {"VolumeName": ("special", ""), "Label": ("env", "--label"), "Driver": ("value", "--driver"),
               "PodmanArgs": ("special", ""), "GlobalArgs": ("special", "")}
NETWORK_KEYS = {"NetworkName": ("special", ""), "Label": ("env", "--label"), "Subnet": ("value", "--subnet"),
                "Gateway": ("value", "--gateway"), "Internal": ("bool", "--internal"), "Driver": ("value", "--driver"),
                "IPv6": ("special", ""), "NetworkDeleteOnStop": ("special", ""), "PodmanArgs": ("special", ""),
                "GlobalArgs": ("special", "")}
KEYS = {".container": CONTAINER_KEYS, ".volume": VOLUME_KEYS, ".network": NETWORK_KEYS}
# Podman keys pinnace cannot honour: named as such rather than as unknown
PODMAN_ONLY = {
    ".container": "AddDevice Annotation CgroupsMode ContainersConfModule DNSOption DNSSearch EnvironmentHost GIDMap "
                  "GroupAdd HealthLogDestination HealthMaxLogCount HealthMaxLogSize HealthOnFailure HealthStartupCmd "
                  "HealthStartupInterval HealthStartupRetries HealthStartupSuccess HealthStartupTimeout IP IP6 Mask "
                  "Pod ReadOnlyTmpfs ReloadCmd ReloadSignal Retry RetryDelay Rootfs Secret SecurityLabelFileType "
                  "SecurityLabelLevel SecurityLabelNested SecurityLabelType ShmSize StartWithPod SubGIDMap SubUIDMap "
                  "Sysctl Timezone UIDMap Unmask",
    ".volume": "ContainersConfModule Copy Device Group Image Options Type User",
    ".network": "ContainersConfModule DisableDNS DNS IPAMDriver IPRange InterfaceName Options",
}
TRUE, FALSE = ("1", "yes", "true", "on"), ("0", "no", "false", "off")


@dataclass(frozen=True)
class Source:
    path: str
    entries: tuple[Entry, ...]

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def kind(self) -> str:
        return os.path.splitext(self.path)[1]

    @property
    def service(self) -> str:
        return f"{self.stem}{KINDS[self.kind]}.service"

    def values(self, section: str, key: str) -> list[Entry]:
        return [e for e in self.entries if e.section == section and e.key == key]

    def last(self, section: str, key: str, default: str | None = None) -> str | None:
        found = self.values(section, key)
        return found[-1].value if found else default


@dataclass(frozen=True)
class GeneratedUnit:
    name: str
    text: str
    links: tuple[tuple[str, str], ...] = ()   # (path below OUTDIR, symlink target)


# -- reading ------------------------------------------------------------------------------------------
def read_source(path: str) -> Source:
    """A Quadlet file with its drop-ins (`name.container.d/*.conf`, in name order) appended."""
    try:
        with open(path, encoding="utf-8") as f:
            entries = parse_unit(f.read(), path)
        dropin = path + ".d"
        for name in sorted(os.listdir(dropin)) if os.path.isdir(dropin) else ():
            if name.endswith(".conf"):
                with open(os.path.join(dropin, name), encoding="utf-8") as f:
                    entries += parse_unit(f.read(), os.path.join(dropin, name))
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{path}: not UTF-8 text") from None
    source = Source(path, tuple(entries))
    _check_keys(source)
    return source


def _check_keys(source: Source) -> None:
    section, known = SECTION[source.kind], KEYS[source.kind]
    if not any(e.section == section for e in source.entries):
        raise InvalidArgument(f"{source.path}: no [{section}] section")
    podman_only = set(PODMAN_ONLY[source.kind].split())
    for e in source.entries:
        if e.section == "Quadlet" and e.key != "DefaultDependencies":
            raise InvalidArgument(f"{_where(source, e)}: unknown key {e.key}= in [Quadlet]")
        if e.section != section or e.key in known:
            continue
        if e.key in podman_only:
            raise InvalidArgument(f"{_where(source, e)}: {e.key}= (a Podman Quadlet key) is not supported by pinnace")
        raise InvalidArgument(f"{_where(source, e)}: unknown key {e.key}= in [{section}]")


def _where(source: Source, e: Entry) -> str:
    dropin = source.path + ".d"
    return f"{source.path}:{e.line}" if not os.path.isdir(dropin) else f"{source.path} (or a drop-in):{e.line}"


def _bool(source: Source, e: Entry) -> bool:
    if e.value.lower() in TRUE:
        return True
    if e.value.lower() in FALSE:
        return False
    raise InvalidArgument(f"{_where(source, e)}: {e.key}={e.value}: not a boolean (true or false)")


def _words(source: Source, e: Entry) -> list[str]:
    """A command-line key's words, kept as written: systemd expands their % and $ in ExecStart."""
    try:
        return split_words(e.value)
    except ValueError:
        raise InvalidArgument(f"{_where(source, e)}: {e.key}=: unbalanced quoting") from None


# -- translating ------------------------------------------------------------------------------------------
def _lit(value: str) -> str:
    """A literal value as one ExecStart word: $ stays literal, % stays a specifier (written by the user)."""
    return value.replace("$", "$$")


def _exec(argv: list[str], head: int, tail: int | None = None) -> str:
    """An Exec*= line of words already in ExecStart form (see _lit and _words)."""
    return format_command(argv, head, tail, percent=False, dollar=False)


def _relative(source: Source, path: str) -> str:
    return os.path.normpath(os.path.join(os.path.dirname(source.path), path)) if path.startswith(".") else path


def _resource_name(others: dict[str, Source], source: Source, e: Entry, ref: str, deps: list[str]) -> str:
    """The pinnace name of what `ref` (x.volume, x.network, x.container) creates; its service becomes a
    dependency."""
    other = others.get(ref)
    if other is None:
        raise InvalidArgument(f"{_where(source, e)}: {e.key}= refers to {ref}, which does not exist")
    deps.append(other.service)
    key = {".volume": "VolumeName", ".network": "NetworkName", ".container": "ContainerName"}[other.kind]
    section = SECTION[other.kind]
    return other.last(section, key) or f"systemd-{other.stem}"


def _flag_args(source: Source, table: dict, section: str) -> list[str]:
    args: list[str] = []
    for e in source.entries:
        if e.section != section:
            continue
        how, flag = table[e.key]
        if how == "value":
            args.append(f"{flag}={_lit(e.value)}")
        elif how == "words":
            args += [f"{flag}={_lit(w)}" for w in _words(source, e)]
        elif how == "env":
            args += [f"{flag}={_lit(w)}" for w in _words(source, e)]
        elif how == "bool" and _bool(source, e):
            args.append(flag)
    return args


def _container_args(source: Source, others: dict[str, Source], deps: list[str]) -> tuple[list[str], dict]:
    """`run` flags of a .container file, and {image, name, command, global, stop_timeout}."""
    args = _flag_args(source, CONTAINER_KEYS, "Container")
    # a template's instances need names of their own, and @ is not allowed in a container name
    info = {"image": None, "name": "systemd-%p_%i" if "@" in source.stem else "systemd-%N", "command": [], "global": [], "podman_args": [], "stop_timeout": "10"}
    user = group = None
    notify = "conmon"
    for e in [x for x in source.entries if x.section == "Container"]:
        k, v = e.key, e.value
        if k == "Image":
            info["image"] = _lit(v)
        elif k == "ContainerName":
            info["name"] = _lit(v)
        elif k == "Exec":
            info["command"] = _words(source, e)
        elif k == "PodmanArgs":  # last before the image, as with Podman: they override the keys
            info["podman_args"] += _words(source, e)
        elif k == "GlobalArgs":
            info["global"] += _words(source, e)
        elif k == "AutoUpdate":
            args.append(f"--label=io.containers.autoupdate={_lit(v)}")
        elif k == "EnvironmentFile":
            args.append(f"--env-file={_lit(_relative(source, v))}")
        elif k == "User":
            user = v
        elif k == "Group":
            group = v
        elif k == "Notify":
            if v.lower() == "healthy":
                raise InvalidArgument(f"{_where(source, e)}: Notify=healthy is not supported by pinnace")
            notify = "container" if _bool(source, e) else "conmon"
        elif k == "StopTimeout":
            if not v.isdigit():
                raise InvalidArgument(f"{_where(source, e)}: StopTimeout={v}: a number of seconds")
            info["stop_timeout"] = v
            args.append(f"--stop-timeout={v}")
        elif k == "SeccompProfile":
            if v != "unconfined":
                raise InvalidArgument(f"{_where(source, e)}: SeccompProfile={v}: pinnace supports only unconfined")
            args.append("--security-opt=seccomp=unconfined")
        elif k == "Volume":
            src, sep, rest = v.partition(":")
            if sep and src.endswith(".volume"):
                src = _resource_name(others, source, e, src, deps)
            elif sep:
                src = _relative(source, src)
            args.append(f"--volume={_lit(src + sep + rest)}")
        elif k == "Mount":
            fields = v.split(",")
            for i, f in enumerate(fields):
                name, eq, value = f.partition("=")
                if eq and name in ("source", "src") and value.endswith(".volume"):
                    fields[i] = f"{name}={_resource_name(others, source, e, value, deps)}"
            args.append(f"--mount={_lit(','.join(fields))}")
        elif k == "Network":
            if v.endswith(".network"):
                v = _resource_name(others, source, e, v, deps)
            elif v.endswith(".container"):
                v = "container:" + _resource_name(others, source, e, v, deps)
            args.append(f"--network={_lit(v)}")
    if info["image"] is None:
        raise InvalidArgument(f"{source.path}: [Container] has no Image=")
    if group is not None and user is None:
        raise InvalidArgument(f"{source.path}: Group= needs User=")
    if user is not None:
        args.append(f"--user={_lit(user + (':' + group if group is not None else ''))}")
    return [f"--sdnotify={notify}", *args, *info["podman_args"]], info


def _unit_section(source: Source, deps: list[str], others: dict[str, Source], rootless: bool) -> list[str]:
    lines = ["[Unit]"]
    for e in source.entries:
        if e.section != "Unit":
            continue
        value = e.value
        if e.key in DEPENDENCY_KEYS:
            value = " ".join(others[w].service if w in others else w for w in value.split())
        lines.append(f"{e.key}={value}")
    lines.append(f"SourcePath={source.path}")
    default_deps = source.last("Quadlet", "DefaultDependencies", "true").lower() not in FALSE
    if default_deps and not rootless:  # a user manager has no network-online.target to wait for
        lines += ["Wants=network-online.target", "After=network-online.target"]
    for dep in dict.fromkeys(deps):
        lines += [f"Requires={dep}", f"After={dep}"]
    return lines


def _passthrough(source: Source, skip: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in source.entries:
        if e.section not in skip:
            out.setdefault(e.section, []).append(f"{e.key}={e.value}")
    return out


def translate(source: Source, others: dict[str, Source], executable: str, *, rootless: bool) -> GeneratedUnit:
    """The service of one Quadlet file. `others`: every Quadlet file by file name (for x.volume refs)."""
    exe = executable.replace("%", "%%").replace("$", "$$")
    deps: list[str] = []
    section = SECTION[source.kind]
    service: list[str] = ["Environment=PINNACE_SYSTEMD_UNIT=%n", "SyslogIdentifier=%N"]
    if source.kind == ".container":
        args, info = _container_args(source, others, deps)
        argv = [exe, *info["global"], "run", "--rm", "-d", "--replace", f"--name={info['name']}", *args,
                info["image"], *info["command"]]
        stop = [exe, *info["global"], "stop", "--ignore", "-t", info["stop_timeout"], info["name"]]
        remove = [exe, *info["global"], "rm", "-f", "--ignore", "-t", info["stop_timeout"], info["name"]]
        service += ["Type=notify", "NotifyAccess=all", "KillMode=mixed", f"TimeoutStartSec={START_TIMEOUT}",
                    f"ExecStart={_exec(argv, len(info['global']) + 2, len(argv) - 1 - len(info['command']))}",
                    f"ExecStop={_exec(stop, len(info['global']) + 2)}",
                    f"ExecStopPost=-{_exec(remove, len(info['global']) + 2)}"]
    else:
        what = "volume" if source.kind == ".volume" else "network"
        name_key = "VolumeName" if what == "volume" else "NetworkName"
        name = _lit(source.last(section, name_key) or f"systemd-{source.stem}")
        glob: list[str] = []
        extra: list[str] = []
        for e in source.values(section, "GlobalArgs"):
            glob += _words(source, e)
        for e in source.values(section, "PodmanArgs"):
            extra += _words(source, e)
        for key in ("Subnet", "Gateway"):
            found = source.values(section, key)
            if what == "network" and len(found) > 1:
                raise InvalidArgument(f"{_where(source, found[1])}: pinnace networks have one {key}=")
        for e in source.values(section, "IPv6"):
            if _bool(source, e):
                raise InvalidArgument(f"{_where(source, e)}: IPv6=true is not supported by pinnace")
        argv = [exe, *glob, what, "create", "--ignore", *_flag_args(source, KEYS[source.kind], section), *extra, name]
        service += ["Type=oneshot", "RemainAfterExit=yes",
                    f"ExecStart={_exec(argv, len(glob) + 3, len(argv) - 1)}"]
        delete = [e for e in source.values(section, "NetworkDeleteOnStop") if _bool(source, e)]
        if delete:
            service.append(f"ExecStopPost={_exec([exe, *glob, 'network', 'rm', name], len(glob) + 3)}")
    unit = _unit_section(source, deps, others, rootless)
    rest = _passthrough(source, (section, "Unit", "Quadlet"))
    lines = [f"# Automatically generated by pinnace from {source.path}", "# (edit that file, then run "
             f"`systemctl {'--user ' if rootless else ''}daemon-reload`)", *unit, "", "[Service]", *service,
             *rest.pop("Service", [])]
    for name, body in rest.items():
        lines += ["", f"[{name}]", *body]
    return GeneratedUnit(source.service, "\n".join(lines) + "\n", _install_links(source))


def _install_links(source: Source) -> tuple[tuple[str, str], ...]:
    """What `systemctl enable` would create for [Install]: target.wants/unit symlinks and aliases."""
    service = source.service
    if "@." in service:
        instance = source.last("Install", "DefaultInstance")
        if not instance:
            return ()
        service = service.replace("@.", f"@{instance}.")
    links = []
    for key, suffix in (("WantedBy", ".wants"), ("RequiredBy", ".requires"), ("UpheldBy", ".upholds")):
        for e in source.values("Install", key):
            links += [(os.path.join(target + suffix, service), os.path.join("..", source.service))
                      for target in e.value.split()]
    for e in source.values("Install", "Alias"):
        links += [(alias, source.service) for alias in e.value.split()]
    return tuple(links)
