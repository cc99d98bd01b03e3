"""`run`, `create`, `start`, `attach`, `exec`: the container commands that create containers or attach a
terminal to them (the rest are in cli/container_cmds.py, which registers these too)."""
from __future__ import annotations

import os
import sys

from pinnace.cli.errors import each_name
from pinnace.cli.flags import BOOL, LIST, VALUE, Flag, to_int
from pinnace.errors import InvalidArgument

F = Flag

CREATE_FLAGS = (
    F(("-d", "--detach"), "detach", BOOL, "Run in the background and print the container ID"),
    F(("-i", "--interactive"), "interactive", BOOL, "Keep stdin open"),
    F(("-t", "--tty"), "tty", BOOL, "Allocate a pseudo-terminal"),
    F(("--rm",), "rm", BOOL, "Remove the container (and its anonymous volumes) when it exits"),
    F(("--name",), "name", VALUE, "Name of the container", "NAME"),
    F(("-e", "--env"), "env", LIST, "Set an environment variable (KEY=VALUE, or KEY to pass the host's)", "ENV"),
    F(("--env-file",), "env_file", LIST, "Read environment variables from a file", "FILE"),
    F(("-w", "--workdir"), "workdir", VALUE, "Working directory inside the container", "DIR"),
    F(("-u", "--user"), "user", VALUE, "User (name|uid[:group|gid])", "USER"),
    F(("--entrypoint",), "entrypoint", VALUE, "Override the image's ENTRYPOINT", "CMD"),
    F(("-v", "--volume"), "volume", LIST, "Bind mount or volume: SRC:DST[:ro,z,U], NAME:DST, or DST", "VOLUME"),
    F(("--mount",), "mount", LIST, "type=bind|volume|tmpfs,source=…,target=…[,readonly]", "MOUNT"),
    F(("--tmpfs",), "tmpfs", LIST, "Mount a tmpfs: DST[:OPTIONS]", "TMPFS"),
    F(("--read-only",), "read_only", BOOL, "Mount the root filesystem read-only"),
    F(("-h", "--hostname"), "hostname", VALUE, "Container host name", "NAME"),
    F(("--add-host",), "add_host", LIST, "Add a line to /etc/hosts (name:ip)", "HOST:IP"),
    F(("--dns",), "dns", LIST, "DNS server for /etc/resolv.conf", "IP"),
    F(("-l", "--label"), "label", LIST, "Set a label (KEY=VALUE)", "LABEL"),
    F(("--restart",), "restart", VALUE, "Restart policy: no, on-failure[:N], always, unless-stopped", "POLICY"),
    F(("--init",), "init", BOOL, "Run a minimal init as pid 1 (reaps zombies, forwards signals)"),
    F(("--cap-add",), "cap_add", LIST, "Add a capability", "CAP"),
    F(("--cap-drop",), "cap_drop", LIST, "Drop a capability", "CAP"),
    F(("--privileged",), "privileged", BOOL, "All capabilities, no masked paths (still inside the user namespace)"),
    F(("--security-opt",), "security_opt", LIST, "no-new-privileges[=true|false]", "OPT"),
    F(("--userns",), "userns", VALUE, "keep-id: your uid inside is your uid outside", "MODE"),
    F(("-m", "--memory"), "memory", VALUE, "Memory limit (cgroups)", "BYTES"),
    F(("--memory-swap",), "memory_swap", VALUE, "Memory + swap limit (cgroups)", "BYTES"),
    F(("--cpus",), "cpus", VALUE, "Number of CPUs (cgroups)", "N"),
    F(("-c", "--cpu-shares"), "cpu_shares", VALUE, "CPU shares (cgroups)", "N"),
    F(("--pids-limit",), "pids_limit", VALUE, "Maximum number of processes (cgroups)", "N"),
    F(("--ulimit",), "ulimit", LIST, "Resource limit: name=soft[:hard]", "ULIMIT"),
    F(("--pull",), "pull", VALUE, "Pull policy: missing (default), always, never", "POLICY"),
    F(("--platform",), "platform", VALUE, "Platform of the image (os/arch[/variant])", "PLATFORM"),
    F(("--network", "--net"), "network", VALUE,
      "Network: default (user-mode), host, none, container:NAME, or a user network", "NETWORK"),
    F(("--network-alias",), "network_alias", LIST, "Another name of the container on its user network", "ALIAS"),
    F(("-p", "--publish"), "publish", LIST, "Publish a port: [ip:][hostPort:]containerPort[/tcp|udp]", "PORTS"),
    F(("-P", "--publish-all"), "publish_all", BOOL, "Publish every exposed port on a random host port"),
    F(("--expose",), "expose", LIST, "Expose a port (for -P)", "PORT"),
    F(("--cidfile",), "cidfile", VALUE, "Write the container ID to a file", "FILE"),
    F(("--stop-signal",), "stop_signal", VALUE, "Signal `stop` sends first (default SIGTERM)", "SIGNAL"),
    F(("--stop-timeout",), "stop_timeout", VALUE, "Seconds `stop` waits before SIGKILL (default 10)", "N"),
    F(("--health-cmd",), "health_cmd", VALUE, "Healthcheck command", "CMD"),
    F(("--health-interval",), "health_interval", VALUE, "Time between checks (30s)", "DURATION"),
    F(("--health-timeout",), "health_timeout", VALUE, "Time a check may take (30s)", "DURATION"),
    F(("--health-retries",), "health_retries", VALUE, "Failures before unhealthy (3)", "N"),
    F(("--health-start-period",), "health_start_period", VALUE, "Grace period after start (0s)", "DURATION"),
    F(("--no-healthcheck",), "no_healthcheck", BOOL, "Disable the image's healthcheck"),
    F(("--log-opt",), "log_opt", LIST, "Log option: max-size=SIZE", "OPT"),
    F(("--log-driver",), "log_driver", VALUE, "k8s-file (the only driver)", "DRIVER"),
    F(("--runtime",), "runtime", VALUE, "Path of an external OCI runtime (crun, runc)", "PATH"),
    F(("--detach-keys",), "detach_keys", VALUE, "Keys that detach (default ctrl-p,ctrl-q)", "KEYS"),
    F(("--sig-proxy",), "sig_proxy", BOOL, "Forward signals to the container (default true)", default=True),
    F(("-a", "--attach"), "attach", LIST, "Attach to STDIN, STDOUT or STDERR (accepted; all are attached)", "STREAM"),
    F(("-q", "--quiet"), "quiet", BOOL, "Do not print pull progress"),
    # issue 7 (systemd units): readiness over $NOTIFY_SOCKET, and replacing a container of the same name
    F(("--sdnotify",), "sdnotify", VALUE, "systemd readiness: container (default), conmon or ignore", "MODE"),
    F(("--replace",), "replace", BOOL, "Remove a container of the same --name first"),
)


