"""Parsing of -v/--volume, --mount and --tmpfs into mount requests and OCI mount options (Docker rules)."""
from __future__ import annotations

import os

import pytest

from pinnace.engine.container_mounts import (MountRequest, bind_mount, keep_source_flags, parse_mount,
                                             parse_requests, parse_size, parse_tmpfs, parse_volume,
                                             split_volume_spec, tmpfs_mount)
from pinnace.errors import InvalidArgument
from pinnace.runtime.users import ExecUser

APP = ExecUser(1000, 1001, (), "/home/app", "app")


@pytest.mark.parametrize("text,expected", [
    ("/data", (None, "/data", ())),
    ("vol:/data", ("vol", "/data", ())),
    ("/src:/dst:ro,Z", ("/src", "/dst", ("ro", "Z"))),
    ("./rel:/dst:U", ("./rel", "/dst", ("U",))),
])
def test_split_volume_spec(text, expected):
    assert split_volume_spec(text) == expected


@pytest.mark.parametrize("text,message", [
    ("", "expected"),
    ("a:b:c:d", "expected"),
    (":/dst", "empty source"),
    ("/src:", "empty destination"),
    ("/src:/dst:ro,,z", "empty option"),
    ("/data:ro", "options need a source"),   # Docker refuses an anonymous volume with options too
])
def test_split_volume_spec_errors(text, message):
    with pytest.raises(InvalidArgument, match=message):
        split_volume_spec(text)


def test_volume_forms():
    assert parse_volume("/data", "/w") == MountRequest("volume", "/data")
    assert parse_volume("cache:/var/cache/", "/w") == MountRequest("volume", "/var/cache", "cache")
    assert parse_volume("/srv:/srv:ro,z", "/w") == MountRequest("bind", "/srv", "/srv", readonly=True)
    assert parse_volume("./a/../b:/b", "/w") == MountRequest("bind", "/b", "/w/b")
    assert parse_volume("../up:/up", "/w/x").source == "/w/up"
    assert parse_volume("~/in-home:/h", "/w").source == os.path.expanduser("~/in-home")
    r = parse_volume("v1:/d:rw,U,nocopy,noexec,nosuid,rshared", "/")
    assert (r.readonly, r.chown, r.nocopy, r.options) == (False, True, True, ("noexec", "nosuid", "rshared"))
    assert parse_volume("/a:/b:bind", "/").options == ("bind",)   # non-recursive bind kept for the runtime


