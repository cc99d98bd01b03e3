"""The container commands (`run`, `ps`, `exec`, … and `container …`), parsed by cli/flags.py without
typer: they are the hot path. Each handler turns flags into engine calls and prints the result."""
from __future__ import annotations

import os
import sys

from pinnace.cli.container_run import (CREATE_FLAGS, cmd_attach, cmd_create, cmd_exec, cmd_run,  # noqa: F401
                                      cmd_start)
from pinnace.cli.errors import each_name, require_names
from pinnace.cli.flags import BOOL, LIST, VALUE, Command, Flag, HelpRequested, parse, print_help, to_int
from pinnace.errors import InvalidArgument, NotFound

F = Flag
_FORMAT = F(("--format",), "format", VALUE, "json, table, or a Go template", "FORMAT")

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
    if o["all"] and not targets:
        return 0

    def stop(n: str) -> str | None:
        try:
            eng.container_stop(n, t)
        except NotFound:
            if o["ignore"]:  # issue 7: a unit's ExecStop for a container that is already gone
                return None
            raise
        return n
    return each_name(targets, stop)


def cmd_restart(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    t = _timeout(o)
    return each_name(_all_names(eng, o, positional, running=True),
                 lambda n: (eng.container_stop(n, t), eng.container_start(n), n)[2])


def cmd_kill(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return each_name(_all_names(eng, o, positional, running=True), lambda n: (eng.container_kill(n, o["signal"]), n)[1])


def _all_names(eng, o: dict, positional: list[str], running: bool = False) -> list[str]:  # noqa: ANN001
    if o.get("all") and o.get("filter"):  # issue 7: `stop --all --filter restart-policy=always`
        from pinnace.cli.container_run import names_matching
        return names_matching(eng, o["filter"], all=not running)
    if o.get("all"):
        return [s.id for s in eng.container_list(all=not running)]
    if o.get("latest"):
        rows = eng.container_list(all=True)
        return [rows[0].id] if rows else []
    return require_names(positional)


def cmd_rm(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    t = _timeout(o)
    names = _all_names(eng, o, positional)
    from pinnace.errors import Conflict, NotFound

    def rm(n: str) -> str | None:
        try:
            eng.container_remove(n, force=o["force"], volumes=o["volumes"], timeout=t)
        except NotFound as exc:
            if o["ignore"]:
                return None
            exc.exit_code = 1  # Podman's and Docker's code for "no such container"
            raise
        except Conflict as exc:
            exc.exit_code = 2  # Podman's code for "running: use --force"
            raise
        return n
    return each_name(names, rm) if names else 0


def cmd_ps(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.container_view import render_ps
    from pinnace.engine.container_list import list_containers  # what LocalEngine.container_list calls
    rows = list_containers(eng.root, all=o["all"] or bool(o["latest"]) or o["last"] is not None,
                           filters=tuple(o["filter"]))
    if o["latest"]:
        rows = rows[:1]
    if o["last"] is not None:
        rows = rows[:max(0, to_int(o["last"], "--last"))]
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
    tail = None if o["tail"] in (None, "all", "-1") else to_int(o["tail"], "--tail")
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


def cmd_wait(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    conditions = tuple(o["condition"]) or ("stopped",)
    return each_name(positional, lambda n: eng.container_wait(n, conditions))


def cmd_inspect(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.cli.output import print_json
    from pinnace.errors import NotFound, PinnaceError
    kind = o.get("type") or "all"
    if kind not in ("all", "container", "image"):
        raise InvalidArgument(f"invalid --type {kind!r} (container, image)")
    data, failures = [], []
    for name in require_names(positional, "object"):
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
    """Docker's `port`: "80/tcp -> 0.0.0.0:8080" per binding; `port C 80[/udp]` prints the addresses only."""
    if not positional or len(positional) > 2:
        raise InvalidArgument("port takes a container and optionally PRIVATE_PORT[/PROTO]")
    info = eng.container_inspect(positional[0])
    ports = info["NetworkSettings"].get("Ports") or {}
    private = positional[1] if len(positional) == 2 else None
    if private is not None and "/" not in private:
        private += "/tcp"
    lines = []
    for key, bindings in ports.items():
        if private is not None and key != private:
            continue
        for b in bindings or []:
            ip = b.get("HostIp") or "0.0.0.0"
            address = f"[{ip}]:{b['HostPort']}" if ":" in ip else f"{ip}:{b['HostPort']}"
            lines.append(address if private else f"{key} -> {address}")
    if private is not None and not lines:
        raise NotFound(f"No public port '{private}' published for {positional[0]}")
    for line in lines:
        print(line)
    return 0


def cmd_rename(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    if len(positional) != 2:
        raise InvalidArgument("rename takes a container and its new name")
    eng.container_rename(positional[0], positional[1])
    return 0


def cmd_pause(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return each_name(positional, lambda n: (eng.container_pause(n), n)[1])


def cmd_unpause(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return each_name(positional, lambda n: (eng.container_unpause(n), n)[1])


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
    return each_name(positional, lambda n: str(eng.container_mount(n)))


def cmd_unmount(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    return each_name(positional, lambda n: (eng.container_unmount(n), n)[1])


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
    return each_name(_all_names(eng, o, positional), lambda n: (eng.container_cleanup(n), n)[1])


def cmd_exists(eng, o: dict, positional: list[str]) -> int:  # noqa: ANN001
    from pinnace.errors import NotFound
    try:
        eng.container_inspect(require_names(positional)[0])
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
    F(("--all",), "all", BOOL, "All containers (with --filter: those that match)"), _FILTER,
    F(("-a", "--attach"), "attach", BOOL, "Attach to the container's output"),
    F(("-i", "--interactive"), "interactive", BOOL, "Attach stdin"),
    F(("--detach-keys",), "detach_keys", VALUE, "Keys that detach", "KEYS"))), cmd_start)
_add(Command("attach", "attach [OPTIONS] CONTAINER", "Attach to a running container's stdio.", (
    F(("--no-stdin",), "no_stdin", BOOL, "Do not attach stdin"),
    F(("--sig-proxy",), "sig_proxy", BOOL, "Forward signals (default true)", default=True),
    F(("--detach-keys",), "detach_keys", VALUE, "Keys that detach", "KEYS"))), cmd_attach)
_add(Command("stop", "stop [OPTIONS] CONTAINER...", "Stop containers (stop signal, then SIGKILL).", (
    _T, _ALL, _LATEST, _FILTER,
    F(("-i", "--ignore"), "ignore", BOOL, "Ignore containers that do not exist"))), cmd_stop)
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


def _add_build_push() -> None:
    from pinnace.cli.build_push_cmds import BUILD, PUSH, cmd_build, cmd_push
    _add(BUILD, cmd_build)
    _add(PUSH, cmd_push)


_add_build_push()


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