def _create_options(o: dict, positional: list[str]):  # noqa: ANN202 - ContainerCreateOptions
    from pinnace.engine.container_contract import ContainerCreateOptions
    if not positional:
        raise InvalidArgument("requires at least 1 argument: the image")
    log_max = None
    for opt in o["log_opt"]:
        key, _, value = opt.partition("=")
        if key != "max-size":
            raise InvalidArgument(f"unsupported --log-opt {opt!r} (max-size=SIZE)")
        log_max = value
    if o["log_driver"] not in (None, "k8s-file", "json-file"):
        raise InvalidArgument(f"unsupported --log-driver {o['log_driver']!r} (k8s-file)")
    if o["stop_signal"]:
        from pinnace.engine.containers import parse_signal
        parse_signal(o["stop_signal"])
    return ContainerCreateOptions(
        image=positional[0], command=tuple(positional[1:]), name=o["name"], entrypoint=o["entrypoint"],
        env=tuple(o["env"]), env_files=tuple(o["env_file"]), workdir=o["workdir"], user=o["user"], tty=o["tty"],
        stdin=o["interactive"], detach=o["detach"], autoremove=o["rm"], hostname=o["hostname"],
        add_hosts=tuple(o["add_host"]), dns=tuple(o["dns"]), labels=tuple(o["label"]), restart=o["restart"] or "no",
        init=o["init"], cap_add=tuple(o["cap_add"]), cap_drop=tuple(o["cap_drop"]), privileged=o["privileged"],
        security_opt=tuple(o["security_opt"]), userns=o["userns"], memory=o["memory"], memory_swap=o["memory_swap"],
        cpus=o["cpus"], cpu_shares=to_int(o["cpu_shares"], "--cpu-shares"),
        pids_limit=to_int(o["pids_limit"], "--pids-limit"), ulimits=tuple(o["ulimit"]), pull=o["pull"] or "missing",
        platform=o["platform"], network=o["network"] or "", publish=tuple(o["publish"]),
        publish_all=o["publish_all"], expose=tuple(o["expose"]), network_aliases=tuple(o["network_alias"]),
        volumes=tuple(o["volume"]), mounts=tuple(o["mount"]), tmpfs=tuple(o["tmpfs"]), read_only=o["read_only"],
        stop_signal=o["stop_signal"], stop_timeout=to_int(o["stop_timeout"], "--stop-timeout"),
        health_cmd=o["health_cmd"], health_interval=o["health_interval"], health_timeout=o["health_timeout"],
        health_retries=to_int(o["health_retries"], "--health-retries"), health_start_period=o["health_start_period"],
        no_healthcheck=o["no_healthcheck"], log_max_size=log_max, runtime=o["runtime"], sdnotify=o["sdnotify"],
        host_env=tuple(os.environ.items()))


