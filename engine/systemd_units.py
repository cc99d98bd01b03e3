"""systemd unit files for containers: `generate systemd` (Podman 4's units as the model), the
`pinnace-restart.service` user unit, and `generate quadlet` (a Quadlet `.container` file).

Pure functions over `ContainerFacts` (what `inspect` and the container's record say), so the unit texts
are tested against golden files; `load` and `pinnace_executable` are the two that look at the machine.

What the units rely on (issue 7): the container's supervisor is the service's main process. It sends
READY=1 and MAINPID=<its pid> over $NOTIFY_SOCKET once the container runs (`run --sdnotify=conmon`,
runtime/sdnotify.py), so `Type=notify` + `NotifyAccess=all`; ExecStop stops the container (its stop
signal, then SIGKILL after the timeout) and waits for the supervisor's cleanup, ExecStopPost removes what
`--new` created. KillMode=mixed: if ExecStop times out, SIGTERM goes to the supervisor alone and SIGKILL to
the rest (Quadlet's choice) rather than a SIGTERM to every process of the unit at once.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from pinnace.engine.unit_syntax import format_command, quote_word
from pinnace.errors import InvalidArgument, PinnaceError

SYSTEMD_RESTART = ("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always")
STOP_GRACE = 60          # TimeoutStopSec = this + the stop timeout (Podman's rule)
PULL_TIMEOUT = 300       # TimeoutStartSec of units that create the container: a pull may come first


@dataclass(frozen=True)
class ContainerFacts:
    """What a unit needs to know of a container (from `inspect` and the record's Options)."""
    id: str
    name: str
    image: str                                  # the canonical name it was created from
    command: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)  # asdict(ContainerCreateOptions) as recorded
    env: tuple[str, ...] = ()                    # the process's environment (resolves `-e KEY`)
    mounts: tuple[tuple[str, str], ...] = ()     # (destination, host source) of binds and volumes
    root: str = ""
    runroot: str = ""


@dataclass(frozen=True)
class UnitOptions:
    """`generate systemd` flags."""
    executable: str
    use_name: bool = False
    new: bool = False
    restart_policy: str | None = None
    restart_sec: int | None = None
    stop_timeout: int | None = None
    start_timeout: int | None = None
    container_prefix: str = "container"
    separator: str = "-"
    wants: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    root_args: tuple[str, ...] = ()              # --root/--runroot when the store is not the default
    no_header: bool = False
    version: str = ""


@dataclass(frozen=True)
class Unit:
    name: str
    text: str
    warnings: tuple[str, ...] = ()


# -- the container's original options as `run` flags ------------------------------------------------
_BOOL = (("tty", "--tty"), ("stdin", "--interactive"), ("autoremove", "--rm"), ("init", "--init"),
         ("privileged", "--privileged"), ("publish_all", "--publish-all"), ("read_only", "--read-only"),
         ("no_healthcheck", "--no-healthcheck"))
_VALUE = (("entrypoint", "--entrypoint"), ("workdir", "--workdir"), ("user", "--user"),
          ("hostname", "--hostname"), ("userns", "--userns"), ("memory", "--memory"),
          ("memory_swap", "--memory-swap"), ("cpus", "--cpus"), ("cpu_shares", "--cpu-shares"),
          ("pids_limit", "--pids-limit"), ("platform", "--platform"), ("network", "--network"),
          ("stop_signal", "--stop-signal"), ("stop_timeout", "--stop-timeout"), ("health_cmd", "--health-cmd"),
          ("health_interval", "--health-interval"), ("health_timeout", "--health-timeout"),
          ("health_retries", "--health-retries"), ("health_start_period", "--health-start-period"),
          ("runtime", "--runtime"))
_LIST = (("env", "--env"), ("env_files", "--env-file"), ("add_hosts", "--add-host"), ("dns", "--dns"),
         ("labels", "--label"), ("cap_add", "--cap-add"), ("cap_drop", "--cap-drop"),
         ("security_opt", "--security-opt"), ("ulimits", "--ulimit"), ("publish", "--publish"),
         ("expose", "--expose"), ("network_aliases", "--network-alias"), ("volumes", "--volume"),
         ("mounts", "--mount"), ("tmpfs", "--tmpfs"))
# handled by hand: image, command, name, restart, pull, log_max_size, sdnotify; not flags: detach, host_env
HANDLED = ({f for f, _ in _BOOL + _VALUE + _LIST}
           | {"image", "command", "name", "restart", "pull", "log_max_size", "sdnotify", "detach", "host_env"})


