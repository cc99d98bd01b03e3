"""Docker healthchecks: the configuration (image `Healthcheck` merged with `--health-*`), and the monitor
the per-container supervisor drives from its select loop.

The monitor never blocks: the supervisor asks `due(now)` how long it may sleep, calls `start` when that
reaches 0, selects on the returned fd (`on_output`), reaps the returned pid (`on_exit`) and calls
`tick(now)` to kill a check that overran its timeout. Results go to `health.json` in the shape of
Docker's `State.Health`, written atomically so that `inspect` (`read_health`) never sees half a file.
`now` is always `time.monotonic()`.

Semantics are Docker's: the first check runs one interval after the container started, the next one an
interval after the previous ended; exit 0 is a success (status healthy, streak 0), anything else a
failure; failures while still `starting` inside the start period do not count; `retries` counted
failures in a row make the container unhealthy. A check over its timeout is killed (with everything it
started) and logged as exit -1.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections import namedtuple

from pinnace.errors import InvalidArgument

DEFAULT_INTERVAL, DEFAULT_TIMEOUT, DEFAULT_RETRIES, DEFAULT_START_PERIOD = 30.0, 30.0, 3, 0.0
LOG_ENTRIES, OUTPUT_LIMIT = 5, 4096
STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DIGITS = "0123456789"
_KINDS = ("CMD", "CMD-SHELL", "NONE")


class HealthConfig(namedtuple("HealthConfig", "test interval timeout retries start_period")):
    """A frozen record. A namedtuple, not a dataclass: `dataclasses` (inspect, ast, …) would add 1.5 MB to
    the RSS of every supervisor that runs healthchecks."""

    __slots__ = ()
    test: tuple[str, ...]   # Docker's form: ("CMD", prog, arg…) or ("CMD-SHELL", "shell command")
    interval: float         # seconds
    timeout: float
    retries: int
    start_period: float

    def args(self) -> list[str]:
        """The argv the check runs (CMD-SHELL through /bin/sh -c, as Docker on Linux)."""
        if self.test[0] == "CMD-SHELL":
            return ["/bin/sh", "-c", *self.test[1:]]
        return list(self.test[1:])


# ---------------------------------------------------------------------------------------------- config

def parse_duration(text: str, flag: str) -> float:
    """A Go duration (`1m30s`, `500ms`, `1.5h`, `0`) in seconds."""
    bad = InvalidArgument(f"invalid {flag} {text!r}: expected a duration such as 30s, 1m30s or 500ms")
    s, sign = text, 1.0
    if s[:1] in ("+", "-"):
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise bad
    total = 0.0
    while s:
        i = 0
        while i < len(s) and (s[i] in _DIGITS or s[i] == "."):
            i += 1
        number, s = s[:i], s[i:]
        if number.count(".") > 1 or not number.strip("."):
            raise bad
        j = 0
        while j < len(s) and s[j] not in _DIGITS and s[j] != ".":
            j += 1
        unit, s = s[:j], s[j:]
        if unit not in _UNITS:
            raise bad
        total += float(number) * _UNITS[unit]
    return sign * total


def _checked_test(test: object, where: str) -> tuple[str, ...] | None:
    """Docker's Test list validated; None for an empty list (nothing set: inherit)."""
    if not isinstance(test, (list, tuple)) or not all(isinstance(t, str) for t in test):
        raise InvalidArgument(f"invalid healthcheck test in {where}: expected a list of strings")
    if not test:
        return None
    kind = test[0]
    if kind not in _KINDS:
        raise InvalidArgument(f"invalid healthcheck test in {where}: unknown type {kind!r} "
                              "(CMD, CMD-SHELL or NONE)")
    if kind != "NONE" and (len(test) < 2 or not test[1]):
        raise InvalidArgument(f"invalid healthcheck test in {where}: {kind} needs a command")
    return tuple(test)


def _cli_test(cmd: str) -> tuple[str, ...] | None:
    """`--health-cmd`: a JSON array (["CMD", …], ["CMD-SHELL", "…"], or a bare argv) or a shell command;
    `none` disables (as Podman); "" sets nothing (as Docker)."""
    if not cmd.strip():
        return None
    if cmd.strip().lower() == "none":
        return ("NONE",)
    if cmd.lstrip().startswith("["):
        try:
            array = json.loads(cmd)
        except ValueError:
            array = None  # a shell command that starts with "[", such as `[ -f /ready ]`
        if isinstance(array, list):
            if array and isinstance(array[0], str) and array[0] not in _KINDS:
                array = ["CMD", *array]
            test = _checked_test(array, "--health-cmd")
            if test is None:
                raise InvalidArgument("invalid --health-cmd '[]': the command is empty")
            return test
    return ("CMD-SHELL", cmd)


