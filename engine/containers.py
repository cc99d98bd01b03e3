"""Container lifecycle: start, stop, kill, remove, wait, list, rename, prune, cleanup.

State changes happen under the container's lock (`lock` in its directory) after re-reading state.json;
liveness is checked against /proc (runtime/ctrstate.py), so a supervisor or container killed with -9 is
seen for what it is and `rm -f`/`container cleanup` can finish the job.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from pinnace.engine.store import Store
from pinnace.errors import Conflict, InvalidArgument, NotFound, PinnaceError
from pinnace.runtime import ctrstate
from pinnace.runtime.ctrstate import effective_state, is_running  # noqa: F401 - part of this module's API
from pinnace.storage.containers import ContainerRecord, ContainerStore

STOP_MARK = "stop-requested"


@dataclass(frozen=True)
class Container:
    rec: ContainerRecord
    dir: Path

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def name(self) -> str:
        return self.rec.name

    def state(self) -> dict:
        return effective_state(str(self.dir))

    def spec(self) -> dict:
        import json
        try:
            return json.loads((self.dir / "config.json").read_text())
        except (OSError, ValueError):
            return {}


def containers(store: Store) -> ContainerStore:
    return ContainerStore(store.layout, store.db)


def get(store: Store, text: str) -> Container:
    if not store.layout.db_path.exists():
        raise NotFound(f"no such container {text}")
    rec = containers(store).get(text)
    return Container(rec, store.layout.containers_dir / rec.id)


@contextmanager
def locked(c: Container) -> Iterator[None]:
    """The container's lock (its supervisor takes it too, to clean up after the exit)."""
    from pinnace.storage.locks import FileLock
    lock = FileLock(c.dir / "lock")
    try:
        lock.acquire()
    except FileNotFoundError:
        raise NotFound(f"no such container {c.name}") from None
    try:
        yield
    finally:
        lock.release()


# -- start ---------------------------------------------------------------------------------------------
def start(store: Store, text: str, *, attach: bool = False) -> tuple[Container, int | None]:
    """Start a created or exited container; with `attach`, return the socket the caller attaches with
    (the supervisor is forked from this process then, which saves an exec)."""
    import socket
    from pinnace.engine.container_create import mount_rootfs
    from pinnace.runtime.supervisor import start_supervisor
    store.open_for_write()
    c = get(store, text)
    with locked(c):
        state = c.state()
        if is_running(state):
            if attach:
                raise Conflict(f"container {c.name} is already running")
            return c, None
        if state.get("status") == ctrstate.RESTARTING and not attach:
            return c, None  # its supervisor starts it again by itself
        if state.get("status") in (ctrstate.STOPPING, ctrstate.RESTARTING):
            raise Conflict(f"container {c.name} is {state['status']}: try again")
        spec = c.spec()
        if not spec:
            raise PinnaceError(f"container {c.name} was not completely created (its CLI was killed?): remove it")
        try:
            os.unlink(c.dir / STOP_MARK)
        except FileNotFoundError:
            pass
        rec = store.images.get(c.rec.image_id)
        if rec is None:
            raise PinnaceError(f"the image of container {c.name} is gone")
        mount_rootfs(store, c.dir, [store.layout.layer_path(l.diff_id).name for l in rec.layers],
                     volatile=bool(c.rec.record.get("Options", {}).get("autoremove")))
        _create_cgroup(store, c, spec)
        mine = theirs = None
        if attach:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        store.close_db()  # the forked supervisor must not share our SQLite connection
        try:
            start_supervisor(str(c.dir), str(store.layout.runroot), fresh=not attach,
                             client_fd=theirs.fileno() if theirs else None)
        finally:
            if theirs is not None:
                theirs.close()
    return c, mine.detach() if mine is not None else None


def _create_cgroup(store: Store, c: Container, spec: dict) -> None:
    import json
    # Like Podman, every container gets a cgroup where this user may create one (pause and stats need it)
    resources = spec.get("linux", {}).get("resources") or {}
    if store.config.rootless and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return  # v1 or hybrid: never delegated to a user (cgroups.probe says why when limits are asked)
    from pinnace.runtime import cgroups
    support = cgroups.probe(store.config.rootless)
    if not support.manageable:
        return
    cg = cgroups.create(c.id, resources, rootless=store.config.rootless, support=support)
    ann = spec.setdefault("annotations", {})
    if cg is None:
        ann.pop("io.pinnace.cgroup", None)
    else:
        ann["io.pinnace.cgroup"] = json.dumps(cgroups.to_json(cg))
    tmp = c.dir / ".config.json.tmp"
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, c.dir / "config.json")


def cgroup_of(c: Container):  # noqa: ANN201 - cgroups.ContainerCgroup | None
    import json
    raw = c.spec().get("annotations", {}).get("io.pinnace.cgroup")
    if not raw:
        return None
    from pinnace.runtime import cgroups
    return cgroups.from_json(json.loads(raw))