@pytest.mark.parametrize("text,message", [
    ("/src:relative", "must be an absolute path"),
    ("vol:/", "can't be '/'"),
    ("/src:/dst:ro,rw", "conflicting"),
    ("/src:/dst:z,Z", "conflicting"),
    ("/src:/dst:ro,ro", "repeated"),
    ("/src:/dst:shared,private", "conflicting"),
    ("/src:/dst:fast", "unknown option 'fast'"),
    ("has/slash:/dst", "not a valid volume name"),
    ("x:/dst", "not a valid volume name"),   # one character: too short for Docker's rule
])
def test_volume_errors(text, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_volume(text, "/")


def test_mount_forms():
    assert parse_mount("type=bind,source=/s,target=/t,readonly", "/") == \
        MountRequest("bind", "/t", "/s", readonly=True)
    assert parse_mount("type=bind,src=.,dst=/t,ro=false,bind-propagation=rslave", "/w") == \
        MountRequest("bind", "/t", "/w", options=("rslave",))
    assert parse_mount("type=bind,src=/s,destination=/t,bind-nonrecursive", "/").options == ("bind",)
    assert parse_mount("target=/data", "/") == MountRequest("volume", "/data")   # type defaults to volume
    assert parse_mount('type=volume,"source=v1",target=/d,volume-nocopy,volume-label=a=b,U=true', "/") == \
        MountRequest("volume", "/d", "v1", nocopy=True, chown=True, labels=(("a", "b"),))
    assert parse_mount("type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1770,ro=1", "/") == \
        MountRequest("tmpfs", "/t", readonly=True, options=("size=67108864", "mode=1770"))
    assert parse_mount("TYPE=bind,SRC=/s,DST=/t,consistency=cached", "/").source == "/s"


@pytest.mark.parametrize("text,message", [
    ("type=bind,target=/t", "needs a source"),
    ("type=bind,source=/s", "target is required"),
    ("type=tmpfs,source=x,target=/t", "takes no source"),
    ("type=npipe,target=/t", "type must be"),
    ("type=bind,source=/s,target=/t,volume-nocopy", "cannot mix 'volume-\\*'"),
    ("type=volume,target=/t,tmpfs-size=1m", "cannot mix 'tmpfs-\\*'"),
    ("type=bind,source=/s,target=/t,readonly=maybe", "true or false"),
    ("type=bind,source=/s,target=/t,bind-propagation=sideways", "unknown bind-propagation"),
    ("type=bind,source=/s,target=/t,color=red", "unexpected key 'color'"),
    ("type=bind,source,target=/t", "key=value"),
    ("type=tmpfs,target=/t,tmpfs-size=lots", "invalid size"),
    ("type=tmpfs,target=/t,tmpfs-mode=999", "octal"),
    ("type=volume,source=v1,target=/t,volume-driver=nfs", "only 'local'"),
    ("type=volume,source=v1,target=/t,volume-opt=o=bind", "not supported"),
    ('type=bind,"source=/s,target=/t', "comma-separated"),
])
def test_mount_errors(text, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_mount(text, "/")


def test_sizes():
    assert parse_size("1024", "x") == 1024
    assert parse_size("512k", "x") == 512 * 1024
    assert parse_size("1.5g", "x") == 3 * 1024 ** 3 // 2
    assert parse_size("2MiB", "x") == 2 * 1024 ** 2


def test_tmpfs_defaults_and_overrides():
    assert tmpfs_mount(parse_tmpfs("/run"), APP) == \
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["noexec", "nosuid", "nodev"]}
    m = tmpfs_mount(parse_tmpfs("/t:exec,size=10m,ro,mode=700,size=20m,noatime"), APP)
    # exec cancels the default noexec and is not passed on (the runtime would hand it to tmpfs as data)
    assert m["options"] == ["nosuid", "nodev", "ro", "noatime", "size=20m", "mode=700"]
    assert tmpfs_mount(parse_tmpfs("/t:U,uid=5"), APP)["options"][-2:] == ["uid=1000", "gid=1001"]
    assert tmpfs_mount(parse_tmpfs("/t:nosuid"), APP)["options"] == ["noexec", "nosuid", "nodev"]


@pytest.mark.parametrize("text,message", [
    ("t", "absolute"),
    ("/t:size=big", "malformed option 'size=big'"),
    ("/t:color=red", "unknown or malformed"),
    ("/t:nocopy", "unknown option 'nocopy'"),
    ("/t:exec,noexec", "conflicting"),
])
def test_tmpfs_errors(text, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_tmpfs(text)


def test_requests_order_duplicates_and_image_volumes():
    reqs = parse_requests(volumes=("/a/b/c", "v1:/a"), mounts=("type=tmpfs,dst=/a/b",), tmpfs=("/z",),
                          image_volumes=["/a", "/data/", "/z/"], cwd="/")
    assert [r.destination for r in reqs] == ["/a", "/z", "/data", "/a/b", "/a/b/c"]  # parents first
    assert [r for r in reqs if r.destination == "/data"] == [MountRequest("volume", "/data")]
    assert reqs[0].source == "v1"   # the flag, not the image's anonymous volume
    for dup in [dict(volumes=("/x", "v1:/x/")), dict(volumes=("/x",), tmpfs=("/x",)),
                dict(mounts=("target=/x", "type=tmpfs,target=//x"))]:
        args = {"volumes": (), "mounts": (), "tmpfs": (), **dup}
        with pytest.raises(InvalidArgument, match="duplicate mount destination /x"):
            parse_requests(**args, image_volumes=[], cwd="/")


def test_remount_keeps_locked_source_flags():
    locked = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME
    assert keep_source_flags(["rbind"], locked) == ["rbind"]   # no remount: the bind inherits them
    assert keep_source_flags(["rbind", "ro"], locked) == ["rbind", "ro", "nosuid", "nodev", "noexec", "noatime"]
    assert keep_source_flags(["rbind", "ro", "exec"], os.ST_NOEXEC | os.ST_RELATIME) == ["rbind", "ro", "exec"]
    assert keep_source_flags(["rbind", "nosuid"], os.ST_RDONLY) == ["rbind", "nosuid", "ro", "strictatime"]
    assert keep_source_flags(["rbind", "ro"], os.ST_RELATIME | os.ST_NODIRATIME) == ["rbind", "ro", "nodiratime"]


def test_bind_mount_object(tmp_path):
    m = bind_mount("/dst", str(tmp_path), parse_volume(f"{tmp_path}:/dst:ro,rprivate", "/"))
    assert m["type"] == "bind" and m["source"] == str(tmp_path) and m["destination"] == "/dst"
    assert m["options"][:3] == ["rbind", "ro", "rprivate"]
