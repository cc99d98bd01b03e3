"""Container cgroups: may we manage them here (probe), one per container with its limits (create),
processes into it (enter), pause (freeze/thaw), usage (stats), cleanup (remove).

cgroup v2 puts a container in `<base>/pinnace/<id>`, <base> being the highest writable cgroup above our
own (root: the hierarchy root; a rootless user: the one systemd delegated, user@UID.service). Never below
our own cgroup: a non-root v2 cgroup holding processes cannot give its children controllers ("no internal
processes"), so the container gets a sibling subtree, as crun does. cgroup v1 (and the hybrid layout,
whose controllers are on v1) puts it in `<mount>/pinnace/<id>` of each hierarchy used, as root only: v1
has no safe delegation, so rootless v1 ignores limits with a warning, as Podman does.

Imported by the supervisor and by the container's forked child: stdlib os/time/dataclasses only.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field

from pinnace.errors import InvalidArgument, PinnaceError

PARENT = "pinnace"  # the one directory we create cgroups under; nothing outside it is touched
CPU_PERIOD = 100_000  # µs, the kernel's default CFS period (Docker/Podman use it for --cpus)
MIN_MEMORY = 6 * 1024 * 1024  # Docker's and Podman's minimum --memory
V1_USED = ("memory", "cpu", "cpuacct", "pids", "freezer")  # the v1 hierarchies a container joins
V1_ALL = frozenset(("cpuset", "cpu", "cpuacct", "blkio", "io", "memory", "devices", "freezer", "net_cls",
                    "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"))
V2_USED = ("memory", "pids", "cpu")
# resources key -> the controller that applies it
_NEEDS = {"memory": "memory", "cpu": "cpu", "pids": "pids"}
_FLAGS = {"memory": "--memory/--memory-swap", "cpu": "--cpus/--cpu-shares", "pids": "--pids-limit"}
_UNLIMITED_V1 = 1 << 62  # v1 reports "no limit" as PAGE_COUNTER_MAX * page size (~2^63)
_WAIT = 10.0  # s to wait for a freeze, or for an exited process to leave a cgroup


@dataclass(frozen=True)
class CgroupSupport:
    mode: str  # "v2", "v1", "hybrid" (v1 controllers + an empty v2 mount), "none"
    manageable: bool
    reason: str  # why not manageable: one line, for warnings and `info` ("" when manageable)
    # where containers go: (("unified", base),) for v2, ((controller, mountpoint), …) for v1
    roots: tuple[tuple[str, str], ...] = ()
    controllers: tuple[str, ...] = ()  # usable controllers (v2: base's cgroup.controllers)


@dataclass
class ContainerCgroup:
    paths: dict[str, str]  # "unified" -> dir (v2), or v1 controller -> dir (several may share one dir)
    warnings: list[str] = field(default_factory=list)  # limits that could not be applied (not persisted)


# ---------------------------------------------------------------- probing

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _unescape(s: str) -> str:  # mountinfo escapes space, tab, newline and backslash as \\ooo
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        s = s.replace(code, char)
    return s


def _cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(mountpoint, root within the hierarchy, fstype, super options) of every cgroup/cgroup2 mount."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if sep and len(f) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
            found.append((_unescape(f[4]), _unescape(f[3]), r[0], set(r[2].split(","))))
    return found


def _in_mount(point: str, root: str, path: str) -> str:
    """The directory of cgroup `path` (as /proc/self/cgroup names it) under a mount of `root`."""
    if root != "/" and (path == root or path.startswith(root.rstrip("/") + "/")):
        path = path[len(root):]
    rel = path.strip("/")
    return os.path.join(point, rel) if rel else point


def _writable(d: str) -> bool:
    return all(os.access(p, os.W_OK) for p in
               (d, os.path.join(d, "cgroup.procs"), os.path.join(d, "cgroup.subtree_control")))


def _may_hold_children(d: str) -> bool:
    """The real root cgroup (no cgroup.type) always; any other only without processes of its own."""
    if not os.path.exists(os.path.join(d, "cgroup.type")):
        return True
    try:
        return not _read(os.path.join(d, "cgroup.procs")).strip()
    except OSError:
        return False


def probe(rootless: bool, *, mountinfo: str | None = None, self_cgroup: str | None = None) -> CgroupSupport:
    """What this process may do with cgroups. `mountinfo`/`self_cgroup`: the texts of /proc/self/mountinfo
    and /proc/self/cgroup (tests point them at one hierarchy of a hybrid host)."""
    try:
        mounts = _cgroup_mounts(_read("/proc/self/mountinfo") if mountinfo is None else mountinfo)
        own_text = _read("/proc/self/cgroup") if self_cgroup is None else self_cgroup
    except OSError as e:
        return CgroupSupport("none", False, f"cannot read the process's cgroups: {e.strerror}")
    v1: dict[str, str] = {}
    for point, _root, fstype, opts in mounts:
        for c in V1_USED if fstype == "cgroup" else ():
            if c in opts:
                v1.setdefault(c, point)
    has_v1 = any(fstype == "cgroup" and opts & V1_ALL for _p, _r, fstype, opts in mounts)
    v2 = next((m for m in mounts if m[2] == "cgroup2"), None)
    if has_v1:
        mode = "hybrid" if v2 else "v1"
        if rootless:
            what = " (this host has the v1/v2 hybrid hierarchy, its controllers are on v1)" if v2 else ""
            return CgroupSupport(mode, False, "resource limits are not supported and ignored on cgroups V1 "
                                 f"rootless systems{what}")
        usable = {c: p for c, p in v1.items() if os.access(p, os.W_OK)}
        if not usable:
            where = ", ".join(sorted(set(v1.values()))) or "none of memory, cpu, pids, freezer is mounted"
            return CgroupSupport(mode, False, f"the cgroup v1 hierarchies are not writable ({where})")
        return CgroupSupport(mode, True, "", tuple(sorted(usable.items())), tuple(sorted(usable)))
    if v2 is None:
        return CgroupSupport("none", False, "no cgroup filesystem is mounted")
    point, root = v2[0], v2[1]
    own = next((ln[3:] for ln in own_text.splitlines() if ln.startswith("0::")), None)
    if own is None:
        return CgroupSupport("v2", False, "the process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)")
    own_dir = _in_mount(point, root, own)
    # candidates: our cgroup's ancestors while writable (the delegated subtree), highest last; our own
    # cgroup only when it is the hierarchy root, the one cgroup exempt from "no internal processes"
    chain = []
    d = own_dir if own_dir == point else os.path.dirname(own_dir)
    while _writable(d):
        chain.append(d)
        if d == point or len(d) <= len(point):
            break
        d = os.path.dirname(d)
    base = next((c for c in reversed(chain) if _may_hold_children(c)), None)
    if base is None:
        first = own_dir if own_dir == point else os.path.dirname(own_dir)
        if chain:
            why = f"the cgroup v2 {first} holds processes, so no child cgroup of it can get controllers"
        elif rootless:
            why = (f"resource limits are not supported and ignored on cgroups V2 rootless systems without "
                   f"delegation: {first} is not writable by this user (systemd delegates user@UID.service: "
                   f"run pinnace in a user session, e.g. under `systemd-run --user --scope`)")
        else:
            why = f"the cgroup v2 hierarchy is not writable ({first})"
        return CgroupSupport("v2", False, why)
    try:
        controllers = tuple(_read(os.path.join(base, "cgroup.controllers")).split())
    except OSError as e:
        return CgroupSupport("v2", False, f"cannot read {base}/cgroup.controllers: {e.strerror}")
    return CgroupSupport("v2", True, "", (("unified", base),), controllers)


# ---------------------------------------------------------------- resources

def _parse_bytes(flag: str, text: str) -> int:
    """Docker's RAMInBytes: 512m, 1g, 1.5G, 100k, 2gb, 1GiB, plain bytes; binary multiples."""
    s = text.strip().lower()
    if s.endswith("b"):
        s = s[:-1]
    mult = 1
    if s.endswith("i") and len(s) > 1 and s[-2] in "kmgtp":
        s = s[:-1]
    if s and s[-1] in "kmgtp":
        mult = 1024 ** ("kmgtp".index(s[-1]) + 1)
        s = s[:-1].rstrip(" ")
    whole, dot, frac = s.partition(".")
    if not whole.isdigit() or (dot and not frac.isdigit()):
        raise InvalidArgument(f"invalid {flag} value {text!r}: expected a size such as 512m, 1g, 100k "
                              "or a number of bytes")
    return int(whole) * mult + int(frac or "0") * mult // 10 ** len(frac or "0")