# -- signals ---------------------------------------------------------------------------------------------
def parse_signal(text: str | int | None, default: int = signal.SIGTERM) -> int:
    if text is None or text == "":
        return default
    if isinstance(text, int) or str(text).isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise InvalidArgument(f"invalid signal {text}")
        return number
    name = str(text).upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"invalid signal {text!r}") from None


def _signal(c: Container, state: dict, sig: int) -> None:
    pid = state.get("pid")
    if not ctrstate.alive(pid, state.get("pid_start")):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def kill(store: Store, text: str, sig: int) -> Container:
    store.join_userns()  # processes of other container uids are signalled from inside the namespace
    c = get(store, text)
    state = c.state()
    if not is_running(state):
        raise Conflict(f"container {c.name} is not running")
    (c.dir / STOP_MARK).touch()
    _signal(c, state, sig)
    return c


def stop(store: Store, text: str, timeout: float | None = None) -> Container:
    """Docker's stop: the stop signal, `timeout` seconds (default the container's --stop-timeout or 10),
    then SIGKILL; returns when the supervisor has cleaned up."""
    store.join_userns()
    c = get(store, text)
    state = c.state()
    if not is_running(state):
        if state.get("status") == ctrstate.RESTARTING:
            (c.dir / STOP_MARK).touch()  # between two runs: the supervisor sees it and ends
        if state.get("status") in (ctrstate.STOPPING, ctrstate.RESTARTING):
            _wait_supervisor(state, 10)
        return c
    opts = c.rec.record.get("Options", {})
    if timeout is None:
        timeout = opts.get("stop_timeout") if opts.get("stop_timeout") is not None else 10
    (c.dir / STOP_MARK).touch()
    if state.get("status") == ctrstate.PAUSED:
        unpause(store, c.id)
    if timeout > 0:
        _signal(c, state, parse_signal(opts.get("stop_signal")))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and ctrstate.alive(state.get("pid"), state.get("pid_start")):
            time.sleep(0.01)
    _signal(c, state, signal.SIGKILL)
    if not _wait_supervisor(state, 10):
        # no supervisor (killed with -9): finish its job
        cleanup(store, c.id)
    return c


def _wait_supervisor(state: dict, timeout: float) -> bool:
    """Wait until the supervisor recorded the exit and cleaned up; False if there is no live supervisor."""
    pid, start_ = state.get("supervisor_pid"), state.get("supervisor_start")
    if not ctrstate.alive(pid, start_):
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ctrstate.alive(pid, start_):
            return True
        time.sleep(0.005)
    return True


