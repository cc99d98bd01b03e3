"""The per-container supervisor (conmon's job).

One per running container, detached from the CLI (setsid, stdio on /dev/null), a child subreaper. It
starts the container (`executor.start(direct=True)`, so the container's init is its own child), holds the
container's stdio (pipes, or a pty with `-t`), writes the log, serves the `attach` socket (frames of
runtime/attach_proto.py), runs healthchecks, records the state (`state.json`) and, when the container
exits, applies the restart policy or cleans up: unmount, `--rm`, then tells attached clients the exit code.
That last callback is what keeps pinnace daemonless.

Two ways in: `run` (attached) forks it from the CLI without exec — the CLI has already joined the
namespaces and loaded the modules, so the container starts ~25 ms sooner; `run -d`/`start` exec a fresh
`pinnace __supervise DIR SYNC_FD` which imports only what it needs (~11 MiB RSS idle).
Configuration comes from the annotations of config.json (io.pinnace.*), written by the engine.
"""
from __future__ import annotations

import json
import os
import _socket  # not `socket`: its enums and selectors cost a supervisor ~1 MB of RSS
import signal
import time

from pinnace.runtime import attach_proto as proto
from pinnace.runtime import ctrstate

LOG_NAME, CONFIG_NAME, SOCKET_NAME, LOCK_NAME = "ctr.log", "config.json", "attach", "lock"
STOP_MARK = "stop-requested"      # `stop`/`kill` leave it: a restart policy does not apply afterwards
HEALTH_NAME = "health.json"
PENDING_LIMIT = 8 << 20           # bytes a client may fall behind before it is dropped
ANN = "io.pinnace."


def _wait(readable: list[int], writable: list[int], timeout: float | None) -> tuple[list[int], list[int]]:
    """poll(2) for the loop (select() cannot watch fds above 1023, which a busy relay reaches)."""
    import select
    poller = select.poll()
    rset, wset = set(readable), set(writable)
    for fd in rset | wset:
        poller.register(fd, (select.POLLIN if fd in rset else 0) | (select.POLLOUT if fd in wset else 0))
    ready, out = [], []
    try:
        events = poller.poll(None if timeout is None else int(timeout * 1000 + 0.999))
    except InterruptedError:
        return [], []
    for fd, mask in events:
        if mask & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL) and fd in rset:
            ready.append(fd)
        if mask & (select.POLLOUT | select.POLLERR | select.POLLHUP) and fd in wset:
            out.append(fd)
    return ready, out


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def start_supervisor(container_dir: str, runroot: str, *, fresh: bool, client_fd: int | None = None,
                     timeout: float = 30.0) -> tuple[int, int]:
    """Start the supervisor of the container in `container_dir`; return (supervisor pid, container pid).
    `fresh`: exec a new small process (detached containers); else fork this one (attached `run`).
    `client_fd`: a socket that becomes the first attached client (the other end stays with the caller).
    Must be called from a single-threaded process that has joined the user namespace (rootless)."""
    from pinnace.errors import PinnaceError
    from pinnace.runtime.selfexec import detach, read_answer, role_argv
    read_fd, write_fd = os.pipe()
    keep = {write_fd} | ({client_fd} if client_fd is not None else set())
    child = os.fork()
    if child == 0:
        code = 127
        try:
            detach(keep)
            if os.fork() != 0:
                os._exit(0)  # the supervisor is reparented at once: nobody has to reap it
            if fresh:
                os.set_inheritable(write_fd, True)
                argv = role_argv("__supervise", container_dir, runroot, str(write_fd))
                os.execv(argv[0], argv)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGWINCH):
                signal.signal(sig, signal.SIG_IGN if sig == signal.SIGPIPE else signal.SIG_DFL)
            code = supervise(container_dir, write_fd, client_fd)
        except BaseException:  # noqa: BLE001 - a forked child never returns into the CLI
            pass
        finally:
            os._exit(code)
    os.close(write_fd)
    os.waitpid(child, 0)
    message = read_answer(read_fd, timeout)
    if message.startswith("started "):
        _, sup, pid = message.split()
        return int(sup), int(pid)
    raise PinnaceError(f"the container supervisor failed to start: {message.removeprefix('error ') or 'no answer'}")


