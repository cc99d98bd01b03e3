"""`create` (and the first half of `run`): from options and an image to a container directory with its
rootfs mounted, its config.json written and its record in the database.

Order matters for crash safety: the record is inserted first (it reserves the name atomically), then the
directory is filled; any failure removes both, and a CLI killed halfway leaves a record that `ps -a` shows
as created and `rm` removes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from pinnace.engine.container_contract import ContainerCreateOptions

TYPE_CHECKING = False  # the contract's image records are not needed to create a container
if TYPE_CHECKING:
    from pinnace.engine.contract import ProgressCallback
    from pinnace.engine.container_network import NetworkChoice
from pinnace.engine.store import Store
from pinnace.errors import ImageNotFound, InvalidArgument, PinnaceError
from pinnace.runtime import ctrstate

RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")
ANN = "io.pinnace."


def parse_restart(text: str) -> str:
    policy, sep, count = text.partition(":")
    if policy not in RESTART_POLICIES or (sep and (policy != "on-failure" or not count.isdigit())):
        raise InvalidArgument(f"invalid restart policy {text!r} (no, on-failure[:N], always, unless-stopped)")
    return text


def parse_size(text: str) -> int:
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().removesuffix("b") or "0"
    mult = units.get(t[-1], None)
    number = t[:-1] if mult else t
    try:
        value = int(float(number) * (mult or 1))
    except ValueError:
        raise InvalidArgument(f"invalid size {text!r} (e.g. 10m, 1g)") from None
    if value <= 0:
        raise InvalidArgument(f"invalid size {text!r}: must be positive")
    return value


def _read_env_files(paths: tuple[str, ...]) -> list[str]:
    env = []
    for path in paths:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise InvalidArgument(f"cannot read env file {path}: {exc.strerror}") from None
        env += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return env


def find_or_pull_image(store: Store, opts: ContainerCreateOptions, progress: "ProgressCallback") -> tuple[str, str]:
    """(image id, the name the user gave, canonical when it was a name)."""
    from pinnace.engine.resolve import resolve_image
    if opts.pull not in ("missing", "always", "never", "newer"):
        raise InvalidArgument(f"invalid --pull policy {opts.pull!r} (missing, always, never)")
    if opts.pull != "always":
        try:
            iid, name = resolve_image(store.images, opts.image)
            return iid, name or opts.image
        except ImageNotFound:
            if opts.pull == "never":
                raise ImageNotFound(f"{opts.image}: no such image (and --pull=never)") from None
    from pinnace.engine.contract import ImagePullOptions
    from pinnace.engine.pull import pull_image
    report = pull_image(store, ImagePullOptions(opts.image, platform=opts.platform), progress)
    return report.image_id, report.reference


def _etc_files(cdir: Path, opts: ContainerCreateOptions, hostname: str, network: "NetworkChoice") -> list[dict]:
    """/etc/hosts, /etc/hostname and /etc/resolv.conf of the container, bound from its directory."""
    hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if network.mode in ("none", "host") or network.mode.startswith("container:"):
        hosts.append(f"127.0.1.1\t{hostname}")  # else the supervisor adds the container's address
    for item in opts.add_hosts:
        name, sep, ip = item.partition(":")
        if not sep or not name or not ip:
            raise InvalidArgument(f"invalid --add-host {item!r} (name:ip)")
        hosts.append(f"{ip}\t{name}")
    from pinnace.engine.container_network import resolv_conf
    resolv = resolv_conf(network, opts.dns)
    files = {"hosts": "\n".join(hosts) + "\n", "hostname": hostname + "\n", "resolv.conf": resolv}
    mounts = []
    for name, content in files.items():
        (cdir / name).write_text(content)
        mounts.append({"destination": f"/etc/{name}", "type": "bind", "source": str(cdir / name),
                       "options": ["bind", "rprivate"]})
    return mounts


def create_container(store: Store, opts: ContainerCreateOptions, progress: "ProgressCallback | None" = None) -> str:
    from pinnace.engine.images import image_config
    from pinnace.storage.containers import ContainerStore, new_container_id
    restart = parse_restart(opts.restart)
    if opts.autoremove and restart != "no":
        raise InvalidArgument("--restart and --rm cannot be used together")
    if opts.userns not in (None, "", "host", "keep-id"):
        raise InvalidArgument(f"--userns {opts.userns}: only keep-id and host are supported")
    if opts.sdnotify not in (None, "conmon", "container", "ignore"):  # issue 7: systemd units
        raise InvalidArgument(f"invalid --sdnotify {opts.sdnotify!r} (conmon, container, ignore)")
    if opts.runtime and not os.access(opts.runtime, os.X_OK):
        raise InvalidArgument(f"--runtime {opts.runtime}: not an executable file")
    log_max = parse_size(opts.log_max_size) if opts.log_max_size else 0
    progress = progress or (lambda event: None)
    store.open_for_write()
    store.driver_name()  # chosen (or refused) before this container exists: it must not count itself
    iid, image_name = find_or_pull_image(store, opts, progress)
    image_cfg = image_config(store, iid)
    rec = store.images.get(iid)
    if rec is None:
        raise ImageNotFound(f"{opts.image}: no such image")
    from pinnace.engine.container_network import choose_network
    network = choose_network(store, opts, image_cfg)
    if opts.runtime and network.mode not in ("host", "none"):
        raise InvalidArgument("--runtime works with --network host or none (user-mode networking is set up "
                              "by pinnace's own runtime)")
    cs = ContainerStore(store.layout, store.db)
    cid = new_container_id()
    store.layout.containers_dir.mkdir(mode=0o700, exist_ok=True)
    cdir = store.layout.containers_dir / cid
    record = {"Image": image_name, "ImageID": iid, "Command": list(opts.command), "Options": _options_json(opts)}
    created = cs.add(cid, opts.name, iid, record, [])
    try:
        for sub in ("diff", "work", "merged"):
            # diff/ is the overlay's upper root: the container's "/" takes its mode (0755 like an image root)
            (cdir / sub).mkdir(parents=True, mode=0o700 if sub == "work" else 0o755)
        ctrstate.write_state(str(cdir), {"status": ctrstate.CREATED})
        if network.networks:
            (cdir / "networks.json").write_text(json.dumps(network.networks))
        spec, volumes = _prepare(store, cdir, cid, created.name, opts, image_cfg, rec, restart, log_max, progress,
                                 network)
        (cdir / "config.json").write_text(json.dumps(spec))
        del volumes
    except BaseException:
        from pinnace.engine.container_cleanup import remove_container
        try:
            remove_container(store, cid, volumes=True)
        except PinnaceError:
            pass
        raise
    return cid


def mount_rootfs(store: Store, cdir: Path, layers: list[str], *, volatile: bool = False) -> None:
    """Mount the container's root filesystem (image layers + its own upper dir) at cdir/merged."""
    from pinnace.runtime.rootfs import driver_for
    driver = driver_for(store.driver_name(), rootless=store.config.rootless)
    driver.mount([store.layout.layers_dir / n for n in layers], cdir / "diff", cdir / "work", cdir / "merged",
                 volatile=volatile)


