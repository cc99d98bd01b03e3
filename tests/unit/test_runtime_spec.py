"""config.json generation: Docker's command/env/user rules, Podman's capability and path defaults."""
from __future__ import annotations

import resource

import pytest

from pinnace.errors import InvalidArgument
from pinnace.runtime.spec import (DEFAULT_CAPS, DEFAULT_PATH, ProcessOptions, build_spec, capabilities,
                                  merge_command, merge_env, rlimits)
from pinnace.runtime.users import ExecUser, resolve_user

IMAGE = {"config": {"Entrypoint": ["/entry"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "A=image"],
                    "WorkingDir": "/srv"}}
ROOT = ExecUser(0, 0, (), "/root", "root")


@pytest.mark.parametrize("opts,expected", [
    (ProcessOptions(), ["/entry", "--serve"]),
    (ProcessOptions(command=("x", "y")), ["/entry", "x", "y"]),
    (ProcessOptions(entrypoint="/other"), ["/other"]),                 # --entrypoint drops the image CMD
    (ProcessOptions(entrypoint="/other", command=("z",)), ["/other", "z"]),
    (ProcessOptions(entrypoint="", command=("sh",)), ["sh"]),          # "" clears the entrypoint
])
def test_entrypoint_and_cmd_merge(opts, expected):
    assert merge_command(IMAGE, opts) == expected


def test_no_command_is_an_error():
    with pytest.raises(InvalidArgument, match="no command"):
        merge_command({"config": {}}, ProcessOptions())
    with pytest.raises(InvalidArgument):
        merge_command(IMAGE, ProcessOptions(entrypoint=""))


def test_env_merge():
    env = merge_env(IMAGE, ProcessOptions(env=("A=user", "B=", "FROM_HOST", "NOT_SET"), hostname="h", tty=True,
                                          host_env={"FROM_HOST": "hv"}), ROOT)
    assert env == ["PATH=/bin", "A=user", "B=", "FROM_HOST=hv", "HOSTNAME=h", "HOME=/root", "TERM=xterm"]
    assert merge_env({"config": {}}, ProcessOptions(), ROOT)[0] == f"PATH={DEFAULT_PATH}"
    with pytest.raises(InvalidArgument):
        merge_env(IMAGE, ProcessOptions(env=("=x",)), ROOT)


def test_capabilities():
    assert capabilities(ProcessOptions()) == sorted(DEFAULT_CAPS)
    caps = capabilities(ProcessOptions(cap_add=("net_raw",), cap_drop=("CAP_CHOWN",)))
    assert "CAP_NET_RAW" in caps and "CAP_CHOWN" not in caps
    assert capabilities(ProcessOptions(cap_drop=("all",), cap_add=("kill",))) == ["CAP_KILL"]
    assert "CAP_SYS_ADMIN" in capabilities(ProcessOptions(privileged=True))
    with pytest.raises(InvalidArgument, match="unknown capability"):
        capabilities(ProcessOptions(cap_add=("fly",)))


def test_rlimits_never_exceed_the_host_hard_limit():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = next(r for r in rlimits(ProcessOptions()) if r["type"] == "RLIMIT_NOFILE")
    assert nofile["hard"] <= (hard if hard != resource.RLIM_INFINITY else 2**64)
    got = next(r for r in rlimits(ProcessOptions(ulimits=("nofile=100:200",))) if r["type"] == "RLIMIT_NOFILE")
    assert (got["soft"], got["hard"]) == (100, 200)
    for bad in ("nofile=2:1", "bogus=1", "nofile", "nofile=a"):
        with pytest.raises(InvalidArgument):
            rlimits(ProcessOptions(ulimits=(bad,)))


def test_build_spec_document():
    spec = build_spec(image_config=IMAGE, opts=ProcessOptions(hostname="box"), user=ROOT, rootfs="/r",
                      own_netns=False, rootless=True)
    assert spec["process"]["cwd"] == "/srv" and spec["process"]["noNewPrivileges"] is True
    assert spec["root"] == {"path": "/r", "readonly": False}
    types = {n["type"] for n in spec["linux"]["namespaces"]}
    assert types == {"pid", "ipc", "uts", "mount", "cgroup"}  # no netns asked: host network; no user ns listed
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "bind" and "ro" in sys_mount["options"]
    devpts = next(m for m in spec["mounts"] if m["destination"] == "/dev/pts")
    assert "gid=5" not in devpts["options"]  # gid 5 is not mapped in a user namespace
    assert "/proc/kcore" in spec["linux"]["maskedPaths"] and "/proc/sys" in spec["linux"]["readonlyPaths"]


def _rootfs(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
                                "# comment\nbroken line\nnobody:x:65534:65534::/nonexistent:/bin/false\n")
    (etc / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:app\n")
    return tmp_path


def test_resolve_user(tmp_path):
    root = _rootfs(tmp_path)
    assert resolve_user(root, None) == ExecUser(0, 0, (), "/root", "root")
    assert resolve_user(root, "app") == ExecUser(1000, 1000, (10, 50), "/home/app", "app")
    assert resolve_user(root, "1000") == ExecUser(1000, 1000, (10, 50), "/home/app", "app")
    assert resolve_user(root, "app:staff") == ExecUser(1000, 50, (), "/home/app", "app")
    assert resolve_user(root, "4242:4343") == ExecUser(4242, 4343, (), "/", None)  # unknown ids are fine
    assert resolve_user(root, "4242") == ExecUser(4242, 0, (), "/", None)
    with pytest.raises(InvalidArgument, match="unable to find user ghost"):
        resolve_user(root, "ghost")
    with pytest.raises(InvalidArgument, match="unable to find group nogroup"):
        resolve_user(root, "app:nogroup")
    with pytest.raises(InvalidArgument):
        resolve_user(root, "app:")


def test_resolve_user_without_etc_files(tmp_path):
    assert resolve_user(tmp_path, "7") == ExecUser(7, 0, (), "/", None)
    with pytest.raises(InvalidArgument):
        resolve_user(tmp_path, "app")
