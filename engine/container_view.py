"""What `ps` and `inspect` show of containers: rows and Docker-shaped inspect documents."""
from __future__ import annotations

import json
import os
import time

from pinnace.engine.container_contract import ContainerSummary
from pinnace.engine.store import Store
from pinnace.errors import InvalidArgument
from pinnace.runtime import ctrstate

PS_FILTERS = ("status", "name", "label", "ancestor", "id", "exited", "health")
STATUSES = ("created", "running", "paused", "exited", "stopping", "restarting", "removing", "dead")


def _command(spec: dict) -> str:
    return " ".join(spec.get("process", {}).get("args", []))


def _summary(store: Store, rec, cdir: str) -> ContainerSummary:  # noqa: ANN001 - ContainerRecord
    from pinnace.engine.containers import effective_state
    state = effective_state(cdir)
    opts = rec.record.get("Options", {})
    health = ""
    if state.get("status") == ctrstate.RUNNING and os.path.exists(os.path.join(cdir, "health.json")):
        try:
            with open(os.path.join(cdir, "health.json")) as f:
                health = json.load(f).get("Status", "")
        except (OSError, ValueError):
            pass
    try:
        with open(os.path.join(cdir, "config.json")) as f:
            command = _command(json.load(f))
    except (OSError, ValueError):
        command = " ".join(rec.record.get("Command", []))
    labels = dict(l.partition("=")[::2] for l in opts.get("labels", []))
    return ContainerSummary(
        id=rec.id, name=rec.name, image=rec.record.get("Image", ""), image_id=rec.image_id, command=command,
        created=rec.created, status=state.get("status", "created"), exit_code=state.get("exit_code"),
        started_at=state.get("started_at", ""), finished_at=state.get("finished_at", ""),
        ports=tuple(opts.get("publish", [])), labels=labels, pid=int(state.get("pid") or 0),
        restart_count=int(state.get("restart_count") or 0), health=health)


def _matches(s: ContainerSummary, key: str, value: str) -> bool:
    import fnmatch
    if key == "status":
        if value not in STATUSES:
            raise InvalidArgument(f"invalid status filter {value!r} ({', '.join(STATUSES)})")
        return s.status == value
    if key == "name":
        return value in s.name or fnmatch.fnmatchcase(s.name, value)
    if key == "id":
        return s.id.startswith(value)
    if key == "label":
        k, sep, v = value.partition("=")
        return k in s.labels and (not sep or s.labels[k] == v)
    if key == "exited":
        return s.status == "exited" and str(s.exit_code) == value
    if key == "health":
        return s.health == value
    # ancestor: the image by name (with or without the tag / registry) or id
    from pinnace.engine.image_list import reference_matches
    return (s.image_id.removeprefix("sha256:").startswith(value.removeprefix("sha256:"))
            or reference_matches(value, s.image) or reference_matches(value + ":*", s.image))


def list_containers(store: Store, *, all: bool = False, filters: tuple[str, ...] = ()) -> list[ContainerSummary]:
    from pinnace.engine.image_list import parse_filters
    parsed = parse_filters(filters, PS_FILTERS, "container")
    if not store.layout.db_path.exists():
        return []
    from pinnace.storage.containers import ContainerStore
    rows = []
    for rec in ContainerStore(store.layout, store.db).list():
        s = _summary(store, rec, str(store.layout.containers_dir / rec.id))
        by_key: dict[str, list[str]] = {}
        for k, v in parsed:
            by_key.setdefault(k, []).append(v)
        # like Docker: values of one key are alternatives, different keys must all match
        if not all and s.status not in ("running", "paused", "stopping", "restarting") and "status" not in by_key:
            continue
        if all_match(s, by_key):
            rows.append(s)
    return rows


def all_match(s: ContainerSummary, by_key: dict[str, list[str]]) -> bool:
    """Docker's rule: values of one key are alternatives, except labels, which must all match."""
    return all((all if k == "label" else any)(_matches(s, k, v) for v in values) for k, values in by_key.items())


