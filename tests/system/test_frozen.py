"""Smoke suite of the one-file executable (packaging/build → dist/pinnace), run as a user runs it.

The one file is a sh launcher plus a packed PyInstaller one-directory build, unpacked once per user and
version into a cache (packaging/launcher.sh). Two groups of tests:
- the launcher: first run unpacks into ~/.cache/pinnace/exe/VERSION-HASH and later runs reuse it;
  concurrent first runs; a damaged copy or a leftover from an interrupted unpack is repaired; a damaged
  download is refused; programs pinnace starts get the user's environment back (LD_LIBRARY_PATH).
- pinnace from it: pull, run, build, a published port, the fuse storage driver — each command a fresh
  process, so that the helpers one command leaves (supervisor, namespace holder, port relays, fuse
  daemon: re-executions of the frozen binary) serve the next ones after it has exited. That is where
  PyInstaller's own one-file mode breaks: its helpers lose their files when the starting CLI exits.

$PINNACE_FROZEN_BIN names the executable. Under CI (CI=true) a missing one is a failure; elsewhere the
module is skipped, since developers do not build it for every test run.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from procs import fuse_daemons_of

import pinnace

pytestmark = pytest.mark.anyuser  # rootless as the test user, and again as root

FROZEN_BIN = os.environ.get("PINNACE_FROZEN_BIN", "")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REGISTRY = os.environ.get("PINNACE_TEST_REGISTRY", "127.0.0.1:5000")
BUSYBOX = f"{REGISTRY}/fixtures/busybox"
VERSION_LINE = f"pinnace version {pinnace.__version__}\n"


@pytest.fixture(scope="module")
def frozen_bin() -> str:
    if not FROZEN_BIN:
        if IN_CI:
            pytest.fail("PINNACE_FROZEN_BIN is not set: CI must build dist/pinnace (packaging/build) and export it")
        pytest.skip("PINNACE_FROZEN_BIN not set (build with packaging/build, then export PINNACE_FROZEN_BIN=dist/pinnace)")
    path = Path(FROZEN_BIN)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"PINNACE_FROZEN_BIN={FROZEN_BIN} is not an executable file")
    return str(path.resolve())


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One unpacked copy for the tests that are about pinnace rather than about unpacking."""
    return tmp_path_factory.mktemp("frozen-cache")