def _seconds(flag: str, value: float) -> float:
    # Docker: negative durations are refused, and a set one must be at least 1ms; 0 means the default
    if value < 0:
        raise InvalidArgument(f"{flag} cannot be negative")
    if 0 < value < 0.001:
        raise InvalidArgument(f"{flag} must be at least 1ms")
    return value


def _image_ns(image: dict, key: str) -> float:
    value = image.get(key) or 0
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InvalidArgument(f"invalid healthcheck {key} {value!r} in the image: expected nanoseconds")
    return _seconds(f"the image's healthcheck {key}", value / 1e9)


def health_config(image_healthcheck: dict | None, *, cmd: str | None, interval: str | None, timeout: str | None,
                  retries: int | None, start_period: str | None, no_healthcheck: bool) -> HealthConfig | None:
    """The container's healthcheck: the image's `Healthcheck` (Docker JSON) overridden field by field by
    the `--health-*` options; None when there is none or it is disabled."""
    flags = {"--health-cmd": cmd, "--health-interval": interval, "--health-timeout": timeout,
             "--health-retries": retries, "--health-start-period": start_period}
    if no_healthcheck:
        given = [name for name, value in flags.items() if value is not None]
        if given:
            raise InvalidArgument(f"--no-healthcheck conflicts with {', '.join(given)}")
        return None
    image = image_healthcheck or {}
    if not isinstance(image, dict):
        raise InvalidArgument("invalid healthcheck in the image config: expected an object")
    test = _cli_test(cmd) if cmd is not None else None
    if test is None:
        test = _checked_test(image.get("Test") or [], "the image config")
    if test is None or test[0] == "NONE":
        return None

    def duration(flag: str, text: str | None, key: str, default: float) -> float:
        value = _seconds(flag, parse_duration(text, flag)) if text is not None else _image_ns(image, key)
        return value or default

    if retries is None:
        retries = image.get("Retries") or 0
        if not isinstance(retries, int) or isinstance(retries, bool):
            raise InvalidArgument(f"invalid healthcheck Retries {retries!r} in the image: expected a number")
    if retries < 0:
        raise InvalidArgument("--health-retries cannot be negative")
    return HealthConfig(test=test,
                        interval=duration("--health-interval", interval, "Interval", DEFAULT_INTERVAL),
                        timeout=duration("--health-timeout", timeout, "Timeout", DEFAULT_TIMEOUT),
                        retries=retries or DEFAULT_RETRIES,
                        start_period=duration("--health-start-period", start_period, "StartPeriod",
                                              DEFAULT_START_PERIOD))


def to_json(cfg: HealthConfig) -> dict:
    """Docker's `Config.Healthcheck` shape (durations in nanoseconds). OCI annotations are strings:
    store `json.dumps(to_json(cfg))`; `from_json` takes either."""
    return {"Test": list(cfg.test), "Interval": round(cfg.interval * 1e9), "Timeout": round(cfg.timeout * 1e9),
            "StartPeriod": round(cfg.start_period * 1e9), "Retries": cfg.retries}


def from_json(d: dict | str) -> HealthConfig:
    if isinstance(d, str):
        try:
            d = json.loads(d)
        except ValueError:
            raise InvalidArgument("invalid stored healthcheck: not JSON") from None
    cfg = health_config(d if isinstance(d, dict) else None, cmd=None, interval=None, timeout=None,
                        retries=None, start_period=None, no_healthcheck=False)
    if cfg is None:
        raise InvalidArgument("invalid stored healthcheck: it has no test")
    return cfg


# ---------------------------------------------------------------------------------------------- state

def _rfc3339(t: float) -> str:
    whole = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((t - whole) * 1e9):09d}Z"