def inspect(store: Store, text: str) -> dict:
    """`inspect` of a container, in Docker's shape (the fields docker-py and scripts read)."""
    from pinnace.engine.containers import get
    c = get(store, text)
    state = c.state()
    spec = c.spec()
    rec = c.rec.record
    opts = rec.get("Options", {})
    process = spec.get("process", {})
    ann = spec.get("annotations", {})
    health = None
    if os.path.exists(c.dir / "health.json"):
        from pinnace.runtime.health import read_health
        health = read_health(str(c.dir / "health.json"))
    status = state.get("status", "created")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(c.rec.created))
    mounts = [{"Type": m.get("type", "bind") if m.get("type") != "tmpfs" else "tmpfs", "Source": m.get("source", ""),
               "Destination": m["destination"], "RW": "ro" not in m.get("options", []),
               "Options": m.get("options", [])}
              for m in spec.get("mounts", []) if m["destination"] not in _RUNTIME_MOUNTS]
    from pinnace.storage.containers import ContainerStore
    volumes = set(ContainerStore(store.layout, store.db).volumes(c.id))
    for m in mounts:
        name = os.path.basename(os.path.dirname(m["Source"])) if m["Source"].endswith("/_data") else ""
        if name in volumes:
            m.update({"Type": "volume", "Name": name})
    doc = {
        "Id": c.id,
        "Created": created,
        "Path": process.get("args", [""])[0] if process.get("args") else "",
        "Args": process.get("args", [])[1:],
        "State": {
            "Status": status,
            "Running": status in ("running", "paused"),
            "Paused": status == "paused",
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": int(state.get("pid") or 0) if status in ("running", "paused") else 0,
            "ExitCode": int(state.get("exit_code") or 0) if status == "exited" else 0,
            "Error": state.get("error", ""),
            "StartedAt": state.get("started_at", "0001-01-01T00:00:00Z"),
            "FinishedAt": state.get("finished_at", "0001-01-01T00:00:00Z"),
            **({"Health": health} if health else {}),
        },
        "Image": c.rec.image_id,
        "ImageName": rec.get("Image", ""),
        "Name": c.name,
        "RestartCount": int(state.get("restart_count") or 0),
        "Driver": store.config.storage_driver,
        "Platform": "linux",
        "OCIConfigPath": str(c.dir / "config.json"),
        "OCIRuntime": opts.get("runtime") or "pinnace",
        "LogPath": str(c.dir / "ctr.log"),
        "HostnamePath": str(c.dir / "hostname"),
        "HostsPath": str(c.dir / "hosts"),
        "ResolvConfPath": str(c.dir / "resolv.conf"),
        "Mounts": mounts,
        "GraphDriver": {"Name": store.config.storage_driver,
                        "Data": {"UpperDir": str(c.dir / "diff"), "WorkDir": str(c.dir / "work"),
                                 "MergedDir": str(c.dir / "merged")}},
        "Config": {
            "Hostname": spec.get("hostname", ""),
            "User": opts.get("user") or "",
            "Env": process.get("env", []),
            "Cmd": list(rec.get("Command") or []) or None,
            "Image": rec.get("Image", ""),
            "WorkingDir": process.get("cwd", "/"),
            "Entrypoint": opts.get("entrypoint"),
            "Labels": dict(l.partition("=")[::2] for l in opts.get("labels", [])),
            "Tty": bool(process.get("terminal")),
            "OpenStdin": bool(opts.get("stdin")),
            "StopSignal": opts.get("stop_signal") or "SIGTERM",
            "StopTimeout": opts.get("stop_timeout") if opts.get("stop_timeout") is not None else 10,
            "Annotations": ann,
        },
        "HostConfig": {
            "AutoRemove": bool(opts.get("autoremove")),
            "RestartPolicy": {"Name": (opts.get("restart") or "no").partition(":")[0],
                              "MaximumRetryCount": int((opts.get("restart") or "no").partition(":")[2] or 0)},
            "NetworkMode": opts.get("network", "none"),
            "Privileged": bool(opts.get("privileged")),
            "ReadonlyRootfs": bool(opts.get("read_only")),
            "CapAdd": opts.get("cap_add", []),
            "CapDrop": opts.get("cap_drop", []),
            "Init": bool(opts.get("init")),
            "UsernsMode": opts.get("userns") or "",
            "Binds": opts.get("volumes", []),
            "Tmpfs": opts.get("tmpfs", []),
            "Memory": spec.get("linux", {}).get("resources", {}).get("memory", {}).get("limit", 0),
            "PidsLimit": spec.get("linux", {}).get("resources", {}).get("pids", {}).get("limit", 0),
            "LogConfig": {"Type": "k8s-file", "Config": {"max-size": opts.get("log_max_size") or ""}},
        },
        "NetworkSettings": {"Ports": {}, "Networks": {}},
    }
    return doc


_RUNTIME_MOUNTS = ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/hosts", "/etc/hostname",
                   "/etc/resolv.conf")