def _prepare(store: Store, cdir: Path, cid: str, name: str, opts: ContainerCreateOptions, image_cfg: dict,
             rec, restart: str, log_max: int, progress: "ProgressCallback",
             network: "NetworkChoice") -> tuple[dict, list[str]]:  # noqa: ANN001
    from pinnace.runtime.spec import ProcessOptions, build_spec
    from pinnace.runtime.users import resolve_user
    layers = [store.layout.layer_path(l.diff_id).name for l in rec.layers]
    mount_rootfs(store, cdir, layers, volatile=opts.autoremove)
    rootfs = cdir / "merged"
    cfg = image_cfg.get("config") or {}
    user = resolve_user(rootfs, opts.user if opts.user is not None else (cfg.get("User") or None))
    hostname = opts.hostname or (os.uname().nodename if network.mode == "host" else cid[:12])
    security = {o.replace(":", "=", 1) for o in opts.security_opt}
    unknown = {o for o in security if o not in ("no-new-privileges", "no-new-privileges=true",
                                                  "no-new-privileges=false", "label=disable", "seccomp=unconfined")}
    if unknown:
        raise InvalidArgument(f"unsupported --security-opt {', '.join(sorted(unknown))}")
    process = ProcessOptions(
        command=opts.command, entrypoint=opts.entrypoint, env=tuple(_read_env_files(opts.env_files)) + opts.env,
        workdir=opts.workdir, tty=opts.tty, hostname=hostname, cap_add=opts.cap_add, cap_drop=opts.cap_drop,
        privileged=opts.privileged, no_new_privileges="no-new-privileges=false" not in security,
        ulimits=opts.ulimits, init=opts.init, host_env=dict(opts.host_env))
    image_volumes = sorted((cfg.get("Volumes") or {}).keys())
    plan_mounts_needed = opts.volumes or opts.mounts or opts.tmpfs or image_volumes
    if plan_mounts_needed:
        from pinnace.engine.container_mounts import plan_mounts
        plan = plan_mounts(store, volumes=opts.volumes, mounts=opts.mounts, tmpfs=opts.tmpfs,
                           image_volumes=image_volumes, rootfs=rootfs, user=user, cwd=os.getcwd())
        mounts, volumes = plan.mounts, plan.volumes
    else:
        mounts, volumes = [], []
    if volumes:  # recorded at once: a failure below removes the anonymous ones with the container
        with store.db.transaction() as c:
            c.executemany("INSERT OR IGNORE INTO container_volumes VALUES (?,?)", [(cid, v.name) for v in volumes])
    extra = _etc_files(cdir, opts, hostname, network) + mounts
    spec = build_spec(image_config=image_cfg, opts=process, user=user, rootfs=str(rootfs),
                      readonly_rootfs=opts.read_only, own_netns=network.own_netns,
                      rootless=store.config.rootless, extra_mounts=extra)
    # --- issue 7: the program must be one this host can execute (else a clear error, not ENOEXEC) ---
    from pinnace.engine.elf_check import check_entrypoint
    check_entrypoint(rootfs, spec["process"], image_cfg)
    # --- end issue 7 ---
    ann = spec["annotations"]
    ann.update(network.annotations)
    ann.update({ANN + "id": cid, ANN + "name": name, ANN + "root": str(store.layout.root),
                ANN + "runroot": str(store.layout.runroot), ANN + "restart": restart,
                ANN + "autoremove": "true" if opts.autoremove else "false",
                ANN + "stdin": "true" if opts.stdin else "false"})
    if log_max:
        ann[ANN + "log-max-size"] = str(log_max)
    if opts.sdnotify:  # read by the supervisor (runtime/sdnotify.py)
        ann[ANN + "sdnotify"] = opts.sdnotify
    if opts.runtime:
        if opts.tty:
            raise InvalidArgument("--runtime with -t is not supported yet (the runtime's console socket)")
        ann[ANN + "runtime"] = os.path.abspath(opts.runtime)
    for label in opts.labels:
        key, _, value = label.partition("=")
        if not key:
            raise InvalidArgument(f"invalid --label {label!r}")
    wants_health = cfg.get("Healthcheck") or opts.health_cmd or opts.no_healthcheck or opts.health_interval \
        or opts.health_timeout or opts.health_retries is not None or opts.health_start_period
    hc = None
    if wants_health:
        from pinnace.runtime import health
        hc = health.health_config(cfg.get("Healthcheck"), cmd=opts.health_cmd, interval=opts.health_interval,
                                  timeout=opts.health_timeout, retries=opts.health_retries,
                                  start_period=opts.health_start_period, no_healthcheck=opts.no_healthcheck)
    if hc is not None:
        ann[ANN + "health"] = json.dumps(health.to_json(hc))
    _apply_resources(store, spec, cid, opts, progress)
    if opts.userns == "keep-id" and store.config.rootless:
        uid, gid = _host_id("uid"), _host_id("gid")  # we are root of the user namespace by now
        ann[ANN + "keep-id"] = f"{uid}:{gid}"
        if opts.user is None:
            spec["process"]["user"] = {"uid": uid, "gid": gid, "additionalGids": []}
            env = [e for e in spec["process"]["env"] if not e.startswith("HOME=")]
            spec["process"]["env"] = env + [f"HOME={user.home or '/'}"]
    return spec, [v.name for v in volumes]


