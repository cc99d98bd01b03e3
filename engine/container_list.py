"""`ps` rows, read with the standard library only (sqlite3, json, os): `ps` must answer faster than Podman's,
so, like `images` (engine/image_list.py), it loads neither dataclasses nor the store classes. LocalEngine
and the CLI call the same function."""
from __future__ import annotations

import json
import os

from pinnace.errors import InvalidArgument
from pinnace.runtime import ctrstate

PS_FILTERS = ("status", "name", "label", "ancestor", "id", "exited", "health")
STATUSES = ("created", "running", "paused", "exited", "stopping", "restarting", "removing", "dead")


class ContainerSummary:
    """One row of `ps` (part of the engine contract; a plain slotted class to stay light)."""

    __slots__ = ("id", "name", "image", "image_id", "command", "created", "status", "exit_code", "started_at",
                 "finished_at", "ports", "labels", "pid", "restart_count", "health", "size")

    def __init__(self, *, id: str, name: str, image: str, image_id: str, command: str, created: float,
                 status: str, exit_code: int | None, started_at: str, finished_at: str, ports: tuple[str, ...],
                 labels: dict, pid: int, restart_count: int, health: str = "", size: int | None = None):
        self.id, self.name, self.image, self.image_id, self.command = id, name, image, image_id, command
        self.created, self.status, self.exit_code = created, status, exit_code
        self.started_at, self.finished_at, self.ports, self.labels = started_at, finished_at, ports, labels
        self.pid, self.restart_count, self.health, self.size = pid, restart_count, health, size

    def __repr__(self) -> str:
        return f"ContainerSummary(id={self.id[:12]!r}, name={self.name!r}, status={self.status!r})"


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def summary(cid: str, name: str, image_id: str, created: float, record: dict, cdir: str) -> ContainerSummary:
    state = ctrstate.effective_state(cdir)
    opts = record.get("Options", {})
    health = ""
    if state.get("status") == ctrstate.RUNNING and os.path.exists(os.path.join(cdir, "health.json")):
        health = _read_json(os.path.join(cdir, "health.json")).get("Status", "")
    args = _read_json(os.path.join(cdir, "config.json")).get("process", {}).get("args")
    command = " ".join(args if args is not None else record.get("Command", []))
    labels = dict(l.partition("=")[::2] for l in opts.get("labels", []))
    return ContainerSummary(
        id=cid, name=name, image=record.get("Image", ""), image_id=image_id, command=command,
        created=created, status=state.get("status", "created"), exit_code=state.get("exit_code"),
        started_at=state.get("started_at", ""), finished_at=state.get("finished_at", ""),
        ports=tuple(opts.get("publish", [])), labels=labels, pid=int(state.get("pid") or 0),
        restart_count=int(state.get("restart_count") or 0), health=health)


def _matches(s: ContainerSummary, key: str, value: str) -> bool:
    if key == "status":
        if value not in STATUSES:
            raise InvalidArgument(f"invalid status filter {value!r} ({', '.join(STATUSES)})")
        return s.status == value
    if key == "name":
        import fnmatch
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


def all_match(s: ContainerSummary, by_key: dict[str, list[str]]) -> bool:
    """Docker's rule: values of one key are alternatives, except labels, which must all match."""
    return all((all if k == "label" else any)(_matches(s, k, v) for v in values) for k, values in by_key.items())


def list_containers(root: str, *, all: bool = False, filters: tuple[str, ...] | list[str] = ()) -> list[ContainerSummary]:
    """Rows for `ps`, newest first; without `all` only running, paused, stopping and restarting ones."""
    from pinnace.engine.image_list import parse_filters, read_store
    by_key: dict[str, list[str]] = {}
    for k, v in parse_filters(filters, PS_FILTERS, "container"):
        by_key.setdefault(k, []).append(v)
    rows = read_store(root, lambda conn: conn.execute(
        "SELECT c.id, c.name, c.image_id, r.created, r.record FROM containers c "
        "JOIN container_records r ON r.id = c.id ORDER BY r.created DESC").fetchall())
    out = []
    for cid, name, image_id, created, raw in rows:
        s = summary(cid, name, image_id, created, json.loads(raw), os.path.join(root, "containers", cid))
        if not all and s.status not in ("running", "paused", "stopping", "restarting") and "status" not in by_key:
            continue
        if all_match(s, by_key):
            out.append(s)
    return out
