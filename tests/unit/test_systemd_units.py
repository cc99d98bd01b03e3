"""systemd units and Quadlet files (issue 7): golden files for `generate systemd` (with and without --new),
pinnace-restart.service, `generate quadlet` and the Quadlet generator; the systemd quoting both ways; the
container's options surviving the trip through a unit's `run` flags; Quadlet errors naming file and line.

Golden files live in tests/golden/systemd/; PINNACE_UPDATE_GOLDEN=1 rewrites them (then review the diff).
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
from pathlib import Path

import pytest

from pinnace.cli.container_cmds import COMMANDS
from pinnace.cli.container_run import _create_options
from pinnace.cli.flags import parse
from pinnace.engine import quadlet, quadlet_generator, systemd_units as su
from pinnace.engine.container_contract import ContainerCreateOptions
from pinnace.engine.unit_syntax import format_command, parse_unit, quote_word, split_words
from pinnace.errors import InvalidArgument

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "systemd"
EXE = "/usr/local/bin/pinnace"
CID = "0f" * 32
OPTIONS = ContainerCreateOptions(
    image="busybox", command=("sh", "-c", "echo 100% $HOME"), name="web", env=("FOO=bar", "HOME"),
    workdir="/srv", user="1000:1000", labels=("app=web", "note=two words"), restart="on-failure:3",
    publish=("8080:80",), volumes=("./data:/data", "cache:/cache:ro"), stop_timeout=20, health_cmd="true",
    memory="64m", cap_add=("NET_ADMIN",), network="none", pull="always", log_max_size="10m", init=True)


def facts(**changes) -> su.ContainerFacts:
    options = dataclasses.asdict(dataclasses.replace(OPTIONS, **changes))
    options.pop("host_env")
    return su.ContainerFacts(
        id=CID, name="web", image="127.0.0.1:5000/fixtures/busybox:latest", command=tuple(options["command"]),
        options=options, env=("PATH=/bin", "FOO=bar", "HOME=/home/app"),
        mounts=(("/data", "/srv/web/data"), ("/cache", "/store/volumes/cache/_data")),
        root="/home/app/.local/share/pinnace", runroot="/run/user/1000/pinnace")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("PINNACE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} is missing (PINNACE_UPDATE_GOLDEN=1 writes it)"
    assert text == path.read_text(), f"{name} differs from its golden file"


def unit_options(**kw) -> su.UnitOptions:
    return su.UnitOptions(executable=EXE, version="GOLDEN", **kw)


# -- golden files ----------------------------------------------------------------------------------------
def test_generate_systemd_new_golden():
    unit = su.container_unit(facts(), unit_options(new=True, use_name=True, after=("db.service",),
                                                   wants=("a.service", "b.service")))
    assert unit.name == "container-web.service" and unit.warnings == ()
    check_golden("container-web-new.service", unit.text)


def test_generate_systemd_existing_golden():
    unit = su.container_unit(facts(restart="no"), unit_options(root_args=("--root=/r", "--runroot=/rr")))
    assert unit.name == f"container-{CID}.service"
    check_golden("container-existing.service", unit.text)


def test_generate_systemd_flags():
    f = facts(sdnotify="container")
    unit = su.container_unit(f, unit_options(new=True, restart_policy="always", restart_sec=7, stop_timeout=3,
                                             start_timeout=900, container_prefix="app", separator="_",
                                             no_header=True, requires=("x.service",)))
    text = unit.text
    assert unit.name == f"app_{CID}.service" and not text.startswith("#")
    for line in ("Restart=always", "RestartSec=7", "TimeoutStartSec=900", "TimeoutStopSec=63", "Requires=x.service",
                 "--sdnotify=container"):
        assert line in text
    assert "StartLimitBurst" not in text and "--restart=" not in text
    # without --new: systemd's default policy, the supervisor's own restarts warned about
    unit = su.container_unit(facts(), unit_options())
    assert "Restart=on-failure" in unit.text and "PINNACE_SDNOTIFY=conmon" in unit.text
    assert "restart policy 'on-failure'" in unit.warnings[0]
    with pytest.raises(InvalidArgument, match="invalid --restart-policy"):
        su.container_unit(facts(), unit_options(restart_policy="sometimes"))


def test_restart_unit_golden():
    check_golden("pinnace-restart.service", su.restart_unit(EXE, version="GOLDEN").text)


def test_generate_quadlet_golden():
    name, text = su.quadlet_file(facts(tty=True, cpus="2"), version="GOLDEN")
    assert name == "web.container"
    check_golden("web.container", text)


def generated(tmp_path: Path, *, rootless: bool = True) -> dict[str, quadlet.GeneratedUnit]:
    src = tmp_path / "quadlet"
    shutil.copytree(GOLDEN / "quadlet", src, symlinks=True)
    units, errors = quadlet_generator.generate([str(src)], EXE, rootless=rootless)
    assert errors == []
    return {u.name: dataclasses.replace(u, text=u.text.replace(str(src), "@QUADLET@")) for u in units}


def test_quadlet_generator_golden(tmp_path):
    units = generated(tmp_path)
    assert sorted(units) == ["app-network.service", "data-volume.service", "db.service", "sleep@.service",
                             "web.service"]
    for name, unit in units.items():
        check_golden(f"quadlet-out/{name}", unit.text)
    assert units["web.service"].links == (
        ("default.target.wants/web.service", "../web.service"),
        ("multi-user.target.wants/web.service", "../web.service"), ("website.service", "web.service"))
    assert units["sleep@.service"].links == (("default.target.wants/sleep@100.service", "../sleep@.service"),)
    out = tmp_path / "out"
    quadlet_generator.write_units(str(out), list(units.values()))
    assert os.readlink(out / "default.target.wants" / "web.service") == "../web.service"
    assert (out / "default.target.wants" / "web.service").read_text() == units["web.service"].text


def test_quadlet_as_root_waits_for_the_network(tmp_path):
    text = generated(tmp_path, rootless=False)["db.service"].text
    assert "Wants=network-online.target\nAfter=network-online.target" in text
    assert "network-online" not in generated(tmp_path / "2")["db.service"].text


# -- round trips -----------------------------------------------------------------------------------------
def run_options(args: list[str]) -> ContainerCreateOptions:
    o, positional = parse(COMMANDS["run"][0], args)
    return _create_options(o, positional)


def comparable(opts: ContainerCreateOptions, *drop: str) -> dict:
    d = dataclasses.asdict(opts)
    for key in ("host_env", "detach", *drop):
        d.pop(key)
    return d


def test_every_create_option_has_a_flag():
    assert {f.name for f in dataclasses.fields(ContainerCreateOptions)} == su.HANDLED


def test_run_flags_recreate_the_container():
    every = ContainerCreateOptions(
        image="127.0.0.1:5000/fixtures/busybox:latest", command=("top", "-b"), name="web", entrypoint="/bin/sh",
        env=("A=1", "B=two words"), env_files=("/etc/env",), workdir="/w", user="app", tty=True, stdin=True,
        autoremove=True, hostname="h", add_hosts=("db:10.0.0.2",), dns=("10.0.0.1",), labels=("k=v",),
        restart="always", init=True, cap_add=("NET_ADMIN",), cap_drop=("MKNOD",), privileged=True,
        security_opt=("no-new-privileges=false",), userns="keep-id", memory="64m", memory_swap="128m", cpus="1.5",
        cpu_shares=512, pids_limit=100, ulimits=("nofile=10:20",), pull="never", platform="linux/amd64",
        network="host", publish=("8080:80",), publish_all=True, expose=("9000",), network_aliases=("www",),
        volumes=("/a:/b:ro",), mounts=("type=tmpfs,destination=/t",), tmpfs=("/run/x",), read_only=True,
        stop_signal="SIGINT", stop_timeout=5, health_cmd="true", health_interval="1s", health_timeout="2s",
        health_retries=4, health_start_period="3s", no_healthcheck=True, log_max_size="1m", runtime="/bin/true",
        sdnotify="conmon")
    options = dataclasses.asdict(every)
    options.pop("host_env")
    f = su.ContainerFacts(CID, "web", every.image, every.command, options)
    back = run_options([*su.run_flags(f), "--name=web", f"--sdnotify={every.sdnotify}", f.image, *f.command])
    assert comparable(back) == comparable(every)


def test_run_flags_resolve_env_and_relative_binds():
    flags = su.run_flags(facts())
    assert "--env=HOME=/home/app" in flags and "--volume=/srv/web/data:/data" in flags
    assert "--volume=cache:/cache:ro" in flags and "--restart=on-failure:3" in flags


def exec_start(text: str) -> list[str]:
    """The words systemd would run for ExecStart= (continuations joined, %% and $$ undone)."""
    joined = text.replace("\\\n", " ")
    line = next(l for l in joined.splitlines() if l.startswith("ExecStart="))
    return [w.replace("%%", "%").replace("$$", "$") for w in split_words(line.partition("=")[2])]


def test_quadlet_file_runs_what_generate_new_runs(tmp_path):
    """`generate quadlet`, then the generator: the same container as `generate systemd --new`."""
    f = facts(restart="no", tty=True, cpus="2", sdnotify="container", network="")
    name, text = su.quadlet_file(f)
    (tmp_path / name).write_text(text)
    units, errors = quadlet_generator.generate([str(tmp_path)], EXE, rootless=True)
    assert errors == [] and [u.name for u in units] == ["web.service"]
    via_quadlet = exec_start(units[0].text)
    via_generate = exec_start(su.container_unit(f, unit_options(new=True)).text)
    assert via_quadlet[:2] == via_generate[:2] == [EXE, "run"]
    assert comparable(run_options(via_quadlet[2:])) == comparable(run_options(via_generate[2:]))
    assert "--name=web" in via_quadlet and "--sdnotify=container" in via_quadlet


# -- systemd syntax ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("word,quoted", [
    ("plain", "plain"), ("a b", '"a b"'), ("100%", "100%%"), ("$HOME", "$$HOME"), ('say "hi"', '"say \\"hi\\""'),
    ("back\\slash", '"back\\\\slash"'), ("", '""'), (";", "\\;"), ("two\nlines", '"two\\nlines"'),
])
def test_quote_word(word, quoted):
    assert quote_word(word) == quoted


def test_quote_and_split_are_inverse():
    rng = random.Random(7)
    alphabet = "ab -=\"'\\\t\n;:/"
    for _ in range(500):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(rng.randint(1, 5))]
        assert split_words(" ".join(quote_word(w, percent=False, dollar=False) for w in words)) == words
    line = format_command(["/bin/x", "--flag=" + "y" * 100, "image", "arg"], 1, 2)
    assert line == "/bin/x \\\n\t--flag=" + "y" * 100 + " \\\n\timage arg"
    assert split_words(line.replace("\\\n", " ")) == ["/bin/x", "--flag=" + "y" * 100, "image", "arg"]
    assert split_words("a 'b c' \"d\\x41\"") == ["a", "b c", "dA"]
    with pytest.raises(ValueError, match="unbalanced"):
        split_words('a "b')


def test_parse_unit():
    text = "# comment\n[Unit]\nDescription = x\n; other comment\n[Container]\nExec=a \\\n# skipped\n  b\nK=\n"
    entries = parse_unit(text, "f.container")
    assert [(e.section, e.key, e.value, e.line) for e in entries] == [
        ("Unit", "Description", "x", 3), ("Container", "Exec", "a b", 6), ("Container", "K", "", 9)]
    for bad, where in (("Image=x\n", "f:1:"), ("[Container]\nnot an assignment\n", "f:2:"), ("[Unit\n", "f:1:"),
                       ("[Unit]\nA=b \\\n", "f:2:")):
        with pytest.raises(InvalidArgument, match=where):
            parse_unit(bad, "f")


# -- Quadlet errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,message", [
    ("[Container]\nImage=x\nImagee=typo\n", ":3: unknown key Imagee= in [Container]"),
    ("[Container]\nImage=x\nShmSize=1g\n", ":3: ShmSize= (a Podman Quadlet key) is not supported by pinnace"),
    ("[Container]\nImage=x\nVolume=gone.volume:/v\n", ":3: Volume= refers to gone.volume, which does not exist"),
    ("[Container]\nImage=x\nExec=sh -c 'x\n", ":3: Exec=: unbalanced quoting"),
    ("[Container]\nImage=x\nReadOnly=maybe\n", ":3: ReadOnly=maybe: not a boolean (true or false)"),
    ("[Container]\nExec=true\n", ": [Container] has no Image="),
    ("[Unit]\nDescription=x\n", ": no [Container] section"),
    ("[Quadlet]\nFoo=1\n[Container]\nImage=x\n", ":2: unknown key Foo= in [Quadlet]"),
])
def test_quadlet_errors_name_file_and_line(tmp_path, body, message):
    (tmp_path / "bad.container").write_text(body)
    (tmp_path / "good.container").write_text("[Container]\nImage=x\n")
    units, errors = quadlet_generator.generate([str(tmp_path)], EXE, rootless=True)
    assert [u.name for u in units] == ["good.service"]   # the others are still generated
    assert errors == [f"{tmp_path / 'bad.container'}{message}"]


def test_volume_and_network_keys(tmp_path):
    (tmp_path / "v.volume").write_text("[Volume]\nUser=1\n")
    (tmp_path / "n.network").write_text("[Network]\nSubnet=10.1.0.0/24\nSubnet=10.2.0.0/24\n")
    (tmp_path / "six.network").write_text("[Network]\nIPv6=yes\n")
    units, errors = quadlet_generator.generate([str(tmp_path)], EXE, rootless=True)
    assert units == [] and sorted(errors) == sorted([
        f"{tmp_path}/n.network:3: pinnace networks have one Subnet=",
        f"{tmp_path}/six.network:2: IPv6=true is not supported by pinnace",
        f"{tmp_path}/v.volume:2: User= (a Podman Quadlet key) is not supported by pinnace"])


def test_search_path(tmp_path, monkeypatch):
    monkeypatch.delenv("QUADLET_UNIT_DIRS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    dirs = quadlet_generator.unit_dirs(rootless=True)
    assert dirs[:2] == [str(tmp_path / "run/containers/systemd"), str(tmp_path / "cfg/containers/systemd")]
    assert quadlet_generator.unit_dirs(rootless=False)[1] == "/etc/containers/systemd"
    monkeypatch.setenv("QUADLET_UNIT_DIRS", "/a:/b")
    assert quadlet_generator.unit_dirs(rootless=True) == ["/a", "/b"]
    # the first file of a name wins, subdirectories are searched
    for d in ("one/sub", "two"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "one/sub/x.container").write_text("[Container]\nImage=first\n")
    (tmp_path / "two/x.container").write_text("[Container]\nImage=second\n")
    assert quadlet_generator.find_files([str(tmp_path / "one"), str(tmp_path / "two")]) == [
        str(tmp_path / "one/sub/x.container")]


def test_linger(tmp_path):
    assert not su.linger_enabled("alice", str(tmp_path))
    (tmp_path / "alice").touch()
    assert su.linger_enabled("alice", str(tmp_path))