def _host_id(kind: str) -> int:
    """The host id that is 0 in the per-user namespace (the user's own uid or gid)."""
    with open(f"/proc/self/{kind}_map") as f:
        for line in f:
            inside, outside, _ = line.split()
            if inside == "0":
                return int(outside)
    return os.getuid() if kind == "uid" else os.getgid()


def _apply_resources(store: Store, spec: dict, cid: str, opts: ContainerCreateOptions,
                     progress: "ProgressCallback") -> None:
    """Limits go into config.json (`linux.resources`); `start` creates the cgroup when this user may."""
    if not (opts.memory or opts.memory_swap or opts.cpus or opts.cpu_shares or opts.pids_limit):
        return
    from pinnace.engine.contract import ProgressEvent, ProgressKind
    from pinnace.runtime import cgroups
    spec["linux"]["resources"] = cgroups.parse_resources(memory=opts.memory, memory_swap=opts.memory_swap,
                                                         cpus=opts.cpus, cpu_shares=opts.cpu_shares,
                                                         pids_limit=opts.pids_limit)
    support = cgroups.probe(store.config.rootless)
    if not support.manageable:
        progress(ProgressEvent(ProgressKind.WARNING, message=support.reason[:1].upper() + support.reason[1:]))


def _options_json(opts: ContainerCreateOptions) -> dict:
    from dataclasses import asdict
    data = asdict(opts)
    data.pop("host_env", None)
    return data