def cleanup(store: Store, text: str) -> Container:
    """`container cleanup`: finish what a dead supervisor could not (record the exit, unmount, --rm)."""
    from pinnace.engine.container_cleanup import release_resources, remove_container
    store.open_for_write()
    c = get(store, text)
    with locked(c):
        state = c.state()
        if is_running(state) and not state.get("orphaned"):
            return c
        if is_running(state):  # the supervisor died but the container lives on: stop it
            _signal(c, state, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and ctrstate.alive(state.get("pid"), state.get("pid_start")):
                time.sleep(0.01)
        if state.get("orphaned") or state.get("status") != ctrstate.CREATED:
            ctrstate.update_state(str(c.dir), status=ctrstate.EXITED, pid=0, supervisor_pid=0,
                                  exit_code=state.get("exit_code", -1) if state.get("status") == ctrstate.EXITED else 137,
                                  finished_at=state.get("finished_at") or ctrstate.now_rfc3339())
        if c.rec.record.get("Options", {}).get("autoremove"):
            remove_container(store, c.id, volumes=True)
        else:
            release_resources(c.dir)
    return c


# -- remove ----------------------------------------------------------------------------------------------
def remove(store: Store, text: str, *, force: bool = False, volumes: bool = False,
           timeout: float | None = None) -> str:
    from pinnace.engine.container_cleanup import remove_container
    store.open_for_write()
    c = get(store, text)
    state = c.state()
    if is_running(state) or state.get("status") in (ctrstate.STOPPING, ctrstate.RESTARTING):
        if not force:
            raise Conflict(f"cannot remove container {c.name} as it is {state.get('status')}: stop it first or "
                           "use --force")
        stop(store, c.id, 0 if timeout is None else timeout)
        if not c.dir.exists():
            return c.id  # it was a --rm container: its supervisor removed it
    with locked(c):
        remove_container(store, c.id, volumes=volumes)
    return c.id


def rename(store: Store, text: str, new: str) -> None:
    store.open_for_write()
    c = get(store, text)
    containers(store).rename(c.id, new)


def prune(store: Store, filters: tuple[str, ...] = ()) -> list[str]:
    from pinnace.engine.image_list import parse_filters
    parsed = parse_filters(filters, ("label", "until"), "container prune")
    removed = []
    for s in list_containers(store, all=True):
        if s.status not in (ctrstate.EXITED, ctrstate.CREATED):
            continue
        if not _matches_prune(s, parsed):
            continue
        try:
            remove(store, s.id)
            removed.append(s.id)
        except NotFound:
            pass
    return removed


def _matches_prune(s, parsed: list[tuple[str, str]]) -> bool:  # noqa: ANN001
    for key, value in parsed:
        if key == "label":
            k, sep, v = value.partition("=")
            if k not in s.labels or (sep and s.labels[k] != v):
                return False
        elif key == "until" and s.created >= _until(value):
            return False
    return True


def _until(value: str) -> float:
    """A unix time, or a duration before now (`24h`, `90m`, `30s`)."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if value[-1:] in units:
            return time.time() - float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise InvalidArgument(f"invalid until filter {value!r} (a unix time or a duration like 24h)") from None


# -- wait ------------------------------------------------------------------------------------------------
def wait(store: Store, text: str, conditions: tuple[str, ...] = ("stopped",)) -> int:
    """Block until the container exits; its exit code. Listens on the attach socket (no polling) while
    a supervisor lives."""
    c = get(store, text)
    for cond in conditions:
        if cond not in ("stopped", "exited", "not-running", "running", "created"):
            raise InvalidArgument(f"invalid wait condition {cond!r}")
    while True:
        state = c.state()
        status = state.get("status")
        if status in conditions or ("running" in conditions and status == ctrstate.RUNNING):
            return int(state.get("exit_code") or 0) if status != ctrstate.RUNNING else 0
        if status in (ctrstate.EXITED, ctrstate.RESTARTING) and set(conditions) & {"stopped", "exited", "not-running"}:
            return int(state.get("exit_code", -1))
        if status == ctrstate.CREATED and "not-running" in conditions:
            return 0
        if status in (ctrstate.RUNNING, ctrstate.PAUSED) and not state.get("orphaned"):
            code = _wait_on_socket(c)
            if code is not None:
                _wait_supervisor(state, 10)
                continue
        if not c.dir.exists():
            raise NotFound(f"no such container {text} (removed while waiting)")
        time.sleep(0.05)


def _wait_on_socket(c: Container) -> int | None:
    import socket
    from pinnace.runtime import attach_proto as proto
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(c.dir)
        sock.connect("attach")
    except OSError:
        sock.close()
        return None
    finally:
        os.fchdir(cwd)
        os.close(cwd)
    reader = proto.FrameReader()
    with sock:
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            for kind, payload in reader.feed(data):
                if kind == proto.EXIT:
                    return int(payload)


def connect_attach(c: Container) -> int:
    """A connection to the container's supervisor, for `attach` / `start -a`."""
    import socket
    state = c.state()
    if not is_running(state):
        raise Conflict(f"you cannot attach to a stopped container {c.name}: start it first")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(c.dir)
        sock.connect("attach")
    except OSError as exc:
        sock.close()
        raise PinnaceError(f"cannot attach to container {c.name}: {exc.strerror}") from None
    finally:
        os.fchdir(cwd)
        os.close(cwd)
    return sock.detach()


# -- pause -----------------------------------------------------------------------------------------------
def pause(store: Store, text: str) -> Container:
    from pinnace.runtime import cgroups
    store.join_userns()
    c = get(store, text)
    with locked(c):
        state = c.state()
        if state.get("status") != ctrstate.RUNNING:
            raise Conflict(f"container {c.name} is not running")
        cg = cgroup_of(c)
        if cg is None:
            reason = cgroups.probe(store.config.rootless).reason or "the container has no cgroup"
            raise PinnaceError(f"pause needs a cgroup freezer, which this container does not have: {reason}")
        cgroups.freeze(cg)
        ctrstate.update_state(str(c.dir), status=ctrstate.PAUSED)
    return c


def unpause(store: Store, text: str) -> Container:
    from pinnace.runtime import cgroups
    store.join_userns()
    c = get(store, text)
    state = c.state()
    if state.get("status") != ctrstate.PAUSED:
        raise Conflict(f"container {c.name} is not paused")
    cg = cgroup_of(c)
    if cg is not None:
        cgroups.thaw(cg)
    ctrstate.update_state(str(c.dir), status=ctrstate.RUNNING)
    return c


# -- listing ---------------------------------------------------------------------------------------------
def list_containers(store: Store, *, all: bool = False, filters: tuple[str, ...] = ()):  # noqa: ANN201
    from pinnace.engine.container_view import list_containers as _list
    return _list(store, all=all, filters=filters)