def parse_resources(*, memory: str | None, memory_swap: str | None, cpus: str | None,
                    cpu_shares: int | None, pids_limit: int | None) -> dict:
    """The run flags as OCI linux.resources. --memory-swap is memory+swap (-1: unlimited swap); unset, it
    defaults to twice --memory as in Docker. 0 leaves --memory, --cpus, --cpu-shares unset; --pids-limit
    0 or -1 is unlimited."""
    res: dict = {}
    limit = _parse_bytes("--memory", memory) if memory not in (None, "") else 0
    if limit and limit < MIN_MEMORY:
        raise InvalidArgument(f"invalid --memory value {memory!r}: the minimum memory limit is 6m")
    if memory_swap not in (None, ""):
        if not limit:
            raise InvalidArgument("--memory-swap needs --memory as well (it is the total of memory and swap)")
        if memory_swap.strip() == "-1":
            swap = -1
        else:
            swap = _parse_bytes("--memory-swap", memory_swap)
            if swap < limit:
                raise InvalidArgument(f"--memory-swap {memory_swap} is less than --memory {memory}: it is the "
                                      "total of memory and swap, so it must be at least --memory")
        res["memory"] = {"limit": limit, "swap": swap}
    elif limit:
        res["memory"] = {"limit": limit, "swap": 2 * limit}
    if cpus not in (None, ""):
        try:
            n = float(cpus)
        except ValueError:
            n = float("nan")
        if not 0 <= n < float("inf"):
            raise InvalidArgument(f"invalid --cpus value {cpus!r}: expected a number of CPUs such as 1.5")
        have = os.cpu_count() or 1
        if n > have:
            raise InvalidArgument(f"invalid --cpus value {cpus!r}: range of CPUs is from 0.01 to {have}.00, as "
                                  f"there are only {have} CPUs available")
        if n:
            quota = round(n * CPU_PERIOD)
            if quota < 1000:
                raise InvalidArgument(f"invalid --cpus value {cpus!r}: the minimum is 0.01")
            res["cpu"] = {"quota": quota, "period": CPU_PERIOD}
    if cpu_shares:
        if cpu_shares < 0:
            raise InvalidArgument(f"invalid --cpu-shares value {cpu_shares}: must not be negative")
        res.setdefault("cpu", {})["shares"] = min(max(int(cpu_shares), 2), 262144)
    if pids_limit is not None:
        res["pids"] = {"limit": int(pids_limit) if pids_limit > 0 else -1}
    return res


