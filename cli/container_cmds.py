"""The container commands (`run`, `ps`, `exec`, … and `container …`), parsed by cli/flags.py without
typer: they are the hot path. Each handler turns flags into engine calls and prints the result."""
from __future__ import annotations

import os
import sys

from pinnace.cli.flags import BOOL, LIST, VALUE, Command, Flag, HelpRequested, parse, print_help
from pinnace.errors import InvalidArgument

F = Flag
_FORMAT = F(("--format",), "format", VALUE, "json, table, or a Go template", "FORMAT")

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
    F(("--network", "--net"), "network", VALUE, "none (default for now) or host", "MODE"),
    F(("-p", "--publish"), "publish", LIST, "Publish a port (needs user-mode networking)", "PORTS"),
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
)


def _int(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"invalid value {value!r} for {flag}: a whole number") from None


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
        cpus=o["cpus"], cpu_shares=_int(o["cpu_shares"], "--cpu-shares"),
        pids_limit=_int(o["pids_limit"], "--pids-limit"), ulimits=tuple(o["ulimit"]), pull=o["pull"] or "missing",
        platform=o["platform"], network=o["network"] or "none", publish=tuple(o["publish"]),
        volumes=tuple(o["volume"]), mounts=tuple(o["mount"]), tmpfs=tuple(o["tmpfs"]), read_only=o["read_only"],
        stop_signal=o["stop_signal"], stop_timeout=_int(o["stop_timeout"], "--stop-timeout"),
        health_cmd=o["health_cmd"], health_interval=o["health_interval"], health_timeout=o["health_timeout"],
        health_retries=_int(o["health_retries"], "--health-retries"), health_start_period=o["health_start_period"],
        no_healthcheck=o["no_healthcheck"], log_max_size=log_max, runtime=o["runtime"],
        host_env=tuple(os.environ.items()))


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


def _names(positional: list[str], what: str = "container") -> list[str]:
    if not positional:
        raise InvalidArgument(f"requires at least 1 argument: the {what}")
    return positional


def _each(positional: list[str], fn) -> int:  # noqa: ANN001
    """Apply fn to each name; report failures like Docker (all of them, exit with the last one's code)."""
    from pinnace.errors import PinnaceError
    code = 0
    for name in _names(positional):
        try:
            out = fn(name)
            if out is not None:
                print(out)
        except PinnaceError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            code = exc.exit_code
    return code


