"""What `ps` and `inspect` show of containers: rows and Docker-shaped inspect documents."""
from __future__ import annotations

import os
import time

from pinnace.engine.container_list import ContainerSummary
from pinnace.engine.store import Store

def list_containers(store: Store, *, all: bool = False, filters: tuple[str, ...] = ()) -> list[ContainerSummary]:
    from pinnace.engine.container_list import list_containers as light_list
    return light_list(str(store.layout.root), all=all, filters=filters)


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
        "Driver": store.driver_shown(),
        "Platform": "linux",
        "OCIConfigPath": str(c.dir / "config.json"),
        "OCIRuntime": opts.get("runtime") or "pinnace",
        "LogPath": str(c.dir / "ctr.log"),
        "HostnamePath": str(c.dir / "hostname"),
        "HostsPath": str(c.dir / "hosts"),
        "ResolvConfPath": str(c.dir / "resolv.conf"),
        "Mounts": mounts,
        "GraphDriver": {"Name": store.driver_shown(),
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
            "NetworkMode": ann.get("io.pinnace.network") or opts.get("network") or "none",
            "PortBindings": _port_bindings(ann),
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
        "NetworkSettings": _network_settings(ann, state if status in ("running", "paused") else {}, opts),
    }
    return doc


def _port_bindings(ann: dict) -> dict:
    import json
    from pinnace.net.ports import PortMapping, port_bindings
    return port_bindings([PortMapping.from_json(p) for p in json.loads(ann.get("io.pinnace.ports") or "[]")])


def _network_settings(ann: dict, state: dict, opts: dict) -> dict:
    """Docker's NetworkSettings: addresses and the host ports bound while the container runs."""
    from pinnace.net.ports import PortMapping, inspect_ports
    net = state.get("network") or {}
    published = [PortMapping.from_json(p) for p in net.get("ports", [])]
    exposed = list(opts.get("expose") or [])
    prefix = 24 if net.get("mode") == "usermode" and net.get("address") else 0
    networks = {}
    for name, alloc in (net.get("networks") or {}).items():
        networks[name] = {"IPAddress": alloc.get("ip", ""), "IPPrefixLen": alloc.get("prefix", 0),
                          "Gateway": alloc.get("gateway", ""), "Aliases": alloc.get("aliases", []),
                          "NetworkID": alloc.get("id", ""), "MacAddress": ""}
        prefix = prefix or alloc.get("prefix", 0)
    return {"Ports": inspect_ports(published, exposed), "IPAddress": net.get("address", ""),
            "IPPrefixLen": prefix, "Gateway": net.get("gateway", ""), "Networks": networks}


_RUNTIME_MOUNTS = ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/etc/hosts", "/etc/hostname",
                   "/etc/resolv.conf")