# ---------------------------------------------------------------- create / enter / remove

def _put(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)  # one write(2): cgroup files take a value per write
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write(d: str, name: str, value: str) -> None:
    path = os.path.join(d, name)
    try:
        _put(path, value)
    except OSError as e:
        raise PinnaceError(f"cannot write {value!r} to {path}: {e.strerror}") from None


def _enable(d: str, controllers: list[str], needed: set[str]) -> None:
    """Add controllers to d/cgroup.subtree_control; a failure matters only for a controller a limit needs."""
    try:
        have = set(_read(os.path.join(d, "cgroup.subtree_control")).split())
    except OSError as e:
        raise PinnaceError(f"cannot read {d}/cgroup.subtree_control: {e.strerror}") from None
    for c in controllers:
        if c not in have:
            try:
                _write(d, "cgroup.subtree_control", f"+{c}")
            except PinnaceError:
                if c in needed:
                    raise


def create(container_id: str, resources: dict, *, rootless: bool,
           support: CgroupSupport | None = None) -> ContainerCgroup | None:
    """The container's cgroup with `resources` (parse_resources) applied, no process in it yet; None when
    cgroups are not manageable here (the caller warns once with probe().reason). `support`: a probe()
    result the caller already has."""
    if not container_id or "/" in container_id or container_id.startswith("."):
        raise InvalidArgument(f"invalid container id for a cgroup: {container_id!r}")
    sup = support if support is not None else probe(rootless)
    if not sup.manageable:
        return None
    needed = {_NEEDS[k] for k in resources if k in _NEEDS}
    missing = sorted(needed - set(sup.controllers))
    if missing:
        flags = ", ".join(_FLAGS[k] for k in _NEEDS if _NEEDS[k] in missing)
        raise PinnaceError(f"{flags} needs the cgroup {'/'.join(missing)} controller, which is not available "
                           f"here ({sup.mode}: {', '.join(sup.controllers) or 'no controllers'})")
    if sup.mode == "v2":
        base = dict(sup.roots)["unified"]
        parent = os.path.join(base, PARENT)
        used = [c for c in V2_USED if c in sup.controllers]
        try:
            os.makedirs(parent, exist_ok=True)
            _enable(base, used, needed)
            _enable(parent, used, needed)
            os.makedirs(os.path.join(parent, container_id), exist_ok=True)
        except OSError as e:
            raise PinnaceError(f"cannot create the cgroup {parent}/{container_id}: {e.strerror}") from None
        cg = ContainerCgroup({"unified": os.path.join(parent, container_id)})
    else:
        cg = ContainerCgroup({c: os.path.join(point, PARENT, container_id) for c, point in sup.roots})
        for d in _unique(cg.paths):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                raise PinnaceError(f"cannot create the cgroup {d}: {e.strerror}") from None
    try:
        _apply(cg, resources)
    except BaseException:
        remove(cg)
        raise
    return cg


