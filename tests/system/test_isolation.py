"""Isolation of a container from its host — security tests, kept strict.

Each test shows what a user (or an attacker inside the container) sees: processes, /proc and /sys,
mounts, files, capabilities, ids on the host, hostname and network. Most hold in both modes (`anyuser`);
the ones about the user namespace (container root = the unprivileged user on the host) are rootless only,
and `--privileged` as root has its own check.
"""
from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from testenv import REGISTRY

IMG = f"{REGISTRY}/fixtures/busybox:latest"

# Podman's default capability set (containers.conf default_capabilities): name -> bit
DEFAULT_CAPS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
                "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
                "CAP_SYS_CHROOT": 18, "CAP_SETFCAP": 31}
CAP_NET_ADMIN = 12
# where a file system backed by a disk (not proc/sysfs/tmpfs/...) may be bind-mounted into a container
VIRTUAL_FS = {"proc", "sysfs", "tmpfs", "devtmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "overlay"}


@pytest.fixture(scope="module")
def store(busybox_image):
    return busybox_image[0]


def run_sh(store, script: str, *opts: str, check: bool = True):
    return store("run", "--rm", *opts, IMG, "sh", "-c", script, check=check)


def status_fields(text: str) -> dict[str, str]:
    """`Key:\\tvalue` lines of /proc/PID/status."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def cap_names(mask_hex: str) -> set[str]:
    mask = int(mask_hex, 16)
    names = {bit: name for name, bit in DEFAULT_CAPS.items()} | {CAP_NET_ADMIN: "CAP_NET_ADMIN"}
    return {names.get(bit, f"cap#{bit}") for bit in range(64) if mask >> bit & 1}


def mask_of(bits) -> int:
    return sum(1 << b for b in bits)


def full_cap_mask() -> int:
    return (1 << (int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1)) - 1


def mountinfo(text: str) -> list[dict]:
    """Parse /proc/PID/mountinfo: root (path inside its fs), mount point, options, fstype, source."""
    rows = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        fstype, source = right.split()[:2]
        rows.append({"root": f[3], "point": f[4], "opts": f[5].split(","), "fstype": fstype, "source": source})
    return rows


def host_status(pid: int) -> dict[str, str]:
    return status_fields(Path(f"/proc/{pid}/status").read_text())


def subid_base(path: str) -> int:
    """The first subordinate id of this user in /etc/subuid or /etc/subgid."""
    import pwd
    name = pwd.getpwuid(os.getuid()).pw_name
    for line in Path(path).read_text().splitlines():
        fields = line.split(":")
        if fields[0] in (name, str(os.getuid())):
            return int(fields[1])
    raise AssertionError(f"{name} has no range in {path}")


# -- processes ---------------------------------------------------------------------------------------------
@pytest.mark.anyuser
def test_container_sees_only_its_own_processes(store):
    tag = f"{os.getpid()}.{uuid.uuid4().int % 10**6}"
    host_proc = subprocess.Popen(["sleep", f"1000.{tag}"])  # a host process with a name nobody else has
    ctr = None
    try:
        res = run_sh(store, "ps -o pid,args; exit 0")
        rows = [line.split(None, 1) for line in res.out.splitlines()[1:]]
        assert tag not in res.out and str(os.getpid()) not in {r[0] for r in rows}, res.out
        assert len(rows) == 2, f"the container sees other processes than its own:\n{res.out}"
        assert rows[0] == ["1", "sh -c ps -o pid,args; exit 0"], res.out
        assert "ps" in rows[1][1], res.out

        # exec joins the same pid namespace: the container's command is pid 1, nothing of the host shows
        ctr = store("run", "-d", IMG, "sleep", "1000").out.strip()
        listing = "for d in /proc/[0-9]*; do echo ${d#/proc/} $(tr '\\0' ' ' < $d/cmdline); done"
        res = store("exec", ctr, "sh", "-c", listing)
        pids = dict(line.partition(" ")[::2] for line in res.out.splitlines())
        assert pids["1"].strip() == "sleep 1000", res.out
        assert tag not in res.out and "pytest" not in res.out, res.out
        assert all(int(p) < 50 for p in pids), f"pids of another namespace are visible: {res.out}"
    finally:
        host_proc.kill()
        host_proc.wait()
        if ctr:
            store("rm", "-f", ctr, check=False)


# -- /proc and /sys ----------------------------------------------------------------------------------------
@pytest.mark.anyuser
def test_kcore_and_other_kernel_files_are_masked(store):
    assert os.listdir("/sys/dev/block"), "the host lists block devices in /sys/dev/block (the check needs some)"
    script = (
        "if [ -e /proc/kcore ]; then echo kcore $(head -c 64 /proc/kcore | wc -c); else echo kcore absent; fi\n"
        "for f in /proc/keys /proc/timer_list; do cat $f > /tmp/out; echo $f rc=$? bytes=$(wc -c < /tmp/out); done\n"
        "for d in /proc/acpi /sys/firmware /sys/dev/block; do echo $d entries=$(ls -A $d | wc -l); done\n"
        # the masks cannot be taken off (no CAP_SYS_ADMIN): they still hold afterwards
        "umount /proc/keys; umount -l /proc/timer_list; umount /sys/dev/block\n"
        "echo after timer_list bytes=$(cat /proc/timer_list | wc -c) keys=$(cat /proc/keys | wc -c) "
        "block=$(ls -A /sys/dev/block | wc -l)\n")
    res = run_sh(store, script)
    lines = res.out.splitlines()
    assert lines[0] in ("kcore absent", "kcore 0"), f"/proc/kcore is readable in the container: {lines[0]}"
    # unmasked, /proc/timer_list is root-only on the host (permission denied) or full of data: masked it is empty
    assert lines[1] == "/proc/keys rc=0 bytes=0", res.out
    assert lines[2] == "/proc/timer_list rc=0 bytes=0", res.out
    assert lines[3:6] == ["/proc/acpi entries=0", "/sys/firmware entries=0", "/sys/dev/block entries=0"], res.out
    assert lines[6] == "after timer_list bytes=0 keys=0 block=0", res.out + res.err


@pytest.mark.anyuser
def test_sys_cannot_be_written(store):
    script = (
        "touch /sys/x; echo touch=$?\n"
        "echo 1 > /sys/kernel/mm/ksm/run; echo ksm=$?\n"
        "mkdir /sys/fs/cgroup/escape; echo mkdir=$?\n"
        "mount -o remount,rw /sys; echo remount=$?\n"
        "touch /sys/x; echo touch_again=$?\n"
        "grep -c ' /sys ro,' /proc/self/mountinfo\n")
    assert os.path.exists("/sys/kernel/mm/ksm/run"), "the check writes a sysfs file the host has"
    res = run_sh(store, script)
    assert res.out.splitlines() == ["touch=1", "ksm=1", "mkdir=1", "remount=1", "touch_again=1", "1"], \
        res.out + res.err
    assert "Read-only file system" in res.err, res.err


@pytest.mark.anyuser
def test_read_only_root_cannot_be_remounted_read_write(store):
    script = (
        "touch /x; echo touch=$?\n"
        "mount -o remount,rw /; echo remount=$?\n"
        "mount -o remount,rw,bind /; echo remount_bind=$?\n"
        "umount -l /; echo umount=$?\n"
        "touch /x /etc/x /bin/x; echo touch_again=$?\n"
        "ls /x 2>/dev/null; cat /proc/self/mountinfo\n")
    res = run_sh(store, script, "--read-only")
    lines = res.out.splitlines()
    assert lines[:5] == ["touch=1", "remount=1", "remount_bind=1", "umount=1", "touch_again=1"], res.out + res.err
    root = [m for m in mountinfo("\n".join(lines[5:])) if m["point"] == "/"]
    assert len(root) == 1 and "ro" in root[0]["opts"], lines[5:]
    assert "Read-only file system" in res.err, res.err


# -- files and mounts of the host --------------------------------------------------------------------------
@pytest.mark.anyuser
def test_host_files_and_mounts_are_not_reachable(store, tmp_path):
    tag = uuid.uuid4().hex
    hostdir, voldir = tmp_path / "host", tmp_path / "vol"
    hostdir.mkdir()
    voldir.mkdir()
    (hostdir / f"hostmark-{tag}").write_text("secret\n")
    (voldir / f"volmark-{tag}").write_text("shared\n")
    for p in (tmp_path, hostdir, voldir):
        p.chmod(0o755)  # readable by anyone: only the mount namespace may hide it
    ctr = store("create", "-v", f"{voldir}:/data", IMG, "sh", "-c",
                f"find / -name '*mark-{tag}' 2>/dev/null; echo ==; cat /proc/self/mountinfo").out.strip()
    try:
        cdir = str(store.root / "containers" / ctr)
        res = store("start", "-a", ctr)
    finally:
        store("rm", "-f", ctr, check=False)
    found, _, info = res.out.partition("==\n")
    # the volume is there (so find works), the host's file is not, by any path
    assert found.split() == [f"/data/volmark-{tag}"], res.out
    allowed_points = ("/", "/proc", "/dev", "/sys", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/data")
    bundle_files = {f"{cdir}/hosts", f"{cdir}/hostname", f"{cdir}/resolv.conf"}
    for m in mountinfo(info):
        point = m["point"]
        assert any(point == a or point.startswith(a.rstrip("/") + "/") for a in allowed_points[1:]) or point == "/", m
        if m["fstype"] not in VIRTUAL_FS:
            # a bind of the host's disk: only the container's own files and the volume, never a whole fs
            assert m["root"] != "/", f"a host file system is mounted whole in the container: {m}"
            expected = bundle_files | {str(voldir)}
            assert any(path.endswith(m["root"]) for path in expected), f"host path visible in the container: {m}"
    assert str(hostdir) not in info


@pytest.mark.anyuser
def test_dev_has_no_host_devices(store):
    res = run_sh(store, "find /dev -type b; echo ==; find /dev -type c")
    blocks, _, chars = res.out.partition("==\n")
    assert blocks.split() == [], f"block devices in the container: {blocks}"
    allowed = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/console",
               "/dev/pts/ptmx", "/dev/ptmx"}
    assert set(chars.split()) <= allowed, f"unexpected devices: {set(chars.split()) - allowed}"
    assert {"/dev/null", "/dev/zero", "/dev/urandom"} <= set(chars.split()), chars
    res = run_sh(store, f"mknod /tmp/disk b {os.major(os.stat('/').st_dev)} {os.minor(os.stat('/').st_dev)} "
                        "&& head -c 512 /tmp/disk | wc -c", check=False)
    assert res.rc != 0 and "not permitted" in res.err, (res.out, res.err)


# -- capabilities and no_new_privs -------------------------------------------------------------------------
@pytest.mark.anyuser
def test_default_capabilities_and_no_new_privs(store):
    st = status_fields(run_sh(store, "cat /proc/self/status").out)
    assert cap_names(st["CapBnd"]) == set(DEFAULT_CAPS), f"bounding set {st['CapBnd']}: {cap_names(st['CapBnd'])}"
    assert int(st["CapBnd"], 16) == mask_of(DEFAULT_CAPS.values())
    assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == mask_of(DEFAULT_CAPS.values()), st
    assert int(st["CapAmb"], 16) == 0 and int(st["CapInh"], 16) == 0, st
    assert st["NoNewPrivs"] == "1", st
    # without CAP_NET_ADMIN the container cannot configure its network
    res = run_sh(store, "ip link set lo up", "--network", "none", check=False)
    assert res.rc != 0 and "not permitted" in res.err, (res.rc, res.err)


@pytest.mark.anyuser
def test_cap_drop_all_and_cap_add(store):
    st = status_fields(run_sh(store, "cat /proc/self/status", "--cap-drop", "ALL").out)
    assert [int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")] == [0] * 5, st
    res = run_sh(store, "touch /tmp/f && chown 1000 /tmp/f", "--cap-drop", "ALL", check=False)
    assert res.rc == 1 and "not permitted" in res.err, (res.rc, res.err)

    st = status_fields(run_sh(store, "cat /proc/self/status", "--cap-add", "NET_ADMIN").out)
    expected = mask_of([*DEFAULT_CAPS.values(), CAP_NET_ADMIN])
    assert int(st["CapBnd"], 16) == int(st["CapEff"], 16) == expected, cap_names(st["CapBnd"])
    res = run_sh(store, "ip link set lo up && cat /sys/class/net/lo/flags", "--cap-add", "NET_ADMIN",
                 "--network", "none")
    assert int(res.out, 16) & 1, f"lo is not up: {res.out}"  # IFF_UP


@pytest.mark.anyuser
def test_non_root_user_has_no_effective_capabilities(store):
    st = status_fields(run_sh(store, "cat /proc/self/status", "-u", "1000").out)
    assert st["Uid"].split() == ["1000"] * 4 and st["Gid"].split() == ["1000"] * 4, st
    assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == int(st["CapAmb"], 16) == 0, st
    assert st["NoNewPrivs"] == "1", st


# -- root in the container is the unprivileged user on the host (rootless) --------------------------------
def test_root_in_container_is_the_user_on_host(store, tmp_path):
    assert os.getuid() != 0, "the rootless tier runs as the unprivileged test user"
    vol = tmp_path / "vol"
    vol.mkdir()
    ctr = store("run", "-d", "-v", f"{vol}:/data", IMG, "sleep", "1000").out.strip()
    try:
        pid = int(store("inspect", "--format", "{{.State.Pid}}", ctr).out)
        st = host_status(pid)
        assert st["Uid"].split() == [str(os.getuid())] * 4, st["Uid"]
        assert st["Gid"].split() == [str(os.getgid())] * 4, st["Gid"]
        # its capabilities count in a user namespace of its own, not in the host's
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        # no id of the container maps to a host id below the user's own: never to host root
        for name in ("uid_map", "gid_map"):
            rows = [tuple(map(int, line.split())) for line in
                    store("exec", ctr, "cat", f"/proc/self/{name}").out.splitlines()]
            assert rows[0] == (0, os.getuid() if name == "uid_map" else os.getgid(), 1), rows
            assert all(outside != 0 for _, outside, _ in rows), rows
        store("exec", ctr, "sh", "-c", "touch /data/by-root && touch /data/by-app && chown 1000:1000 /data/by-app")
        st_root, st_app = os.stat(vol / "by-root"), os.stat(vol / "by-app")
        assert (st_root.st_uid, st_root.st_gid) == (os.getuid(), os.getgid())
        assert (st_app.st_uid, st_app.st_gid) == (subid_base("/etc/subuid") + 999, subid_base("/etc/subgid") + 999)
        # ids outside the subordinate range cannot be given away, not even by root in the container
        res = store("exec", ctr, "chown", "70000:70000", "/data/by-root", check=False)
        assert res.rc != 0 and os.stat(vol / "by-root").st_uid == os.getuid(), res
    finally:
        store("rm", "-f", ctr, check=False)


def test_privileged_has_all_capabilities_but_is_still_the_user_on_host(store, tmp_path):
    assert os.getuid() != 0
    vol = tmp_path / "vol"
    vol.mkdir()
    host_name = socket.gethostname()
    ctr = store("run", "-d", "--privileged", "-v", f"{vol}:/data", IMG, "sleep", "1000").out.strip()
    try:
        st = status_fields(store("exec", ctr, "cat", "/proc/self/status").out)
        assert int(st["CapBnd"], 16) == int(st["CapEff"], 16) == full_cap_mask(), st["CapBnd"]
        pid = int(store("inspect", "--format", "{{.State.Pid}}", ctr).out)
        assert host_status(pid)["Uid"].split() == [str(os.getuid())] * 4
        store("exec", ctr, "touch", "/data/f")
        assert os.stat(vol / "f").st_uid == os.getuid()
        # all capabilities, but only over what the user owns: the host's root-only files and disk stay closed
        res = store("exec", ctr, "cat", "/proc/timer_list", check=False)  # root-only on the host
        assert res.out == "", "container root reads a file only the host's root may read"
        res = store("exec", ctr, "sh", "-c", "echo 3 > /proc/sys/vm/drop_caches", check=False)
        assert res.rc != 0, "container root changed a kernel setting of the host"
        dev = os.stat("/").st_dev
        res = store("exec", ctr, "sh", "-c", f"mknod /tmp/disk b {os.major(dev)} {os.minor(dev)} && "
                    "head -c 512 /tmp/disk | wc -c", check=False)
        assert res.rc != 0 and res.out.strip() in ("", "0"), res
        # its own UTS namespace: renaming the container's host leaves the host's name alone
        store("exec", ctr, "hostname", f"evil-{uuid.uuid4().hex[:8]}")
        assert socket.gethostname() == host_name
        assert store("exec", ctr, "hostname").out.startswith("evil-")
    finally:
        store("rm", "-f", ctr, check=False)


@pytest.mark.rootful
def test_privileged_as_root_gets_the_callers_bounding_set(store):
    """A rootful --privileged container gets every capability the caller has (Podman: the bounding set
    of the engine), not capabilities the caller lacks."""
    mine = status_fields(Path("/proc/self/status").read_text())["CapBnd"]
    res = run_sh(store, "grep CapBnd /proc/self/status", "--privileged", check=False)
    assert res.rc == 0, res.err
    assert int(res.out.split()[1], 16) == int(mine, 16), (res.out, mine)


@pytest.mark.rootful
def test_rootful_container_root_has_only_the_default_set(store):
    assert os.geteuid() == 0
    st = status_fields(run_sh(store, "cat /proc/self/status").out)
    assert int(st["CapBnd"], 16) == int(st["CapEff"], 16) == mask_of(DEFAULT_CAPS.values()), st["CapBnd"]
    # no CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_MKNOD: mounts, kernel tunables, the host's name and disks are out of reach
    dev = os.stat("/").st_dev
    res = run_sh(store, "mount -t tmpfs t /tmp; echo mount=$?; hostname evil; echo hostname=$?; "
                        "echo 3 > /proc/sys/vm/drop_caches; echo sysctl=$?; "
                        f"mknod /tmp/disk b {os.major(dev)} {os.minor(dev)}; echo mknod=$?", check=False)
    assert [line.split("=")[1] != "0" for line in res.out.split()] == [True] * 4, res.out + res.err
    assert socket.gethostname() != "evil"


# -- hostname, /etc/hosts, DNS, network -------------------------------------------------------------------
@pytest.mark.anyuser
def test_hostname_defaults_to_the_short_id(store):
    ctr = store("create", IMG, "sh", "-c", "hostname; cat /etc/hostname; echo $HOSTNAME").out.strip()
    try:
        out = store("start", "-a", ctr).out
    finally:
        store("rm", "-f", ctr, check=False)
    assert out.split() == [ctr[:12]] * 3, out


@pytest.mark.anyuser
def test_hostname_hosts_dns_and_network_none(store):
    script = ("hostname; echo ==; cat /etc/hosts; echo ==; cat /etc/resolv.conf; echo ==; ls /sys/class/net; "
              "echo ==; tail -n +3 /proc/net/dev | cut -d: -f1")
    res = run_sh(store, script, "--hostname", "web1", "--add-host", "db.example:10.1.2.3",
                 "--add-host", "cache:10.1.2.4", "--dns", "10.9.8.7", "--network", "none")
    hostname, hosts, resolv, sysnet, procnet = res.out.split("==\n")
    assert hostname == "web1\n"
    host_rows = [line.split() for line in hosts.splitlines() if line.strip() and not line.startswith("#")]
    assert ["10.1.2.3", "db.example"] in host_rows and ["10.1.2.4", "cache"] in host_rows, hosts
    assert any(r[0] in ("127.0.0.1", "::1") and "localhost" in r for r in host_rows), hosts
    nameservers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    assert nameservers == ["10.9.8.7"], resolv
    assert sysnet.split() == ["lo"] and procnet.split() == ["lo"], (sysnet, procnet)