def clean_env(home: Path, **extra: str) -> dict:
    """The user's environment without anything of the test's Python (the executable must not need one)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "_PYI"))
           and k not in ("XDG_CACHE_HOME", "PINNACE_CACHE_DIR", "PINNACE_LAUNCHER")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), REGISTRY_AUTH_FILE=str(home / "auth.json"))
    env.update(extra)
    return env


class Frozen:
    """The frozen executable against one isolated store, with a clean environment of its own."""

    def __init__(self, exe: str, base: Path, cache: Path):
        self.exe, self.root, self.runroot, self.home = exe, base / "root", base / "run", base / "home"
        for p in (self.root, self.runroot, self.home):
            p.mkdir(parents=True, exist_ok=True)
        self.cache = cache
        self.env = clean_env(self.home, PINNACE_CACHE_DIR=str(cache))

    def __call__(self, *args: str, check: bool = True, timeout: float = 180,
                 env: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [self.exe, "--root", str(self.root), "--runroot", str(self.runroot), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**self.env, **(env or {})},
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"frozen pinnace {' '.join(args)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def unpacked(self) -> Path:
        """The unpacked copy's executable (what the helpers re-execute)."""
        copies = [d for d in self.cache.iterdir() if d.is_dir() and not d.name.startswith(".")]
        assert len(copies) == 1, copies
        return Path((copies[0] / ".complete").read_text().strip())

    def close(self) -> None:
        self("system", "reset", "--force", check=False)
        try:
            os.kill(int((self.runroot / "holder.pid").read_text().split()[0]), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture
def frozen(frozen_bin: str, shared_cache: Path, tmp_path: Path):
    f = Frozen(frozen_bin, tmp_path, shared_cache)
    yield f
    f.close()


def version(exe: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--version"], capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def copies_in(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name not in (".lock",)) if cache.exists() else []


# -- the launcher ---------------------------------------------------------------------------------------------

def test_first_run_unpacks_once_into_the_users_cache(frozen_bin: str, tmp_path: Path):
    home = tmp_path / "home"
    env = clean_env(home)   # no PINNACE_CACHE_DIR, no XDG_CACHE_HOME: the default place
    first = version(frozen_bin, env)
    assert (first.returncode, first.stdout, first.stderr) == (0, VERSION_LINE, "")
    cache = home / ".cache" / "pinnace" / "exe"
    [copy] = copies_in(cache)
    assert re.fullmatch(rf"{re.escape(pinnace.__version__)}-[0-9a-f]{{12}}", copy.name), copy.name
    assert cache.stat().st_mode & 0o077 == 0                        # private to the user
    assert (copy / ".complete").read_text() == f"{copy.resolve() / 'pinnace'}\n"
    stamp = (copy.stat().st_ino, copy.stat().st_mtime_ns, (copy / "pinnace").stat().st_mtime_ns)
    again = version(frozen_bin, env)
    assert (again.returncode, again.stdout, again.stderr) == (0, VERSION_LINE, "")
    assert copies_in(cache) == [copy]                               # not unpacked again
    assert (copy.stat().st_ino, copy.stat().st_mtime_ns, (copy / "pinnace").stat().st_mtime_ns) == stamp
    # XDG_CACHE_HOME moves it, as the XDG base directory specification says
    xdg = version(frozen_bin, {**env, "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert xdg.stdout == VERSION_LINE
    assert [p.name for p in copies_in(tmp_path / "xdg" / "pinnace" / "exe")] == [copy.name]


def test_concurrent_first_runs_share_one_unpacked_copy(frozen_bin: str, tmp_path: Path):
    cache = tmp_path / "cache"
    env = clean_env(tmp_path / "home", PINNACE_CACHE_DIR=str(cache))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: version(frozen_bin, env), range(8)))
    assert [(r.returncode, r.stdout, r.stderr) for r in results] == [(0, VERSION_LINE, "")] * 8
    assert len(copies_in(cache)) == 1, copies_in(cache)             # no second copy, no leftovers


def test_damaged_copies_are_unpacked_again(frozen_bin: str, tmp_path: Path):
    cache = tmp_path / "cache"
    env = clean_env(tmp_path / "home", PINNACE_CACHE_DIR=str(cache))
    assert version(frozen_bin, env).stdout == VERSION_LINE
    [copy] = copies_in(cache)
    libpython = next((copy / "_internal").glob("libpython3*.so*"))

    def repaired(damage, *, args=("--version",), expect=VERSION_LINE) -> str:
        damage()
        res = subprocess.run([frozen_bin, *args], capture_output=True, text=True, env=env, timeout=120)
        assert (res.returncode, res.stdout) == (0, expect), res.stderr
        assert copies_in(cache) == [copy]                           # the same place, nothing left over
        assert libpython.stat().st_size > 1_000_000 and (copy / "_internal/pinnace/__init__.pyc").stat().st_size > 0
        return res.stderr

    # files the launcher checks on every start: repaired before pinnace starts
    assert repaired(libpython.unlink) == ""
    assert repaired((copy / ".complete").unlink) == ""
    # an unpacker that died half-way: its leftovers go with the next unpack
    (cache / f".tmp-{os.getpid()}").mkdir()
    (cache / f".tmp-{os.getpid()}" / "half").write_text("x")
    assert repaired(lambda: shutil.rmtree(copy)) == ""
    # a truncated module: pinnace notices at start-up (its manifest says so), unpacks again, starts over
    init = copy / "_internal/pinnace/__init__.pyc"
    assert "damaged" in repaired(lambda: init.write_bytes(init.read_bytes()[:20]))
    # a module only a command imports: that command fails (it is never run twice), the next run repairs
    fast = copy / "_internal/pinnace/cli/fast.pyc"
    fast.unlink()
    res = subprocess.run([frozen_bin, "ps", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 126 and "damaged" in res.stderr and "pinnace/cli/fast.pyc" in res.stderr, res
    assert not (copy / ".complete").exists()
    assert version(frozen_bin, env).stdout == VERSION_LINE and fast.stat().st_size > 0


def test_damaged_download_is_refused(frozen_bin: str, tmp_path: Path):
    data = Path(frozen_bin).read_bytes()
    cache = tmp_path / "cache"
    env = clean_env(tmp_path / "home", PINNACE_CACHE_DIR=str(cache))
    for name, damaged in (("truncated", data[:-4096]),
                          ("flipped", data[:-4096] + bytes([data[-4096] ^ 0xFF]) + data[-4095:])):
        exe = tmp_path / name
        exe.write_bytes(damaged)
        exe.chmod(0o755)
        res = version(str(exe), env)
        assert res.returncode == 125 and "download it again" in res.stderr, (name, res)
        assert copies_in(cache) == []                               # nothing half-made is kept


def test_host_programs_get_the_users_environment(frozen: Frozen):
    """Programs started by pinnace (newuidmap, `unshare CMD`, runtimes, network helpers) must not inherit
    the bundle's library path or PyInstaller's variables; a library path of the user's is given back."""
    env_out = frozen("unshare", "env").stdout
    leaked = [line for line in env_out.splitlines()
              if line.startswith(("LD_LIBRARY_PATH", "_PYI", "_MEIPASS")) or "/_internal" in line]
    assert leaked == [], leaked
    own = frozen("unshare", "env", env={"LD_LIBRARY_PATH": "/opt/users-own-libs"}).stdout.splitlines()
    assert [line for line in own if line.startswith("LD_LIBRARY_PATH")] == ["LD_LIBRARY_PATH=/opt/users-own-libs"]
    uid_map = frozen("unshare", "cat", "/proc/self/uid_map").stdout.split()
    if os.getuid() == 0:
        assert uid_map == ["0", "0", "4294967295"], uid_map     # rootful: the host's own namespace
    else:
        # the user, then the full subordinate range: newuidmap (a host program) ran from the frozen binary
        assert uid_map[:3] == ["0", str(os.getuid()), "1"], uid_map
        assert len(uid_map) >= 6 and uid_map[5] == "65536", uid_map


def test_oci_runtime_started_by_a_helper_gets_the_users_environment(frozen: Frozen, tmp_path: Path):
    """`--runtime` is executed by the supervisor, itself a re-execution of the frozen binary: two
    generations away from the user's shell, the runtime must still see the user's library path only."""
    frozen("pull", "-q", BUSYBOX)
    dump = tmp_path / "runtime-env"
    runtime = tmp_path / "fake-runtime"
    runtime.write_text(f"#!/bin/sh\nenv > {dump}\nexit 1\n")
    runtime.chmod(0o755)
    tmp_path.chmod(0o755)
    frozen("run", "--rm", "--runtime", str(runtime), "--network", "none", BUSYBOX, "true", check=False,
           env={"LD_LIBRARY_PATH": "/opt/users-own-libs"})
    seen = dump.read_text().splitlines()
    assert [line for line in seen if line.startswith(("LD_LIBRARY_PATH=", "_PYI"))] == \
        ["LD_LIBRARY_PATH=/opt/users-own-libs"], seen


# -- pinnace from the one file -------------------------------------------------------------------------------

def test_version_matches_package(frozen: Frozen):
    res = frozen("--version")
    assert res.stdout == VERSION_LINE


def test_pull_images_inspect_reset(frozen: Frozen, fixtures_info: dict):
    want = fixtures_info["busybox"]
    config_hex = want["config"].removeprefix("sha256:")

    pulled = frozen("pull", "-q", BUSYBOX)
    image_id = pulled.stdout.strip().splitlines()[-1].removeprefix("sha256:")
    assert len(image_id) >= 12 and config_hex.startswith(image_id), pulled.stdout
    # each of these is a new process: the helpers left by `pull` must still work
    listed = frozen("images", "--digests")
    assert BUSYBOX in listed.stdout and want["digest"] in listed.stdout, listed.stdout
    inspected = frozen("image", "inspect", BUSYBOX)
    assert config_hex in inspected.stdout and want["digest"] in inspected.stdout
    again = frozen("pull", "-q", BUSYBOX)  # warm: only the manifest is fetched
    assert again.stdout.strip().splitlines()[-1].removeprefix("sha256:") == image_id
    frozen("system", "reset", "--force")
    assert frozen("images", "-q").stdout.strip() == ""


def supervisor_of(frozen: Frozen, cid: str) -> int:
    [cdir] = [d for d in (frozen.root / "containers").iterdir() if d.name.startswith(cid)]
    return json.loads((cdir / "state.json").read_text())["supervisor_pid"]


def test_detached_container_outlives_the_cli_that_started_it(frozen: Frozen):
    """`run -d` returns; its supervisor (a re-execution of the unpacked binary) keeps the container, and
    later commands — exec, logs, stop — are new processes talking to it."""
    frozen("pull", "-q", BUSYBOX)
    attached = frozen("run", "--rm", BUSYBOX, "sh", "-c", "echo hi; exit 7", check=False)
    assert (attached.returncode, attached.stdout) == (7, "hi\n"), attached.stderr
    cid = frozen("run", "-d", BUSYBOX, "sh", "-c", "echo from-detached; exec sleep 300").stdout.strip()
    try:
        sup = supervisor_of(frozen, cid)
        exe = os.readlink(f"/proc/{sup}/exe")
        assert exe == str(frozen.unpacked()), exe          # the stable unpacked copy, not a temp dir
        assert "sleep" in frozen("exec", cid, "cat", "/proc/1/cmdline").stdout
        deadline = time.monotonic() + 10
        while "from-detached" not in frozen("logs", cid).stdout:
            assert time.monotonic() < deadline, "no output in the log"
            time.sleep(0.1)
        frozen("stop", "-t", "2", cid)
        state = json.loads(frozen("inspect", cid).stdout)[0]["State"]
        assert state["Running"] is False and state["ExitCode"] in (137, 143), state  # sleep as pid 1: KILLed
        deadline = time.monotonic() + 10
        while sup in _pids_with_exe(exe):                  # its work done, the supervisor goes too
            assert time.monotonic() < deadline, f"supervisor {sup} still runs after stop"
            time.sleep(0.1)
    finally:
        frozen("rm", "-f", cid)
    assert frozen("ps", "-aq").stdout.strip() == ""


def _pids_with_exe(exe: str) -> set[int]:
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/exe") == exe:
                    pids.add(int(d))
            except OSError:
                pass
    return pids


def test_container_environment_is_the_images(frozen: Frozen):
    frozen("pull", "-q", BUSYBOX)
    env = frozen("run", "--rm", BUSYBOX, "env").stdout
    leaked = [line for line in env.splitlines() if line.startswith(("LD_LIBRARY_PATH", "_PYI", "PINNACE"))]
    assert leaked == [], leaked


def test_build_with_run_and_copy(frozen: Frozen, tmp_path: Path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hello from the context\n")
    (ctx / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM {BUSYBOX}
        COPY hello.txt /srv/hello.txt
        RUN cat /srv/hello.txt > /srv/out && echo built-by-run >> /srv/out
        CMD ["cat", "/srv/out"]
        """))
    frozen("build", "-t", "localhost/frozen/built:1", str(ctx))
    assert frozen("run", "--rm", "localhost/frozen/built:1").stdout == "hello from the context\nbuilt-by-run\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_get(port: int, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := c.recv(65536):
                    data += chunk
            text = data.decode(errors="replace").replace("\r\n", "\n")
            if "\n\n" in text:
                return text.split("\n\n", 1)[1]
        except OSError:
            pass
        assert time.monotonic() < deadline, f"nothing answers on 127.0.0.1:{port}"
        time.sleep(0.1)


def test_published_port_is_served_after_the_cli_exits(frozen: Frozen):
    frozen("pull", "-q", BUSYBOX)
    port = _free_port()
    server = "mkdir -p /www && echo served-by-frozen > /www/index.html && exec httpd -f -p 80 -h /www"
    cid = frozen("run", "-d", "-p", f"127.0.0.1:{port}:80", BUSYBOX, "sh", "-c", server).stdout.strip()
    try:
        assert _http_get(port) == "served-by-frozen\n"
    finally:
        frozen("rm", "-f", cid)
    with pytest.raises(OSError):  # the listener went with the container
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_fuse_storage_driver_daemon_is_the_unpacked_binary(frozen: Frozen):
    frozen("--storage-driver", "fuse", "pull", "-q", BUSYBOX)
    cid = frozen("--storage-driver", "fuse", "run", "-d", BUSYBOX, "sh", "-c",
                 "echo on-fuse > /written; exec sleep 300").stdout.strip()
    try:
        daemons = fuse_daemons_of(cid)
        assert len(daemons) == 1, daemons
        assert os.readlink(f"/proc/{daemons[0]}/exe") == str(frozen.unpacked())
        deadline = time.monotonic() + 10
        while (res := frozen("--storage-driver", "fuse", "exec", cid, "cat", "/written", check=False)).stdout != "on-fuse\n":
            assert time.monotonic() < deadline, res
            time.sleep(0.1)
        info = frozen("--storage-driver", "fuse", "info", "--format", "json").stdout
        assert json.loads(info)["store"]["graphDriverName"] == "fuse"
    finally:
        frozen("--storage-driver", "fuse", "rm", "-f", cid)
