"""Containers as systemd services (issue 7), as a user runs them: `generate systemd` units pass
`systemd-analyze verify` and their ExecStart/ExecStop/ExecStopPost do what systemd would make them do;
`run --sdnotify` tells a test-owned NOTIFY_SOCKET READY=1 and MAINPID (the live supervisor); Quadlet files
become units through the generator entry point; pinnace-restart.service; check-linger.

There is no running systemd here: the unit's commands are run the way systemd runs them (its quoting,
specifiers, Environment=, NOTIFY_SOCKET), and systemd-analyze checks the files.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from pinnace.engine.unit_syntax import split_words
from testenv import PINNACE_BIN, REGISTRY

pytestmark = pytest.mark.anyuser
BUSYBOX = f"{REGISTRY}/fixtures/busybox:latest"
ROOTLESS = os.geteuid() != 0


def verify(*paths: Path) -> None:
    """systemd-analyze verify (`--user` for the test user): no complaint at all, not even a warning."""
    analyze = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    assert os.path.exists(analyze), "systemd-analyze is missing: apt-get install systemd"
    cmd = [analyze, *(["--user"] if ROOTLESS else []), "verify", *map(str, paths)]
    env = {**os.environ, "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", ""), f"{' '.join(cmd)}: {res.stderr}{res.stdout}"


def expand(word: str, unit: str) -> str:
    """systemd's specifiers in a word (the ones our units use) and $$."""
    stem = unit.removesuffix(".service")
    prefix, _, instance = stem.partition("@")
    out, i = [], 0
    while i < len(word):
        if word[i] == "%" and i + 1 < len(word):
            out.append({"%": "%", "n": unit, "N": stem, "p": prefix, "i": instance}[word[i + 1]])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out).replace("$$", "$")