def _replace(eng, o: dict, name: str | None) -> None:  # noqa: ANN001 - issue 7: `run --replace`
    if o["replace"] and name:
        from pinnace.errors import NotFound
        try:
            eng.container_remove(name, force=True)
        except NotFound:
            pass


def names_matching(eng, filters: list[str], *, all: bool) -> list[str]:  # noqa: ANN001 - issue 7
    """IDs for `start/stop --all --filter`: `ps` filters, and restart-policy=NAME (pinnace-restart.service)."""
    policies = [f.partition("=")[2] for f in filters if f.startswith("restart-policy=")]
    rows = eng.container_list(all=all, filters=tuple(f for f in filters if not f.startswith("restart-policy=")))
    if policies:
        rows = [r for r in rows if eng.container_inspect(r.id)["HostConfig"]["RestartPolicy"]["Name"] in policies]
    return [r.id for r in rows]


def _progress(quiet: bool):  # noqa: ANN202
    def report(event) -> None:  # noqa: ANN001 - events come only when pulling or warning: import then
        from pinnace.engine.contract import ProgressKind
        if event.kind == ProgressKind.WARNING:
            sys.stderr.write(f"WARNING: {event.message}\n")
        elif not quiet and event.kind == ProgressKind.RESOLVED:
            sys.stderr.write(f"Trying to pull {event.message}...\n")
        elif not quiet and event.kind == ProgressKind.LAYER_DONE:
            sys.stderr.write(f"Copying blob {event.id.removeprefix('sha256:')[:12]} done\n")
    return report


def _write_cidfile(path: str | None, cid: str) -> None:
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise InvalidArgument(f"container ID file {path} already exists") from None
    with os.fdopen(fd, "w") as f:
        f.write(cid)