def main(argv: list[str]) -> int:
    """Entry point of the hidden `__supervise DIR RUNROOT SYNC_FD` role (dispatched first in __main__)."""
    container_dir, runroot, sync_fd = argv[0], argv[1], int(argv[2])
    try:
        if os.geteuid() != 0:
            from pinnace.runtime.nsjoin import join_existing
            if not join_existing(runroot):  # first: setns needs a single thread
                from pinnace.runtime.userns import ensure_joined  # the holder went away: start one
                ensure_joined(runroot)
    except BaseException as exc:  # noqa: BLE001 - told to the starter, which reports it
        os.write(sync_fd, f"error {exc}".encode())
        return 1
    return supervise(container_dir, sync_fd, None)


def supervise(container_dir: str, sync_fd: int, client_fd: int | None) -> int:
    try:
        sup = Supervisor(container_dir, client_fd)
        pid = sup.launch()
    except BaseException as exc:  # noqa: BLE001
        try:
            os.write(sync_fd, f"error {exc}".encode())
        except OSError:
            pass
        return 1
    sup.notify.started(os.getpid())  # before "started": systemd knows its main pid before `run` exits
    os.write(sync_fd, f"started {os.getpid()} {pid}\n".encode())
    os.close(sync_fd)
    return sup.loop()