def unit_values(text: str, key: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [line.partition("=")[2] for line in joined.splitlines() if line.startswith(key + "=")]


def run_unit(pinnace, text: str, key: str, unit: str, notify: str | None = None) -> subprocess.CompletedProcess:
    """Run the unit's Exec<key>= as systemd would: its Environment=, NOTIFY_SOCKET for ExecStart."""
    (line,) = unit_values(text, key)
    argv = [expand(w, unit) for w in split_words(line)]
    argv[0] = argv[0].removeprefix("-")
    env = {**pinnace.env, **dict(e.partition("=")[::2] for v in unit_values(text, "Environment")
                                 for e in split_words(expand(v, unit)))}
    if notify:
        env["NOTIFY_SOCKET"] = notify
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def notify(tmp_path):
    """A test-owned NOTIFY_SOCKET: (its address, a function returning the datagrams received so far)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))

    def received(wait: float = 0.2, until=None) -> list[str]:  # noqa: ANN001 - until: a test of a message
        got = []
        sock.settimeout(wait)
        try:
            while not (got and until and until(got[-1])):
                got.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            pass
        return got
    yield str(path), received
    sock.close()


def supervisor(pinnace, name: str) -> int:
    cid = pinnace("inspect", "--format", "{{.Id}}", name).out.strip()
    pid = json.loads((pinnace.root / "containers" / cid / "state.json").read_text())["supervisor_pid"]
    os.kill(pid, 0)  # alive
    return pid


def test_run_sdnotify_conmon_sends_ready_and_mainpid(pinnace, notify):
    address, received = notify
    pinnace("pull", "-q", BUSYBOX)
    pinnace.env["NOTIFY_SOCKET"] = address
    pinnace("run", "-d", "--name", "c1", "--sdnotify=conmon", BUSYBOX, "sleep", "1000")
    # queued before `run` returned: systemd knows the main pid before the process it started exits
    assert received(0) == [f"MAINPID={supervisor(pinnace, 'c1')}\nREADY=1\n"]
    # an abstract socket (@name), as systemd may hand out
    abstract = f"@pinnace-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + abstract[1:])
    sock.settimeout(5)
    pinnace.env["NOTIFY_SOCKET"] = abstract
    pinnace("run", "-d", "--name", "c2", "--sdnotify=conmon", BUSYBOX, "sleep", "1000")
    assert sock.recv(4096).decode() == f"MAINPID={supervisor(pinnace, 'c2')}\nREADY=1\n"
    sock.close()
    res = pinnace("run", "--sdnotify=sometimes", BUSYBOX, "true", check=False)
    assert res.rc == 125 and "invalid --sdnotify 'sometimes'" in res.err
    pinnace("rm", "-f", "-t", "0", "c1", "c2")


def test_run_sdnotify_container_and_ignore(pinnace, notify):
    address, received = notify
    pinnace("pull", "-q", BUSYBOX)
    pinnace.env["NOTIFY_SOCKET"] = address
    # the container's own process (a non-root user here) says READY=1 through its NOTIFY_SOCKET;
    # busybox's logger sends a datagram to /dev/log, so /dev/log points at it
    script = ('echo "socket=$NOTIFY_SOCKET"; ln -s "$NOTIFY_SOCKET" /dev/log && sleep 2 && '
              "su -s /bin/sh app -c 'logger -t app READY=1'; sleep 1000")
    pinnace("run", "-d", "--name", "own", "--sdnotify=container", BUSYBOX, "sh", "-c", script)
    first = received(0)
    assert first == [f"MAINPID={supervisor(pinnace, 'own')}\n"]   # not ready yet: that is the container's to say
    got = received(10, until=lambda m: m.endswith(" app: READY=1\n"))
    assert got and got[-1].endswith(" app: READY=1\n"), got
    assert "socket=/run/notify/notify.sock" in pinnace("logs", "own").out
    pinnace("run", "-d", "--name", "quiet", "--sdnotify=ignore", BUSYBOX, "sh", "-c", 'echo "[$NOTIFY_SOCKET]"; sleep 1000')
    assert received(0.5) == []
    assert pinnace("logs", "quiet").out == "[]\n"
    pinnace("rm", "-f", "-t", "0", "own", "quiet")


def test_generate_new_unit_runs_and_removes_the_container(pinnace, notify, tmp_path, monkeypatch):
    address, received = notify
    old = pinnace("create", "--name", "web", "-e", "GREETING=hello world", "-l", "app=web", "--restart=on-failure:2",
                  "--stop-timeout=1", BUSYBOX, "sh", "-c", "echo $GREETING 100%; sleep 1000").out.strip()
    monkeypatch.chdir(tmp_path)
    res = pinnace("generate", "systemd", "--new", "--name", "--files", "--after", "db.service", "web")
    path = tmp_path / "container-web.service"
    assert res.out == f"{path}\n"
    text = path.read_text()
    for line in ("Type=notify", "NotifyAccess=all", "KillMode=mixed", "Restart=on-failure", "StartLimitBurst=2",
                 "TimeoutStartSec=300", "TimeoutStopSec=61", "After=db.service", "WantedBy=default.target"):
        assert line in text.splitlines()
    assert unit_values(text, "ExecStart")[0].startswith(f"{PINNACE_BIN} --root={pinnace.root} ")
    verify(path)
    # systemctl start: the unit's `run --replace` takes the place of the created container
    started = run_unit(pinnace, text, "ExecStart", path.name, address)
    assert started.returncode == 0, started.stderr
    new = started.stdout.strip()
    assert new != old and pinnace("container", "exists", old, check=False).rc == 1
    assert received(0) == [f"MAINPID={supervisor(pinnace, 'web')}\nREADY=1\n"]
    info = pinnace("inspect", "web").json()[0]
    assert info["Id"] == new and info["State"]["Running"] and info["Config"]["Labels"] == {"app": "web"}
    assert "GREETING=hello world" in info["Config"]["Env"] and info["HostConfig"]["AutoRemove"]
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "no"   # systemd restarts, not the supervisor
    # systemctl stop: ExecStop, then ExecStopPost; both tolerate a container that is gone
    assert run_unit(pinnace, text, "ExecStop", path.name).returncode == 0
    assert pinnace("container", "exists", "web", check=False).rc == 1
    for key in ("ExecStopPost", "ExecStop"):
        res = run_unit(pinnace, text, key, path.name)
        assert (res.returncode, res.stderr) == (0, ""), res.stderr


def test_generate_unit_for_an_existing_container(pinnace, notify, tmp_path):
    address, received = notify
    cid = pinnace("create", "--name", "app", "--sdnotify=ignore", "--stop-timeout=1", BUSYBOX, "sleep", "1000").out.strip()
    res = pinnace("generate", "systemd", "app")
    text = res.out
    path = tmp_path / f"container-{cid}.service"
    path.write_text(text)
    assert text.startswith(f"# container-{cid}.service\n") and "TimeoutStopSec=61" in text
    assert unit_values(text, "Environment") == ["PINNACE_SYSTEMD_UNIT=%n", "PINNACE_SDNOTIFY=conmon"]
    verify(path)
    # created with --sdnotify=ignore, yet the unit's start reports readiness (the unit says conmon)
    assert run_unit(pinnace, text, "ExecStart", path.name, address).returncode == 0
    assert received(0) == [f"MAINPID={supervisor(pinnace, cid)}\nREADY=1\n"]
    assert run_unit(pinnace, text, "ExecStop", path.name).returncode == 0
    assert pinnace("inspect", "--format", "{{.State.Status}}", "app").out == "exited\n"
    assert "Error" not in pinnace("generate", "systemd", "--format", "json", "app").err
    assert json.loads(pinnace("generate", "systemd", "--format", "json", "--name", "app").out) == {
        "container-app.service": pinnace("generate", "systemd", "--name", "app").out}
    res = pinnace("generate", "systemd", "nosuch", check=False)
    assert res.rc == 125 and "no such container nosuch" in res.err


def test_linger_check_and_warning(pinnace):
    import pwd
    user = pwd.getpwuid(os.getuid()).pw_name
    lingering = os.path.exists(f"/var/lib/systemd/linger/{user}")
    res = pinnace("system", "check-linger", check=False)
    if lingering:
        assert res.rc == 0 and f"lingering is enabled for {user}" in res.out
    else:
        assert res.rc == 1 and f"loginctl enable-linger {user}" in res.out
    pinnace("create", "--name", "l", BUSYBOX, "true")
    warned = "WARNING: lingering is not enabled" in pinnace("generate", "systemd", "l").err
    assert warned == (ROOTLESS and not lingering)


def test_restart_unit_starts_always_containers(pinnace, tmp_path, monkeypatch):
    for name, policy in (("a", "always"), ("b", "no"), ("c", "always"), ("d", "on-failure")):
        pinnace("create", "--name", name, f"--restart={policy}", "--stop-timeout=1", BUSYBOX, "sleep", "1000")
    monkeypatch.chdir(tmp_path)
    assert pinnace("generate", "systemd", "--restart-unit", "--files").out == f"{tmp_path}/pinnace-restart.service\n"
    text = (tmp_path / "pinnace-restart.service").read_text()
    assert "Type=oneshot" in text and "RemainAfterExit=yes" in text
    verify(tmp_path / "pinnace-restart.service")
    assert run_unit(pinnace, text, "ExecStart", "pinnace-restart.service").returncode == 0
    status = lambda n: pinnace("inspect", "--format", "{{.State.Status}}", n).out.strip()  # noqa: E731
    assert [status(n) for n in "abcd"] == ["running", "created", "running", "created"]
    assert run_unit(pinnace, text, "ExecStop", "pinnace-restart.service").returncode == 0
    assert [status(n) for n in "abcd"] == ["exited", "created", "exited", "created"]
    assert pinnace("stop", "--all", "--filter", "restart-policy=always").rc == 0   # nothing left: no error


def test_replace_and_ignore(pinnace):
    first = pinnace("run", "-d", "--name", "r", BUSYBOX, "sleep", "1000").out.strip()
    res = pinnace("run", "-d", "--name", "r", BUSYBOX, "sleep", "1000", check=False)
    assert res.rc != 0 and "r" in res.err
    second = pinnace("run", "-d", "--replace", "--name", "r", BUSYBOX, "sleep", "1000").out.strip()
    assert second != first and pinnace("container", "exists", first, check=False).rc == 1
    assert pinnace("create", "--replace", "--name", "r", BUSYBOX, "true").out.strip() not in (first, second)
    assert pinnace("stop", "--ignore", "nosuch").rc == 0
    assert pinnace("stop", "nosuch", check=False).rc != 0
    pinnace("rm", "-f", "r")


def test_quadlet_files_become_services(pinnace, notify, tmp_path, monkeypatch):
    address, received = notify
    pinnace("create", "--name", "src", "-e", "A=1", "-l", "k=v", "--stop-timeout=2", BUSYBOX, "sleep", "1000")
    quadlets = tmp_path / "quadlets"
    quadlets.mkdir()
    # `generate quadlet` of a container, and a file by hand that uses a .volume file
    monkeypatch.chdir(quadlets)
    assert pinnace("generate", "quadlet", "--files", "src").out == f"{quadlets}/src.container\n"
    assert "GlobalArgs=--root=" in (quadlets / "src.container").read_text()   # not the default store
    store = f"--root={pinnace.root} --runroot={pinnace.runroot}"
    (quadlets / "data.volume").write_text(f"[Volume]\nGlobalArgs={store}\nLabel=made=quadlet\n")
    (quadlets / "worker.container").write_text(
        f"[Unit]\nDescription=a worker\nAfter=src.container\n\n[Container]\nGlobalArgs={store}\n"
        f"Image={BUSYBOX}\nStopTimeout=1\nVolume=data.volume:/data\nEnvironment=\"MSG=hi there\"\n"
        "Exec=sh -c 'echo $$MSG > /data/out; sleep 1000'\n\n[Install]\nWantedBy=default.target\n")
    (quadlets / "broken.container").write_text(f"[Container]\nImage={BUSYBOX}\nPublishPorts=80\n")
    out = tmp_path / "generated"
    env = {**pinnace.env, "QUADLET_UNIT_DIRS": str(quadlets)}
    res = subprocess.run([PINNACE_BIN, "__systemd-generator", str(out), str(tmp_path / "e"), str(tmp_path / "l")],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr == (
        f"pinnace-generator: {quadlets}/broken.container:3: unknown key PublishPorts= in [Container]\n")
    assert sorted(p.name for p in out.iterdir()) == ["data-volume.service", "default.target.wants", "src.service",
                                                     "worker.service"]
    assert os.readlink(out / "default.target.wants" / "worker.service") == "../worker.service"
    verify(*sorted(out.glob("*.service")))
    units = {p.name: p.read_text() for p in out.glob("*.service")}
    assert "Requires=data-volume.service" in units["worker.service"] and "After=src.service" in units["worker.service"]
    # what systemd would run: the volume's oneshot, then the worker (container systemd-worker)
    assert run_unit(pinnace, units["data-volume.service"], "ExecStart", "data-volume.service").returncode == 0
    assert pinnace("volume", "inspect", "systemd-data").json()[0]["Labels"] == {"made": "quadlet"}
    started = run_unit(pinnace, units["worker.service"], "ExecStart", "worker.service", address)
    assert started.returncode == 0, started.stderr
    assert received(0) == [f"MAINPID={supervisor(pinnace, 'systemd-worker')}\nREADY=1\n"]
    assert pinnace("exec", "systemd-worker", "cat", "/data/out").out == "hi there\n"
    # the service made from `generate quadlet`: the same container again, under systemd's control
    pinnace("rm", "src")
    assert run_unit(pinnace, units["src.service"], "ExecStart", "src.service", address).returncode == 0
    info = pinnace("inspect", "src").json()[0]
    assert info["State"]["Running"] and "A=1" in info["Config"]["Env"] and info["Config"]["Labels"] == {"k": "v"}
    for unit in ("worker.service", "src.service"):
        assert run_unit(pinnace, units[unit], "ExecStop", unit).returncode == 0
        assert run_unit(pinnace, units[unit], "ExecStopPost", unit).returncode == 0
    assert pinnace("ps", "-aq").out == ""


def test_generator_installed_as_a_symlink(pinnace, tmp_path):
    """~/.config/systemd/user-generators/pinnace → the pinnace executable: systemd runs it with three dirs."""
    generators = tmp_path / "user-generators"
    generators.mkdir()
    (generators / "pinnace").symlink_to(PINNACE_BIN)
    quadlets = tmp_path / "q"
    quadlets.mkdir()
    (quadlets / "hello.container").write_text(f"[Container]\nImage={BUSYBOX}\nExec=echo hi\n")
    out = tmp_path / "normal"
    res = subprocess.run([str(generators / "pinnace"), str(out), str(tmp_path / "early"), str(tmp_path / "late")],
                         env={**pinnace.env, "QUADLET_UNIT_DIRS": str(quadlets)}, capture_output=True, text=True,
                         timeout=60)
    assert (res.returncode, res.stderr) == (0, "")
    (start,) = unit_values((out / "hello.service").read_text(), "ExecStart")
    assert split_words(start)[0] == os.path.realpath(PINNACE_BIN)
    assert not (tmp_path / "early").exists() and not (tmp_path / "late").exists()