def cmd_create(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    opts = _create_options(o, positional)
    if o["cidfile"] and os.path.exists(o["cidfile"]):
        raise InvalidArgument(f"container ID file {o['cidfile']} already exists")
    _replace(eng, o, opts.name)
    cid = eng.container_create(opts, _progress(o["quiet"]))
    _write_cidfile(o["cidfile"], cid)
    print(cid)
    return 0


def cmd_run(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    opts = _create_options(o, positional)
    from pinnace.cli.attach_client import AttachOptions, attach, parse_detach_keys
    detach_keys = o["detach_keys"] if o["detach_keys"] is not None else "ctrl-p,ctrl-q"
    parse_detach_keys(detach_keys)
    if o["cidfile"] and os.path.exists(o["cidfile"]):
        raise InvalidArgument(f"container ID file {o['cidfile']} already exists")
    if opts.tty and opts.stdin and not os.isatty(0):
        sys.stderr.write("WARNING: -t given but stdin is not a terminal\n")
    _replace(eng, o, opts.name)
    cid = eng.container_create(opts, _progress(o["quiet"]))
    _write_cidfile(o["cidfile"], cid)
    if opts.detach:
        eng.container_start(cid)
        print(cid)
        return 0
    _, sock = eng.container_start(cid, attach=True)
    try:
        code = attach(sock, AttachOptions(tty=opts.tty, stdin=opts.stdin, detach_keys=detach_keys,
                                          sig_proxy=o["sig_proxy"]))
    finally:
        os.close(sock)
    return 0 if code is None else code


def cmd_start(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if o["all"]:  # issue 7: `start --all --filter restart-policy=always` (pinnace-restart.service)
        if positional or o["attach"]:
            raise InvalidArgument("start --all takes no container names and no --attach")
        names = names_matching(eng, o["filter"], all=True)
        return each_name(names, lambda n: (eng.container_start(n), n)[1]) if names else 0
    if not o["attach"]:
        return each_name(positional, lambda n: (eng.container_start(n), n)[1])
    if len(positional) != 1:
        raise InvalidArgument("start --attach takes exactly one container")
    from pinnace.cli.attach_client import AttachOptions, attach
    cid, sock = eng.container_start(positional[0], attach=True)
    spec = eng.container_inspect(cid)
    try:
        code = attach(sock, AttachOptions(tty=spec["Config"]["Tty"], stdin=o["interactive"],
                                          detach_keys=o["detach_keys"] or "ctrl-p,ctrl-q"))
    finally:
        os.close(sock)
    return 0 if code is None else code


def cmd_attach(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if len(positional) != 1:
        raise InvalidArgument("attach takes exactly one container")
    from pinnace.cli.attach_client import AttachOptions, attach
    info = eng.container_inspect(positional[0])
    sock = eng.container_attach(positional[0])
    try:
        code = attach(sock, AttachOptions(tty=info["Config"]["Tty"], stdin=not o["no_stdin"] and info["Config"]["OpenStdin"],
                                          detach_keys=o["detach_keys"] or "ctrl-p,ctrl-q", sig_proxy=o["sig_proxy"]))
    finally:
        os.close(sock)
    return 0 if code is None else code


def cmd_exec(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.engine.container_contract import ExecOptions
    if len(positional) < 2:
        raise InvalidArgument("exec needs a container and a command")
    opts = ExecOptions(container=positional[0], command=tuple(positional[1:]), tty=o["tty"], stdin=o["interactive"],
                       detach=o["detach"], env=tuple(o["env"]), env_files=tuple(o["env_file"]), user=o["user"],
                       workdir=o["workdir"], privileged=o["privileged"])
    if opts.detach:
        null = os.open("/dev/null", os.O_RDWR)
        eng.exec_wait(eng.container_exec(opts, (null, null, null)))
        return 0
    if opts.tty:
        from pinnace.cli.exec_tty import run_with_pty
        return run_with_pty(eng, opts)
    stdin = 0 if opts.stdin else os.open("/dev/null", os.O_RDONLY)
    sys.stdout.flush()
    pid = eng.container_exec(opts, (stdin, 1, 2))
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f, p=pid: _forward(p, s))
    return eng.exec_wait(pid)


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