def read_health(state_path: str) -> dict | None:
    """The `State.Health` document for `inspect`, or None when the container has no (readable) one."""
    try:
        with open(state_path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "Status" in data else None


class _Check:
    __slots__ = ("started", "deadline", "output")

    def __init__(self, started: float, deadline: float, output: bytes = b""):
        self.started = started    # wall clock, for the log
        self.deadline = deadline  # monotonic
        self.output = output


class HealthMonitor:
    """One container's healthcheck, driven by its supervisor (see the module docstring). Create it when
    the container's init has started: the interval and start period count from then."""

    def __init__(self, state_path: str, cfg: HealthConfig, process_template: dict):
        self.cfg = cfg
        self._path = state_path
        self._process = {**process_template, "args": cfg.args(), "terminal": False}
        self._born = time.time()  # wall clock, compared with the checks' start times
        self._next = time.monotonic() + cfg.interval
        self._pid: int | None = None      # the check's process, until the supervisor reaps it
        self._fd: int | None = None       # its output pipe (the supervisor's to close) …
        self._fd_id: tuple[int, int] = (0, 0)  # … and its identity: the number may be reused once closed
        self._check: _Check | None = None  # the check whose result is not recorded yet
        self.state: dict = {"Status": STARTING, "FailingStreak": 0, "Log": []}
        self._write()

    @property
    def running(self) -> bool:
        """A check was started and its process is not reaped yet (start() would return None)."""
        return self._pid is not None

    def due(self, now: float) -> float:
        """Seconds until the monitor needs `start` (no check running) or `tick` (timeout to enforce)."""
        if self._check is not None:
            return max(0.0, self._check.deadline - now)
        wait = self._next - now
        if self._pid is not None:
            wait = max(wait, 0.05)  # a killed check not yet reaped: don't let the caller spin on start()
        return max(0.0, wait)

    def start(self, container_pid: int) -> tuple[int, int] | None:
        """Start a check in the container; (pid, read_fd) to reap and select on, or None when a check
        is still running or none could be started (that failure is recorded)."""
        if self._pid is not None or self._check is not None:
            return None
        from pinnace.runtime.nsexec import exec_in_container
        started = time.time()
        fds: list[int] = []
        try:
            read_fd, write_fd = os.pipe()
            fds += [read_fd, write_fd]
            null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            fds.append(null)
            pid = exec_in_container(container_pid, self._process, stdio=(null, write_fd, write_fd),
                                    process_group=True)
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self._check = _Check(started, 0.0, f"cannot start the health check: {exc.strerror}".encode())
            self._finish(-1)
            return None
        os.close(write_fd)
        os.close(null)
        os.set_blocking(read_fd, False)
        self._pid, self._fd = pid, read_fd
        st = os.fstat(read_fd)
        self._fd_id = (st.st_dev, st.st_ino)
        self._check = _Check(started, time.monotonic() + self.cfg.timeout)
        return pid, read_fd

    def on_output(self, data: bytes) -> None:
        """Bytes the supervisor read from the check's fd (output after the result was recorded is
        dropped); b"" at EOF. The fd is the supervisor's: it closes it at EOF; the monitor only reads
        from it."""
        if not data:
            self._fd = None
        elif self._check is not None and len(self._check.output) < OUTPUT_LIMIT:
            self._check.output += data[:OUTPUT_LIMIT - len(self._check.output)]

    def on_exit(self, status: int) -> None:
        """The supervisor reaped the check's pid (raw waitpid status): the result is recorded, with
        whatever output is still in the pipe (read here without blocking)."""
        self._pid = None
        if self._check is None:  # already recorded: it was killed for its timeout
            return
        self._drain()
        self._fd = None
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        self._finish(code)

    def tick(self, now: float) -> None:
        """Kill a check that overran its timeout; it counts as a failure (exit -1)."""
        if self._check is None or self._pid is None or now < self._check.deadline:
            return
        self._kill()  # the pipe then reaches EOF, and the supervisor closes it
        self._fd = None
        self._check.output = f"Health check timed out after {self.cfg.timeout:g}s".encode()
        self._finish(-1)

    def close(self) -> None:
        """The container is gone: kill a running check (the supervisor still reaps it and closes its
        fd), keep the recorded state."""
        if self._pid is not None:
            self._kill()
        self._fd = None
        self._check = None

    # -- internals
    def _kill(self) -> None:
        try:
            os.killpg(self._pid, signal.SIGKILL)  # the check's process group: what it started goes too
        except OSError:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except OSError:
                pass

    def _drain(self) -> None:
        # the check has exited: what it wrote is in the pipe (a background child may keep it open, so
        # no EOF is awaited). The fd may already be closed by the supervisor (it saw EOF): EBADF ends it.
        try:
            st = os.fstat(self._fd) if self._fd is not None else None
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._fd_id:
            return
        while self._check is not None and len(self._check.output) < OUTPUT_LIMIT:
            try:
                data = os.read(self._fd, 65536)
            except OSError:  # EAGAIN: nothing more for now; EBADF: closed at EOF
                return
            if not data:
                return
            self.on_output(data)

    def _finish(self, code: int) -> None:
        check, self._check = self._check, None
        ended = time.time()
        state = self.state
        if code == 0:
            state["Status"], state["FailingStreak"] = HEALTHY, 0
        elif not (state["Status"] == STARTING and check.started - self._born < self.cfg.start_period):
            state["FailingStreak"] += 1
            if state["FailingStreak"] >= self.cfg.retries:
                state["Status"] = UNHEALTHY
        state["Log"] = (state["Log"] + [{
            "Start": _rfc3339(check.started), "End": _rfc3339(ended), "ExitCode": code,
            "Output": check.output[:OUTPUT_LIMIT].decode(errors="replace")}])[-LOG_ENTRIES:]
        self._next = time.monotonic() + self.cfg.interval
        self._write()

    def _write(self) -> None:
        tmp = f"{self._path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.state, f)
            os.replace(tmp, self._path)
        except OSError:  # the container dir is being removed: nothing left to report to
            try:
                os.unlink(tmp)
            except OSError:
                pass