class Supervisor:
    def __init__(self, container_dir: str, client_fd: int | None):
        from pinnace.runtime import syscalls
        from pinnace.runtime.logfile import LogWriter
        self.dir = container_dir
        os.chdir(container_dir)  # the attach socket is bound by relative name: sun_path is only 108 bytes
        with open(CONFIG_NAME) as f:
            self.spec = json.load(f)
        from pinnace.runtime.sdnotify import Notifier  # systemd's NOTIFY_SOCKET (run --sdnotify)
        self.notify = Notifier.from_spec(self.spec, container_dir)
        ann = self.spec.get("annotations", {})
        self.tty = bool(self.spec["process"].get("terminal"))
        self.open_stdin = ann.get(ANN + "stdin") == "true"
        self.restart = ann.get(ANN + "restart", "no") or "no"
        self.autoremove = ann.get(ANN + "autoremove") == "true"
        max_size = int(ann.get(ANN + "log-max-size") or 0)
        self.log = LogWriter(os.path.join(container_dir, LOG_NAME), max_size or None)
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)  # orphans of the container come back to us
        self.clients: dict[int, proto.FrameReader] = {}
        # output a client has not taken yet: a stopped `attach` must not stall the container or its log
        self.pending: dict[int, bytearray] = {}
        if client_fd is not None:
            self.clients[client_fd] = proto.FrameReader()
            os.set_blocking(client_fd, False)
        _unlink_quietly(SOCKET_NAME)
        self.listener = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(SOCKET_NAME)
        finally:
            os.umask(old)
        self.listener.listen(16)
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.outputs: dict[int, str] = {}
        self.stdin_fd: int | None = None
        self.master: int | None = None
        self.early_status: int | None = None
        self.net = None     # net.container_net.ContainerNetwork: relays, DNS, published ports
        if not ann.get(ANN + "runtime") and ann.get(ANN + "network"):
            from pinnace.net.container_net import ContainerNetwork
            self.net = ContainerNetwork.from_spec(self.spec, container_dir)
            import resource  # a relay holds two fds per connection: the soft limit (often 1024) is too low
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
            if soft != resource.RLIM_INFINITY and want > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        self.pid = self.init_pid = 0   # the process we wait for; the container's init (differ with --runtime)
        self.restarts = int(ctrstate.read_state(container_dir).get("restart_count") or 0)
        self.health = None
        self.health_pid = 0
        self.health_fd: int | None = None

    # -- the container ------------------------------------------------------------------------------
    def _health_monitor(self, raw: str | None):  # noqa: ANN202 - HealthMonitor | None
        if not raw:
            return None
        from pinnace.runtime import health
        return health.HealthMonitor(os.path.join(self.dir, HEALTH_NAME), health.from_json(json.loads(raw)),
                                    self.spec["process"])

    def launch(self) -> int:
        from pinnace.runtime import executor
        null = os.open("/dev/null", os.O_RDWR)
        child_fds = [null]
        try:
            if self.tty:
                self.master, slave = os.openpty()
                child_fds.append(slave)
                stdio = (slave, slave, slave)
                self.outputs = {self.master: "stdout"}
                self.stdin_fd = self.master
            else:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                child_fds += [out_w, err_w]
                stdin = null
                if self.open_stdin:
                    in_r, self.stdin_fd = os.pipe()
                    child_fds.append(in_r)
                    stdin = in_r
                stdio = (stdin, out_w, err_w)
                self.outputs = {out_r: "stdout", err_r: "stderr"}
            runtime = self.spec.get("annotations", {}).get(ANN + "runtime")
            if runtime:
                from pinnace.runtime.external_runtime import start_external
                self.pid, self.init_pid, self.early_status = start_external(
                    runtime, self.dir, self.spec["annotations"][ANN + "id"], stdio)
            else:
                handoff: list[int] = []
                plan = self.net.prepare() if self.net is not None else None
                pid = 0
                try:
                    ready = (lambda fds: self.net.started(0, fds)) if plan and plan.get("wait") else None
                    pid = executor.start(self.spec, stdio, direct=True, handoff=handoff, network=plan,
                                         network_ready=ready)
                    if self.net is not None and ready is None:
                        self.net.started(pid, handoff)
                except BaseException:
                    if self.net is not None:
                        if pid:
                            _kill_quietly(pid)
                        self.net.release()
                    raise
                self.pid = self.init_pid = pid
        finally:
            for fd in child_fds:
                os.close(fd)
        init = self.init_pid
        # a new monitor for each start: Docker's health goes back to "starting"
        self.health = self._health_monitor(self.spec.get("annotations", {}).get(ANN + "health"))
        if self.net is not None:
            ctrstate.update_state(self.dir, network=self.net.state())
        ctrstate.update_state(self.dir, status=ctrstate.RUNNING, pid=init, pid_start=ctrstate.start_time(init),
                              supervisor_pid=os.getpid(), supervisor_start=ctrstate.start_time(os.getpid()),
                              started_at=ctrstate.now_rfc3339(), restart_count=self.restarts, error="")
        return self.pid

    def loop(self) -> int:
        try:
            return self._loop()
        except BaseException as exc:  # noqa: BLE001 - a supervisor bug must not leave a running orphan
            try:
                ctrstate.update_state(self.dir, error=f"supervisor failed: {type(exc).__name__}: {exc}")
                if self.init_pid:
                    os.kill(self.init_pid, signal.SIGKILL)
            except OSError:
                pass
            self._finish(125)
            return 1

    def _loop(self) -> int:
        while True:
            started = time.monotonic()
            code = self._run_until_exit()
            if self._should_restart(code):
                self.restarts += 1
                ran = time.monotonic() - started
                delay = 0.1 * (2 ** min(self.restarts - 1, 9)) if ran < 10 else 0.1  # Docker's backoff
                ctrstate.update_state(self.dir, status=ctrstate.RESTARTING, exit_code=code, pid=0,
                                      finished_at=ctrstate.now_rfc3339(), restart_count=self.restarts)
                self._send_exit(code)
                deadline = time.monotonic() + min(delay, 60.0)
                while time.monotonic() < deadline and not self._stop_requested():
                    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))  # `stop` cuts the wait short
                if self._stop_requested():
                    break
                try:
                    self.launch()
                    continue
                except BaseException as exc:  # noqa: BLE001
                    ctrstate.update_state(self.dir, error=f"restart failed: {exc}")
                    code = 125
            break
        self._finish(code)
        return 0

    def _stop_requested(self) -> bool:
        return os.path.exists(STOP_MARK)

    def _should_restart(self, code: int) -> bool:
        if self._stop_requested():
            return False
        policy, _, count = self.restart.partition(":")
        if policy in ("always", "unless-stopped"):
            return True
        if policy == "on-failure" and code != 0:
            return not count or self.restarts < int(count)
        return False

    # -- the event loop -----------------------------------------------------------------------------
    def _run_until_exit(self) -> int:
        code: int | None = None
        if self.early_status is not None:
            from pinnace.runtime.executor import _exit_code
            code, self.early_status = _exit_code(self.early_status), None
        while code is None or self.outputs:
            fds = [self.wake_r, self.listener.fileno(), *self.clients, *self.outputs]
            if self.health_fd is not None:
                fds.append(self.health_fd)
            if self.notify.fd is not None:
                fds.append(self.notify.fd)
            timeout = None
            if self.health is not None and code is None:
                timeout = max(0.0, self.health.due(time.monotonic()))
            if code is not None:
                timeout = 0.5  # draining: a process that kept the pipe open after init died
            want_write = [c for c, buf in self.pending.items() if buf]
            net_r: list[int] = []
            if self.net is not None and code is None:
                net_r, net_w = self.net.fds()
                fds += net_r
                want_write += net_w
                wait = self.net.tick()
                if wait is not None:
                    timeout = wait if timeout is None else min(timeout, wait)
            ready, writable = _wait(fds, want_write, timeout)
            for fd in writable:
                if fd in self.pending:
                    self._flush(fd)
                else:
                    self.net.on_writable(fd)
            if net_r:
                net_set = set(net_r)
                for fd in [f for f in ready if f in net_set]:
                    self.net.on_readable(fd)
                ready = [f for f in ready if f not in net_set]
            if not ready and code is not None:
                break
            for fd in ready:
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 512)
                    except BlockingIOError:
                        pass
                elif fd == self.listener.fileno():
                    conn, _ = self.listener._accept()
                    os.set_inheritable(conn, False)
                    os.set_blocking(conn, False)
                    self.clients[conn] = proto.FrameReader()
                elif fd in self.clients:
                    self._client_input(fd)
                elif fd in self.outputs:
                    self._copy_output(fd)
                elif fd == self.health_fd:
                    self._health_output()
                elif fd == self.notify.fd:
                    self.notify.forward()
            reaped = self._reap()
            if reaped is not None and code is None:
                code = reaped
            if self.health is not None and code is None:
                self._health_tick()
        if self.net is not None:
            self.net.stopped()  # the namespace is gone with the container: its connections end here
        if self.health is not None:
            self.health.close()  # a check still running is killed with its process group
            if self.health_fd is not None:
                os.close(self.health_fd)
                self.health_fd = None
            self.health_pid = 0
        for fd in list(self.outputs):
            os.close(fd)
        self.outputs = {}
        if self.stdin_fd is not None and self.stdin_fd != self.master:
            os.close(self.stdin_fd)
        if self.master is not None:
            os.close(self.master)
        self.stdin_fd = self.master = None
        return code

    def _reap(self) -> int | None:
        from pinnace.runtime.executor import _exit_code
        code = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == self.pid:
                code = _exit_code(status)
            elif pid == self.health_pid and self.health is not None:
                self.health.on_exit(status)
                self.health_pid = 0
        return code

    def _copy_output(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the pty's last holder closed it
            data = b""
        if not data:
            os.close(fd)
            del self.outputs[fd]
            if fd == self.master:
                self.master = self.stdin_fd = None
            return
        stream = self.outputs[fd]
        self.log.write(stream, data)
        payload = proto.frame(proto.OUT if stream == "stdout" else proto.ERR, data)
        for client in list(self.clients):
            self._send(client, payload)

    def _send(self, client: int, payload: bytes) -> None:
        buf = self.pending.setdefault(client, bytearray())
        buf += payload
        self._flush(client)
        if len(self.pending.get(client, b"")) > PENDING_LIMIT:
            self._drop(client)  # a client that stopped reading is let go, as a slow `docker attach` would be

    def _flush(self, client: int) -> None:
        buf = self.pending.get(client)
        while buf:
            try:
                del buf[:os.write(client, buf)]
            except BlockingIOError:
                return
            except OSError:
                self._drop(client)
                return

    def _drop(self, client: int) -> None:
        self.clients.pop(client, None)
        self.pending.pop(client, None)
        try:
            os.close(client)
        except OSError:
            pass

    def _client_input(self, client: int) -> None:
        try:
            data = os.read(client, 65536)
            frames = self.clients[client].feed(data) if data else None
        except (OSError, ValueError):
            frames = None
        if frames is None:  # the client went away (or detached): the container goes on
            self._drop(client)
            return
        for kind, payload in frames:
            if kind == proto.STDIN and self.stdin_fd is not None:
                try:
                    proto.send_all(self.stdin_fd, payload)
                except OSError:
                    pass
            elif kind == proto.STDIN_EOF and self.stdin_fd is not None and not self.tty:
                os.close(self.stdin_fd)
                self.stdin_fd = None
            elif kind == proto.RESIZE and self.master is not None:
                import fcntl
                import struct
                import termios
                rows, cols = proto.parse_resize(payload)
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            elif kind == proto.SIGNAL and payload and self.init_pid:
                try:
                    os.kill(self.init_pid, payload[0])
                except ProcessLookupError:
                    pass

    # -- healthchecks -------------------------------------------------------------------------------
    def _health_tick(self) -> None:
        now = time.monotonic()
        self.health.tick(now)
        if self.health_pid == 0 and self.health.due(now) <= 0:
            started = self.health.start(self.init_pid)
            if started is not None:
                self.health_pid, self.health_fd = started

    def _health_output(self) -> None:
        try:
            data = os.read(self.health_fd, 65536)
        except OSError:
            data = b""
        if data:
            self.health.on_output(data)
        else:
            os.close(self.health_fd)
            self.health_fd = None

    # -- the end ----------------------------------------------------------------------------------------
    def _send_exit(self, code: int) -> None:
        """The exit code to every client, with what they have not read yet (each gets up to 5 s)."""
        import select
        for client in list(self.clients):
            self._send(client, proto.frame(proto.EXIT, str(code).encode()))
            deadline = time.monotonic() + 5
            while self.pending.get(client) and time.monotonic() < deadline:
                select.select([], [client], [], max(0.0, deadline - time.monotonic()))
                self._flush(client)
            self._drop(client)

    def _finish(self, code: int) -> None:
        """Record the exit, then clean up under the container's lock (a concurrent `rm -f` waits for
        us), then tell attached clients: when `run --rm` returns, nothing is left."""
        self.log.close()
        self.listener.close()
        _unlink_quietly(SOCKET_NAME)
        from pinnace.storage.locks import FileLock
        error = ""
        try:
            with FileLock(LOCK_NAME):  # the lock engine/containers.locked() takes
                self._cleanup(code)
        except BaseException as exc:  # noqa: BLE001 - recorded for `inspect`; the exit code still goes out
            error = str(exc)
        if error and not self.autoremove:
            try:
                ctrstate.update_state(self.dir, error=f"cleanup: {error}")
            except OSError:
                pass
        self._send_exit(code)

    def _cleanup(self, code: int) -> None:
        if self.net is not None:
            self.net.release()
        ctrstate.update_state(self.dir, status=ctrstate.EXITED, exit_code=code, pid=0,
                              finished_at=ctrstate.now_rfc3339(), supervisor_pid=0)
        ann = self.spec.get("annotations", {})
        from pinnace.engine.container_cleanup import cleanup_after_exit
        cleanup_after_exit(ann[ANN + "root"], ann[ANN + "runroot"], ann[ANN + "id"], remove=self.autoremove)