def run_flags(facts: ContainerFacts, *, with_restart: bool = True) -> list[str]:
    """`run` flags that recreate the container (without --name, -d and --sdnotify, which the caller
    decides); `-e KEY` is resolved to the value the container got, a relative bind source to its path."""
    o = facts.options
    args = [flag for key, flag in _BOOL if o.get(key)]
    for key, flag in _VALUE:
        if o.get(key) not in (None, ""):
            args.append(f"{flag}={o[key]}")
    for key, flag in _LIST:
        args += [f"{flag}={value}" for value in _resolved(facts, key)]
    if with_restart and (o.get("restart") or "no") != "no":
        args.append(f"--restart={o['restart']}")
    if (o.get("pull") or "missing") != "missing":
        args.append(f"--pull={o['pull']}")
    if o.get("log_max_size"):
        args.append(f"--log-opt=max-size={o['log_max_size']}")
    return args


def _resolved(facts: ContainerFacts, key: str) -> list[str]:
    """A list option as recorded, but `-e KEY` with the value the container got (the unit's environment
    is not the shell's) and a relative bind source (`./data:/data`) as the absolute path it was."""
    values = list(facts.options.get(key) or ())
    if key == "env":
        env = {e.partition("=")[0]: e for e in facts.env}
        return [env.get(v, v) if "=" not in v else v for v in values]
    if key == "volumes":
        sources = dict(facts.mounts)
        parts = [v.split(":") for v in values]
        return [":".join([sources[p[1]], *p[1:]]) if p[0].startswith(".") and len(p) > 1 and p[1] in sources
                else v for v, p in zip(values, parts)]
    return values


# -- generate systemd ------------------------------------------------------------------------------
def service_name(facts: ContainerFacts, opts: UnitOptions) -> str:
    ident = facts.name if opts.use_name else facts.id
    return f"{opts.container_prefix}{opts.separator}{ident}.service" if opts.container_prefix else f"{ident}.service"


def _restart(facts: ContainerFacts, opts: UnitOptions) -> tuple[str, str | None]:
    """(Restart=, StartLimitBurst= or None): the flag, else with --new the container's own policy."""
    if opts.restart_policy is not None:
        if opts.restart_policy not in SYSTEMD_RESTART:
            raise InvalidArgument(f"invalid --restart-policy {opts.restart_policy!r} ({', '.join(SYSTEMD_RESTART)})")
        return opts.restart_policy, None
    policy, _, count = (facts.options.get("restart") or "no").partition(":")
    if not opts.new or policy == "no":
        return "on-failure", None
    if policy == "unless-stopped":
        return "always", None
    return policy, count or None


def _header(name: str, opts: UnitOptions, origin: str = "") -> list[str]:
    if opts.no_header:
        return []
    return [f"# {name}", f"# autogenerated by pinnace{' ' + opts.version if opts.version else ''}{origin}", ""]


def _paths(*paths: str) -> str:
    return " ".join(p.replace("%", "%%") for p in paths if p and not any(c.isspace() for c in p))


def container_unit(facts: ContainerFacts, opts: UnitOptions) -> Unit:
    """The service of one container: `start`s it, or with `new` creates it and removes it again."""
    name = service_name(facts, opts)
    restart, burst = _restart(facts, opts)
    stop_timeout = opts.stop_timeout
    if stop_timeout is None:
        stop_timeout = facts.options.get("stop_timeout")
        stop_timeout = 10 if stop_timeout is None else int(stop_timeout)
    exe = [opts.executable, *opts.root_args]
    mode = facts.options.get("sdnotify")
    warnings: list[str] = []
    environment = ["PINNACE_SYSTEMD_UNIT=%n"]
    start_timeout = opts.start_timeout
    if opts.new:
        # Podman's rule: `container` mode stays (the application notifies); otherwise the supervisor does
        notify = "container" if mode == "container" else "conmon"
        # --rm: the container is gone when the service stops; systemd's Restart= replaces the supervisor's
        flags = [f for f in run_flags(facts, with_restart=False) if f != "--rm"]
        argv = [*exe, "run", "--rm", f"--sdnotify={notify}", "-d", "--replace", f"--name={facts.name}", *flags,
                facts.image, *facts.command]
        start = format_command(argv, len(exe) + 1, len(argv) - 1 - len(facts.command))
        target = facts.name
        stop = format_command([*exe, "stop", "--ignore", "-t", str(stop_timeout), target], len(exe) + 1)
        stop_post = format_command([*exe, "rm", "-f", "--ignore", "-t", str(stop_timeout), target], len(exe) + 1)
        start_timeout = PULL_TIMEOUT if start_timeout is None else start_timeout
    else:
        target = facts.name if opts.use_name else facts.id
        if mode != "container":
            environment.append("PINNACE_SDNOTIFY=conmon")  # the container runs with whatever it was created
        start = format_command([*exe, "start", target], len(exe) + 1)
        stop = stop_post = format_command([*exe, "stop", "-t", str(stop_timeout), target], len(exe) + 1)
        policy = (facts.options.get("restart") or "no").partition(":")[0]
        if policy != "no":
            warnings.append(f"container {facts.name} has restart policy {policy!r}: its supervisor and systemd "
                            "would both restart it; recreate it without --restart, or use --new")
    lines = _header(name, opts) + ["[Unit]", f"Description=pinnace {name}", "Wants=network-online.target",
                                   "After=network-online.target"]
    mounts = _paths(facts.root, facts.runroot)
    if mounts:
        lines.append(f"RequiresMountsFor={mounts}")
    if burst:
        lines.append(f"StartLimitBurst={burst}")
    if opts.wants or opts.after or opts.requires:
        lines += ["", "# User-defined dependencies"]
        lines += [f"{key}={' '.join(values)}" for key, values in
                  (("Wants", opts.wants), ("After", opts.after), ("Requires", opts.requires)) if values]
    lines += ["", "[Service]", *(f"Environment={e}" for e in environment), f"Restart={restart}"]
    if opts.restart_sec is not None:
        lines.append(f"RestartSec={opts.restart_sec}")
    if start_timeout is not None:
        lines.append(f"TimeoutStartSec={start_timeout}")
    lines += [f"TimeoutStopSec={STOP_GRACE + stop_timeout}", "KillMode=mixed", f"ExecStart={start}",
              f"ExecStop={stop}", f"ExecStopPost={stop_post}", "Type=notify", "NotifyAccess=all", "",
              "[Install]", "WantedBy=default.target", ""]
    return Unit(name, "\n".join(lines), tuple(warnings))