def cmd_start(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if not o["attach"]:
        return _each(positional, lambda n: (eng.container_start(n), n)[1])
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


def _timeout(o: dict) -> float | None:
    value = o.get("time")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidArgument(f"invalid --time {value!r}: seconds") from None


def cmd_stop(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    t = _timeout(o)
    targets = _all_names(eng, o, positional, running=True)
    return _each(targets, lambda n: (eng.container_stop(n, t), n)[1])


def cmd_restart(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    t = _timeout(o)
    return _each(_all_names(eng, o, positional, running=True),
                 lambda n: (eng.container_stop(n, t), eng.container_start(n), n)[2])


def cmd_kill(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return _each(_all_names(eng, o, positional, running=True), lambda n: (eng.container_kill(n, o["signal"]), n)[1])


def _all_names(eng, o: dict, positional: list[str], running: bool = False) -> list[str]:  # noqa: ANN001
    if o.get("all"):
        return [s.id for s in eng.container_list(all=not running)]
    if o.get("latest"):
        rows = eng.container_list(all=True)
        return [rows[0].id] if rows else []
    return _names(positional)


def cmd_rm(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    t = _timeout(o)
    names = _all_names(eng, o, positional)
    from pinnace.errors import NotFound

    def rm(n: str) -> str | None:
        try:
            eng.container_remove(n, force=o["force"], volumes=o["volumes"], timeout=t)
        except NotFound:
            if o["ignore"]:
                return None
            raise
        return n
    code = _each(names, rm) if names else 0
    return code


def cmd_ps(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.container_view import render_ps
    from pinnace.engine.container_list import list_containers  # what LocalEngine.container_list calls
    rows = list_containers(eng.root, all=o["all"] or bool(o["latest"]) or o["last"] is not None,
                           filters=tuple(o["filter"]))
    if o["latest"]:
        rows = rows[:1]
    if o["last"] is not None:
        rows = rows[:max(0, _int(o["last"], "--last"))]
    if o["size"]:
        rows = [_with_size(eng, r) for r in rows]
    render_ps(rows, quiet=o["quiet"], no_trunc=o["no_trunc"], fmt=o["format"], size=o["size"],
              noheading=o["noheading"])
    return 0


def _with_size(eng, row):  # noqa: ANN001, ANN202
    path = os.path.join(eng.root, "containers", row.id, "diff")
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    row.size = total
    return row


def cmd_logs(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.container_view import parse_log_time
    if len(positional) != 1:
        raise InvalidArgument("logs takes exactly one container")
    tail = None if o["tail"] in (None, "all", "-1") else _int(o["tail"], "--tail")
    lines = eng.container_logs(positional[0], follow=o["follow"], tail=tail, since_ns=parse_log_time(o["since"]),
                               until_ns=parse_log_time(o["until"]))
    from pinnace.runtime.logfile import rfc3339_nano
    for line in lines:
        stream = sys.stdout.buffer if line.stream == "stdout" else sys.stderr.buffer
        if o["timestamps"]:
            stream.write(rfc3339_nano(line.time_ns).encode() + b" ")
        stream.write(line.text)
        stream.flush()
    return 0


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


def cmd_wait(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    conditions = tuple(o["condition"]) or ("stopped",)
    return _each(positional, lambda n: eng.container_wait(n, conditions))


def cmd_inspect(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.output import print_json
    from pinnace.errors import NotFound, PinnaceError
    kind = o.get("type") or "all"
    if kind not in ("all", "container", "image"):
        raise InvalidArgument(f"invalid --type {kind!r} (container, image)")
    data, failures = [], []
    for name in _names(positional, "object"):
        try:
            if kind in ("all", "container"):
                try:
                    data.append(eng.container_inspect(name))
                    continue
                except NotFound:
                    if kind == "container":
                        raise
            data.append(eng.image_inspect(name))
        except PinnaceError as exc:
            failures.append(exc)
    fmt = o["format"]
    if fmt and fmt != "json":
        from pinnace.cli.template import render_rows
        sys.stdout.write(render_rows(fmt, data))
    elif data or not failures:
        print_json(data)
    for exc in failures:
        sys.stderr.write(f"Error: {exc}\n")
    return failures[-1].exit_code if failures else 0


def cmd_top(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.output import tabulate
    if not positional:
        raise InvalidArgument("top needs a container")
    rows = eng.container_top(positional[0])
    cols = ["USER", "PID", "PPID", "TIME", "COMMAND"]
    sys.stdout.write(tabulate([cols] + [[str(r[c]) for c in cols] for r in rows]))
    return 0


def cmd_port(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if not positional:
        raise InvalidArgument("port needs a container")
    info = eng.container_inspect(positional[0])
    for spec in info["HostConfig"].get("PortBindings", {}) or {}:
        print(spec)
    return 0


def cmd_rename(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if len(positional) != 2:
        raise InvalidArgument("rename takes a container and its new name")
    eng.container_rename(positional[0], positional[1])
    return 0


def cmd_pause(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return _each(positional, lambda n: (eng.container_pause(n), n)[1])


def cmd_unpause(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return _each(positional, lambda n: (eng.container_unpause(n), n)[1])


def cmd_stats(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.output import emit_formatted, human_size, tabulate
    names = positional or [s.id for s in eng.container_list()]
    rows = [eng.container_stats(n) for n in names]
    if emit_formatted(o["format"], rows):
        return 0
    table = [["ID", "NAME", "CPU TIME", "MEM USAGE / LIMIT", "PIDS"]]
    for r in rows:
        limit = human_size(r["memory_limit"]) if r.get("memory_limit") else "--"
        table.append([r["id"][:12], r["name"], f"{r['cpu_ns'] / 1e9:.2f}s",
                      f"{human_size(r['memory_bytes'])} / {limit}", str(r["pids"])])
    sys.stdout.write(tabulate(table))
    return 0


def cmd_mount(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if not positional:
        for s in eng.container_list(all=True):
            path = os.path.join(str(eng.store.layout.containers_dir), s.id, "merged")
            from pinnace.runtime.mounts import is_mountpoint
            eng.store.join_userns()
            if is_mountpoint(__import__("pathlib").Path(path)):
                print(f"{s.id[:12]} {path}")
        return 0
    return _each(positional, lambda n: str(eng.container_mount(n)))


def cmd_unmount(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return _each(positional, lambda n: (eng.container_unmount(n), n)[1])


def cmd_diff(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if len(positional) != 1:
        raise InvalidArgument("diff takes one container")
    changes = eng.container_diff(positional[0])
    from pinnace.cli.output import emit_formatted
    if emit_formatted(o["format"], [{"Kind": k, "Path": p} for k, p in changes]):
        return 0
    for kind, path in changes:
        print(f"{kind} {path}")
    return 0


def cmd_export(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if len(positional) != 1:
        raise InvalidArgument("export takes one container")
    if o["output"]:
        with open(o["output"], "wb") as f:
            eng.container_export(positional[0], f)
        return 0
    if sys.stdout.isatty():
        raise InvalidArgument("refusing to write a tar archive to a terminal: use -o FILE or redirect")
    eng.container_export(positional[0], sys.stdout.buffer)
    sys.stdout.flush()
    return 0


def cmd_cp(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if len(positional) != 2:
        raise InvalidArgument("cp takes a source and a destination (one of them CONTAINER:PATH)")
    eng.container_copy(positional[0], positional[1], sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout.flush()
    return 0


def cmd_commit(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if len(positional) not in (1, 2):
        raise InvalidArgument("commit takes a container and optionally an image name")
    iid = eng.container_commit(positional[0], positional[1] if len(positional) == 2 else None,
                               author=o["author"] or "", message=o["message"] or "", changes=tuple(o["change"]))
    print(iid.removeprefix("sha256:"))
    return 0


def cmd_prune(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.state import confirmed
    if not confirmed(o["force"], "container prune", "This will remove all stopped containers."):
        return 0
    for cid in eng.container_prune(tuple(o["filter"])):
        print(cid)
    return 0


def cmd_cleanup(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return _each(_all_names(eng, o, positional), lambda n: (eng.container_cleanup(n), n)[1])


def cmd_exists(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.errors import NotFound
    try:
        eng.container_inspect(_names(positional)[0])
        return 0
    except NotFound:
        return 1


_T = F(("-t", "--time"), "time", VALUE, "Seconds to wait before killing", "SECONDS")
_ALL = F(("-a", "--all"), "all", BOOL, "All containers")
_LATEST = F(("-l", "--latest"), "latest", BOOL, "The latest created container")
_FILTER = F(("-f", "--filter"), "filter", LIST, "Filter (KEY=VALUE)", "FILTER")

COMMANDS: dict[str, tuple[Command, object]] = {}


def _add(cmd: Command, fn, *aliases: str) -> None:  # noqa: ANN001
    for name in (cmd.name, *aliases):
        COMMANDS[name] = (cmd, fn)


_add(Command("run", "run [OPTIONS] IMAGE [COMMAND [ARG...]]", "Run a command in a new container.", CREATE_FLAGS, True), cmd_run)
_add(Command("create", "create [OPTIONS] IMAGE [COMMAND [ARG...]]", "Create a container without starting it.", CREATE_FLAGS, True), cmd_create)
_add(Command("start", "start [OPTIONS] CONTAINER...", "Start containers.", (
    F(("-a", "--attach"), "attach", BOOL, "Attach to the container's output"),
    F(("-i", "--interactive"), "interactive", BOOL, "Attach stdin"),
    F(("--detach-keys",), "detach_keys", VALUE, "Keys that detach", "KEYS"))), cmd_start)
_add(Command("attach", "attach [OPTIONS] CONTAINER", "Attach to a running container's stdio.", (
    F(("--no-stdin",), "no_stdin", BOOL, "Do not attach stdin"),
    F(("--sig-proxy",), "sig_proxy", BOOL, "Forward signals (default true)", default=True),
    F(("--detach-keys",), "detach_keys", VALUE, "Keys that detach", "KEYS"))), cmd_attach)
_add(Command("stop", "stop [OPTIONS] CONTAINER...", "Stop containers (stop signal, then SIGKILL).", (_T, _ALL, _LATEST)), cmd_stop)
_add(Command("restart", "restart [OPTIONS] CONTAINER...", "Restart containers.", (_T, _ALL, _LATEST)), cmd_restart)
_add(Command("kill", "kill [OPTIONS] CONTAINER...", "Send a signal (default SIGKILL) to containers.", (
    F(("-s", "--signal"), "signal", VALUE, "Signal to send", "SIGNAL"), _ALL, _LATEST)), cmd_kill)
_add(Command("rm", "rm [OPTIONS] CONTAINER...", "Remove containers.", (
    F(("-f", "--force"), "force", BOOL, "Stop running containers first"),
    F(("-v", "--volumes"), "volumes", BOOL, "Remove anonymous volumes too"),
    F(("-i", "--ignore"), "ignore", BOOL, "Ignore containers that do not exist"), _T, _ALL, _LATEST)), cmd_rm)
_add(Command("ps", "ps [OPTIONS]", "List containers.", (
    _ALL, _LATEST, F(("-q", "--quiet"), "quiet", BOOL, "Only IDs"), _FILTER, _FORMAT,
    F(("--no-trunc",), "no_trunc", BOOL, "Full IDs and commands"),
    F(("-s", "--size"), "size", BOOL, "Size of each container's rw layer"),
    F(("-n", "--last"), "last", VALUE, "The last N created containers", "N"),
    F(("--noheading",), "noheading", BOOL, "No header line"))), cmd_ps)
_add(Command("logs", "logs [OPTIONS] CONTAINER", "Show a container's output.", (
    F(("-f", "--follow"), "follow", BOOL, "Follow new output"),
    F(("-n", "--tail"), "tail", VALUE, "Last N lines (or all)", "N"),
    F(("--since",), "since", VALUE, "Since a time (RFC 3339, unix time or duration)", "TIME"),
    F(("--until",), "until", VALUE, "Until a time", "TIME"),
    F(("-t", "--timestamps"), "timestamps", BOOL, "Show timestamps"))), cmd_logs)
_add(Command("exec", "exec [OPTIONS] CONTAINER COMMAND [ARG...]", "Run a command in a running container.", (
    F(("-d", "--detach"), "detach", BOOL, "Run in the background"),
    F(("-i", "--interactive"), "interactive", BOOL, "Keep stdin open"),
    F(("-t", "--tty"), "tty", BOOL, "Allocate a pseudo-terminal"),
    F(("-e", "--env"), "env", LIST, "Set an environment variable", "ENV"),
    F(("--env-file",), "env_file", LIST, "Read environment variables from a file", "FILE"),
    F(("-u", "--user"), "user", VALUE, "User (name|uid[:group|gid])", "USER"),
    F(("-w", "--workdir"), "workdir", VALUE, "Working directory", "DIR"),
    F(("--privileged",), "privileged", BOOL, "All capabilities"),
    F(("--detach-keys",), "detach_keys", VALUE, "Keys that detach", "KEYS")), True), cmd_exec)
_add(Command("wait", "wait [OPTIONS] CONTAINER...", "Wait for containers to stop; print their exit codes.", (
    F(("--condition",), "condition", LIST, "stopped (default), running, created, not-running", "STATE"),)), cmd_wait)
_add(Command("inspect", "inspect [OPTIONS] NAME...", "Show containers or images as JSON.", (
    F(("-f", "--format"), "format", VALUE, "json or a Go template", "FORMAT"),
    F(("--type", "-t"), "type", VALUE, "container or image", "TYPE"),
    F(("-s", "--size"), "size", BOOL, "Accepted for compatibility"))), cmd_inspect)
_add(Command("top", "top CONTAINER", "Show a container's processes.", ()), cmd_top)
_add(Command("port", "port CONTAINER", "List a container's published ports.", ()), cmd_port)
_add(Command("rename", "rename CONTAINER NEW_NAME", "Rename a container.", ()), cmd_rename)
_add(Command("pause", "pause CONTAINER...", "Freeze a container's processes (needs a cgroup freezer).", ()), cmd_pause)
_add(Command("unpause", "unpause CONTAINER...", "Thaw a paused container.", ()), cmd_unpause)
_add(Command("stats", "stats [OPTIONS] [CONTAINER...]", "CPU, memory and pids of containers (needs cgroups).", (
    F(("--no-stream",), "no_stream", BOOL, "One sample (the only mode)"), _FORMAT)), cmd_stats)
_add(Command("mount", "mount [CONTAINER...]", "Mount containers' root filesystems; print where.", ()), cmd_mount)
_add(Command("unmount", "unmount CONTAINER...", "Unmount stopped containers' root filesystems.", ()), cmd_unmount, "umount")
_add(Command("diff", "diff CONTAINER", "Files added (A), changed (C) and deleted (D) in a container.", (_FORMAT,)), cmd_diff)
_add(Command("export", "export [OPTIONS] CONTAINER", "Write a container's filesystem as a tar archive.", (
    F(("-o", "--output"), "output", VALUE, "Write to a file", "FILE"),)), cmd_export)
_add(Command("cp", "cp SRC DEST", "Copy files between a container (CONTAINER:PATH) and the host; - is a tar stream.", ()), cmd_cp)
_add(Command("commit", "commit [OPTIONS] CONTAINER [IMAGE]", "Make an image of a container's changes.", (
    F(("-a", "--author"), "author", VALUE, "Author", "NAME"),
    F(("-m", "--message"), "message", VALUE, "Commit message", "TEXT"),
    F(("-c", "--change"), "change", LIST, "Dockerfile instruction to apply (CMD, ENV, …)", "INSTR"),
    F(("-p", "--pause"), "pause", BOOL, "Accepted (containers are not paused while committing)"))), cmd_commit)

CONTAINER_ONLY: dict[str, tuple[Command, object]] = {
    "prune": (Command("container prune", "container prune [OPTIONS]", "Remove all stopped containers.", (
        F(("-f", "--force"), "force", BOOL, "Do not ask"),
        F(("--filter",), "filter", LIST, "Filter (label=, until=)", "FILTER"))), cmd_prune),
    "cleanup": (Command("container cleanup", "container cleanup CONTAINER...",
                        "Finish what a killed supervisor left: record the exit, unmount, --rm.", (_ALL, _LATEST)), cmd_cleanup),
    "exists": (Command("container exists", "container exists CONTAINER", "Exit 0 if the container exists, 1 if not.", ()), cmd_exists),
    "ls": COMMANDS["ps"], "list": COMMANDS["ps"], "remove": COMMANDS["rm"],
}
TOP_LEVEL = tuple(COMMANDS)


def lookup(args: list[str]) -> tuple[Command, object, list[str]] | None:
    """The container command `args` names (without global flags), with its own arguments."""
    if not args:
        return None
    if args[0] == "container" and len(args) > 1:
        entry = CONTAINER_ONLY.get(args[1]) or COMMANDS.get(args[1])
        return (*entry, args[2:]) if entry else None
    entry = COMMANDS.get(args[0])
    return (*entry, args[1:]) if entry else None


class _EngineRef:
    """The LocalEngine, made on first use: `ps` reads the store without it (see engine/container_list.py)."""

    def __init__(self, globals_: dict[str, str | None]):
        self._globals = globals_
        self._engine = None

    @property
    def root(self) -> str:
        from pinnace.engine.paths import store_paths
        if os.environ.get("PINNACE_STORAGE_DRIVER", "overlay") != "overlay" or self._globals.get("--storage-driver"):
            return str(self.__getattr__("store").layout.root)  # validated by the engine
        return store_paths(self._globals.get("--root"), self._globals.get("--runroot"))[0]

    def __getattr__(self, name: str):  # noqa: ANN204
        if self._engine is None:
            from pinnace.engine.config import resolve_config
            from pinnace.engine.local import LocalEngine
            self._engine = LocalEngine(resolve_config(self._globals.get("--root"), self._globals.get("--runroot"),
                                                      self._globals.get("--storage-driver")))
        return getattr(self._engine, name)


def run_command(globals_: dict[str, str | None], cmd: Command, fn, args: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.errors import run_guarded

    def invoke() -> int:
        try:
            opts, positional = parse(cmd, args)
        except HelpRequested:
            return print_help(cmd)
        eng = _EngineRef(globals_)
        try:
            return fn(eng, opts, positional)
        finally:
            sys.stdout.flush()
    return run_guarded(invoke)