def _settings(res: dict, v2: bool) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write, in order: v1's memsw only takes a value ≥ the memory limit."""
    out: list[tuple[str, str, str]] = []
    mem, cpu, pids = res.get("memory", {}), res.get("cpu", {}), res.get("pids", {})
    limit = mem.get("limit", 0)
    if "limit" in mem:
        out.append(("memory", "memory.max", str(limit) if limit > 0 else "max") if v2 else
                   ("memory", "memory.limit_in_bytes", str(limit if limit > 0 else -1)))
    if "swap" in mem:  # OCI's swap and v1's memsw are memory+swap; v2 limits the swap part alone
        swap = mem["swap"]
        out.append(("memory", "memory.swap.max", "max" if swap < 0 else str(max(swap - limit, 0))) if v2 else
                   ("memory", "memory.memsw.limit_in_bytes", str(swap)))
    if "quota" in cpu:
        quota, period = cpu["quota"], cpu.get("period", CPU_PERIOD)
        out += [("cpu", "cpu.max", f"{quota if quota > 0 else 'max'} {period}")] if v2 else [
            ("cpu", "cpu.cfs_period_us", str(period)), ("cpu", "cpu.cfs_quota_us", str(quota if quota > 0 else -1))]
    if "shares" in cpu:  # v2: crun's mapping of shares [2, 262144] onto weight [1, 10000]
        out.append(("cpu", "cpu.weight", str(1 + (cpu["shares"] - 2) * 9999 // 262142)) if v2 else
                   ("cpu", "cpu.shares", str(cpu["shares"])))
    if "limit" in pids:
        out.append(("pids", "pids.max", str(pids["limit"]) if pids["limit"] > 0 else "max"))
    return out


def _apply(cg: ContainerCgroup, res: dict) -> None:
    v2 = "unified" in cg.paths
    for controller, name, value in _settings(res, v2):
        d = cg.paths["unified" if v2 else controller]
        if "swap" in name or "memsw" in name:
            if not os.path.exists(os.path.join(d, name)):  # no swap accounting (Docker warns too)
                cg.warnings.append(f"the swap limit is ignored: the kernel has no swap accounting ({name})")
                continue
        _write(d, name, value)


def _unique(paths: dict[str, str]) -> list[str]:
    return list(dict.fromkeys(paths.values()))


def enter(paths: dict, pid: int = 0) -> None:
    """Move process `pid` (0: the caller) into the container's cgroup, in every hierarchy. `paths`:
    ContainerCgroup.paths, or a to_json() record (what the spec annotation holds)."""
    if isinstance(paths.get("paths"), dict):
        paths = paths["paths"]
    for d in _unique(paths):
        try:
            _put(os.path.join(d, "cgroup.procs"), str(pid))
        except OSError as e:
            raise PinnaceError(f"cannot move process {pid or os.getpid()} into the cgroup {d}: "
                               f"{e.strerror}") from None


def remove(cg: ContainerCgroup) -> None:
    """Remove the container's cgroup (and any it created inside) once no process is left in it; an
    already removed one is fine. Kills nothing: a process still there after a while is an error."""
    for d in _unique(cg.paths):
        if os.path.basename(os.path.dirname(d)) != PARENT:  # a corrupt record must not rmdir anything else
            raise PinnaceError(f"refusing to remove {d}: not a pinnace cgroup")
        # a process killed while frozen (v1) only exits once thawed
        thaw_file = "cgroup.freeze" if "unified" in cg.paths else (
            "freezer.state" if cg.paths.get("freezer") == d else None)
        if thaw_file:
            try:
                _put(os.path.join(d, thaw_file), "0" if "unified" in cg.paths else "THAWED")
            except OSError:
                pass
        _rmdir_tree(d)


def _rmdir_tree(d: str) -> None:
    try:
        subdirs = [e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    except OSError as e:
        raise PinnaceError(f"cannot list the cgroup {d}: {e.strerror}") from None
    for sub in subdirs:  # cgroups the container made for itself (it has its own cgroup namespace)
        _rmdir_tree(sub)
    deadline = time.monotonic() + _WAIT
    delay = 0.005
    while True:
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as e:  # EBUSY: an exited process is still leaving the cgroup
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise PinnaceError(f"cannot remove the cgroup {d}: {e.strerror} (processes still in it?)") \
                    from None
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# ---------------------------------------------------------------- freeze / stats

def _freezer(cg: ContainerCgroup | None) -> tuple[str, bool]:
    if cg is not None and "unified" in cg.paths:
        return cg.paths["unified"], True
    if cg is not None and "freezer" in cg.paths:
        return cg.paths["freezer"], False
    why = "the container has no cgroup of its own" if cg is None else "the cgroup v1 freezer is not mounted"
    raise PinnaceError(f"pause needs a cgroup freezer: {why}")


def _frozen(d: str, v2: bool) -> str:
    try:
        if v2:
            events = dict(ln.split(None, 1) for ln in _read(os.path.join(d, "cgroup.events")).splitlines())
            return "FROZEN" if events.get("frozen", "").strip() == "1" else "THAWED"
        return _read(os.path.join(d, "freezer.state")).strip()
    except (OSError, ValueError) as e:
        raise PinnaceError(f"cannot read the freezer state of {d}: {getattr(e, 'strerror', e)}") from None


def _set_frozen(cg: ContainerCgroup | None, frozen: bool) -> None:
    d, v2 = _freezer(cg)
    want = "FROZEN" if frozen else "THAWED"
    value = ("1" if frozen else "0") if v2 else want
    name = "cgroup.freeze" if v2 else "freezer.state"
    deadline = time.monotonic() + _WAIT
    delay = 0.001
    while True:
        _write(d, name, value)  # v1: writing FROZEN again retries a freeze stuck in FREEZING
        if _frozen(d, v2) == want:
            return
        if time.monotonic() > deadline:
            if frozen:
                _write(d, name, "0" if v2 else "THAWED")
            raise PinnaceError(f"the cgroup {d} did not become {want.lower()} within {_WAIT:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def freeze(cg: ContainerCgroup | None) -> None:
    """Stop every process of the container (pause); returns once they all are frozen."""
    _set_frozen(cg, True)


def thaw(cg: ContainerCgroup | None) -> None:
    _set_frozen(cg, False)


def _number(d: str | None, name: str) -> int | None:
    """An integer cgroup file; None for 'max' or a missing file (controller not enabled)."""
    if d is None:
        return None
    path = os.path.join(d, name)
    try:
        text = _read(path).strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PinnaceError(f"cannot read {path}: {e.strerror}") from None
    return None if text == "max" else int(text)


def stats(cg: ContainerCgroup) -> dict:
    """{"cpu_ns", "memory_bytes", "memory_limit" (None: unlimited), "pids"} of the container's cgroup."""
    if "unified" in cg.paths:
        d = cg.paths["unified"]
        try:
            cpu = dict(ln.split() for ln in _read(os.path.join(d, "cpu.stat")).splitlines())
        except OSError as e:
            raise PinnaceError(f"cannot read {d}/cpu.stat: {e.strerror}") from None
        cpu_ns = int(cpu.get("usage_usec", 0)) * 1000
        mem, limit = _number(d, "memory.current"), _number(d, "memory.max")
        pids_dir = d
    else:
        cpu_ns = _number(cg.paths.get("cpuacct"), "cpuacct.usage") or 0
        mem = _number(cg.paths.get("memory"), "memory.usage_in_bytes")
        limit = _number(cg.paths.get("memory"), "memory.limit_in_bytes")
        limit = None if limit is not None and limit >= _UNLIMITED_V1 else limit
        pids_dir = cg.paths.get("pids", next(iter(cg.paths.values())))
    pids = _number(pids_dir, "pids.current")
    if pids is None:  # no pids controller: count the processes
        try:
            pids = len(_read(os.path.join(pids_dir, "cgroup.procs")).split())
        except OSError as e:
            raise PinnaceError(f"cannot read {pids_dir}/cgroup.procs: {e.strerror}") from None
    return {"cpu_ns": cpu_ns, "memory_bytes": mem or 0, "memory_limit": limit, "pids": pids}


# ---------------------------------------------------------------- persistence

def to_json(cg: ContainerCgroup) -> dict:
    return {"paths": dict(cg.paths)}


def from_json(d: dict) -> ContainerCgroup:
    paths = d.get("paths") if isinstance(d, dict) else None
    if not isinstance(paths, dict) or not paths or not all(
            isinstance(k, str) and isinstance(v, str) and os.path.isabs(v) for k, v in paths.items()):
        raise PinnaceError(f"invalid cgroup record: {d!r}")
    return ContainerCgroup(dict(paths))