def restart_unit(executable: str, root_args: tuple[str, ...] = (), *, version: str = "",
                 no_header: bool = False) -> Unit:
    """`pinnace-restart.service`: starts `--restart=always` containers when the user's manager starts
    (after a reboot or a new login), stops them when it stops. No daemon: the supervisors it starts run
    in this unit, which stays active (RemainAfterExit)."""
    exe = [executable, *root_args]
    name = "pinnace-restart.service"
    lines = _header(name, UnitOptions(executable, no_header=no_header, version=version)) + [
        "[Unit]", "Description=pinnace: start containers with restart policy always",
        "StartLimitIntervalSec=0", "Wants=network-online.target", "After=network-online.target", "",
        "[Service]", "Type=oneshot", "RemainAfterExit=yes",
        f"ExecStart={format_command([*exe, 'start', '--all', '--filter', 'restart-policy=always'], len(exe) + 1)}",
        f"ExecStop={format_command([*exe, 'stop', '--all', '--filter', 'restart-policy=always'], len(exe) + 1)}",
        "", "[Install]", "WantedBy=default.target", ""]
    return Unit(name, "\n".join(lines))


# -- generate quadlet ---------------------------------------------------------------------------------
_QUADLET_LIST = (("env", "Environment"), ("labels", "Label"), ("env_files", "EnvironmentFile"),
                 ("publish", "PublishPort"), ("expose", "ExposeHostPort"), ("volumes", "Volume"),
                 ("mounts", "Mount"), ("tmpfs", "Tmpfs"), ("add_hosts", "AddHost"), ("dns", "DNS"),
                 ("network_aliases", "NetworkAlias"), ("cap_add", "AddCapability"),
                 ("cap_drop", "DropCapability"), ("ulimits", "Ulimit"))
_QUADLET_VALUE = (("user", "User"), ("workdir", "WorkingDir"), ("hostname", "HostName"), ("network", "Network"),
                  ("memory", "Memory"), ("pids_limit", "PidsLimit"), ("stop_signal", "StopSignal"),
                  ("stop_timeout", "StopTimeout"), ("health_cmd", "HealthCmd"),
                  ("health_interval", "HealthInterval"), ("health_timeout", "HealthTimeout"),
                  ("health_retries", "HealthRetries"), ("health_start_period", "HealthStartPeriod"),
                  ("userns", "UserNS"), ("entrypoint", "Entrypoint"))


def quadlet_file(facts: ContainerFacts, *, version: str = "", no_header: bool = False,
                 root_args: tuple[str, ...] = ()) -> tuple[str, str]:
    """(file name, text) of a Quadlet `.container` file that runs this container as a service; options
    without a Quadlet key go to PodmanArgs= (the generator passes them to `run`), a store that is not the
    default one to GlobalArgs=."""
    o = facts.options
    name = f"{facts.name}.container"
    lines = _header(name, UnitOptions("", no_header=no_header, version=version), f" from container {facts.name}")
    policy, _, count = (o.get("restart") or "no").partition(":")
    lines += ["[Unit]", f"Description=pinnace container {facts.name}",
              *([f"StartLimitBurst={count}"] if count else []), "", "[Container]",
              f"Image={_literal(facts.image)}", f"ContainerName={_literal(facts.name)}"]
    done = {"image", "name", "command", "restart", "detach", "host_env"}
    for key, qkey in _QUADLET_VALUE:
        done.add(key)
        if o.get(key) not in (None, ""):
            lines.append(f"{qkey}={_literal(str(o[key]))}")
    for key, qkey in _QUADLET_LIST:
        done.add(key)
        for value in _resolved(facts, key):
            if key in ("env", "labels"):
                value = quote_word(value, dollar=False)  # Environment= syntax: quoted, % escaped
            else:
                value = _literal(value)
            lines.append(f"{qkey}={value}")
    for key, qkey, on in (("read_only", "ReadOnly", "true"), ("init", "RunInit", "true")):
        done.add(key)
        if o.get(key):
            lines.append(f"{qkey}={on}")
    done.add("sdnotify")
    if o.get("sdnotify") == "container":
        lines.append("Notify=true")
    if (o.get("pull") or "missing") != "missing":
        lines.append(f"Pull={_literal(o['pull'])}")
    if o.get("log_max_size"):
        lines.append(f"LogOpt=max-size={_literal(o['log_max_size'])}")
    done |= {"pull", "log_max_size"}
    if root_args:
        lines.append("GlobalArgs=" + " ".join(quote_word(a) for a in root_args))
    rest = [a for a in run_flags(ContainerFacts(facts.id, facts.name, facts.image, options={
        k: v for k, v in o.items() if k not in done})) if a]
    if rest:
        lines.append("PodmanArgs=" + " ".join(quote_word(a) for a in rest))
    if facts.command:
        lines.append("Exec=" + " ".join(quote_word(w) for w in facts.command))
    restart = {"no": "no", "always": "always", "unless-stopped": "always", "on-failure": "on-failure"}[policy]
    lines += ["", "[Service]", f"Restart={restart}", f"TimeoutStartSec={PULL_TIMEOUT}", "",
              "[Install]", "WantedBy=default.target", ""]
    return name, "\n".join(lines)


def _literal(value: str) -> str:
    """A single-valued Quadlet key: the rest of the line, literally, but for specifiers (%%)."""
    if "\n" in value or value != value.strip():
        raise InvalidArgument(f"cannot write {value!r} as a Quadlet value (surrounding space or a newline)")
    return value.replace("%", "%%")


# -- the machine ------------------------------------------------------------------------------------
def load(store, text: str) -> ContainerFacts:  # noqa: ANN001 - engine.store.Store
    """The facts of one container of `store`, from its inspect document and its record."""
    from pinnace.engine.container_view import inspect
    from pinnace.engine.containers import get
    doc = inspect(store, text)
    record = get(store, text).rec.record
    ann = doc["Config"].get("Annotations") or {}
    mounts = tuple((m["Destination"], m["Source"]) for m in doc.get("Mounts", []) if m.get("Source"))
    return ContainerFacts(id=doc["Id"], name=doc["Name"], image=record.get("Image") or doc["Config"]["Image"],
                          command=tuple(record.get("Command") or ()), options=dict(record.get("Options") or {}),
                          env=tuple(doc["Config"].get("Env") or ()), mounts=mounts,
                          root=ann.get("io.pinnace.root", ""), runroot=ann.get("io.pinnace.runroot", ""))


def root_args(root: str, runroot: str) -> tuple[str, ...]:
    """--root/--runroot for a unit's commands when the store is not the default one."""
    from pinnace.engine.paths import default_root, default_runroot
    rootless = os.geteuid() != 0
    if (root, runroot) == (default_root(rootless), default_runroot(rootless)):
        return ()
    return (f"--root={root}", f"--runroot={runroot}")


def pinnace_executable() -> str:
    """The absolute path units run: $PINNACE_EXECUTABLE, the one-file launcher the user installed
    ($PINNACE_LAUNCHER, packaging/launcher.sh: not its unpacked copy in a cache), the frozen executable,
    the `pinnace` this process was started as, or the one on PATH."""
    import shutil
    candidates = [os.environ.get("PINNACE_EXECUTABLE") or "", os.environ.get("PINNACE_LAUNCHER") or ""]
    if getattr(sys, "frozen", False):
        candidates.append(sys.executable)
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "pinnace":
        # a generator symlink (…/user-generators/pinnace) names the real file only through the link
        candidates.append(os.path.realpath(argv0) if "-generators" in argv0 else os.path.abspath(argv0))
    candidates += [shutil.which("pinnace") or "", os.path.join(os.path.dirname(sys.executable), "pinnace")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
    raise PinnaceError("cannot find the pinnace executable for the unit (set PINNACE_EXECUTABLE)")


def linger_enabled(user: str, linger_dir: str = "/var/lib/systemd/linger") -> bool:
    """logind keeps a user's manager (and so its services) running after logout when this file exists."""
    return os.path.exists(os.path.join(linger_dir, user))


def current_user() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())
