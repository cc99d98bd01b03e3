"""Rendering containers for `ps`, and the time arguments of `logs`."""
from __future__ import annotations

import sys
import time

from pinnace.errors import InvalidArgument


def status_text(row, now: float) -> str:  # noqa: ANN001 - engine.contract.ContainerSummary
    """Docker's STATUS column."""
    from pinnace.cli.output import human_duration, parse_time
    if row.status in ("running", "paused"):
        started = parse_time(row.started_at) or row.created
        text = "Up " + human_duration(now - started)
        if row.status == "paused":
            text += " (Paused)"
        elif row.health:
            text += f" ({row.health})"
        return text
    if row.status == "exited":
        finished = parse_time(row.finished_at)
        ago = f" {human_duration(now - finished)} ago" if finished else ""
        return f"Exited ({row.exit_code}){ago}"
    return row.status.capitalize()


def _json_row(row, now: float) -> dict:  # noqa: ANN001
    return {"Id": row.id, "ID": row.id[:12], "Names": [row.name], "Image": row.image, "ImageID": row.image_id,
            "Command": row.command, "Created": int(row.created), "CreatedAt": time.strftime(
                "%Y-%m-%d %H:%M:%S %z", time.localtime(row.created)), "State": row.status,
            "Status": status_text(row, now), "ExitCode": row.exit_code or 0, "Pid": row.pid, "Labels": row.labels,
            "Ports": list(row.ports), "RestartCount": row.restart_count, "StartedAt": row.started_at,
            **({"Size": row.size} if row.size is not None else {})}


def render_ps(rows: list, *, quiet: bool, no_trunc: bool, fmt: str | None, size: bool, noheading: bool) -> None:
    from pinnace.cli.output import human_duration, human_size, print_json, tabulate
    now = time.time()
    if quiet:
        sys.stdout.write("".join(f"{r.id if no_trunc else r.id[:12]}\n" for r in rows))
        return
    if fmt == "json":
        print_json([_json_row(r, now) for r in rows])
        return
    if fmt and fmt != "table":
        from pinnace.cli.template import render_rows
        data = []
        for r in rows:
            d = _json_row(r, now)
            d.update({"ID": r.id if no_trunc else r.id[:12], "Names": r.name, "Ports": ", ".join(r.ports),
                      "RunningFor": human_duration(now - r.created) + " ago",
                      "Labels": ",".join(f"{k}={v}" for k, v in r.labels.items())})
            data.append(d)
        sys.stdout.write(render_rows(fmt.removeprefix("table "), data))
        return
    header = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"] + (["SIZE"] if size else [])
    table = [] if noheading else [header]
    for r in rows:
        command = r.command if no_trunc or len(r.command) <= 20 else r.command[:19] + "…"
        line = [r.id if no_trunc else r.id[:12], r.image, command, human_duration(now - r.created) + " ago",
                status_text(r, now), ", ".join(r.ports), r.name]
        if size:
            line.append(human_size(r.size or 0))
        table.append(line)
    sys.stdout.write(tabulate(table, pad=3))


def parse_log_time(value: str | None) -> int | None:
    """`--since/--until`: RFC 3339, a unix time, or a duration before now (10m, 1h30m, 45s)."""
    if not value:
        return None
    import re
    from pinnace.cli.output import parse_time
    if re.fullmatch(r"\d+(\.\d+)?", value):
        # exact integer arithmetic: a float loses the nanoseconds a log stamp carries
        whole, _, frac = value.partition(".")
        return int(whole) * 1_000_000_000 + int(frac[:9].ljust(9, "0"))
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if parts and "".join(n + u for n, u in parts) == value:
        seconds = sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
        return int((time.time() - seconds) * 1e9)
    from pinnace.runtime.logfile import parse_rfc3339
    try:
        return parse_rfc3339(value)  # exact to the nanosecond, so a stamp copied from `logs -t` includes its line
    except ValueError:
        pass
    ts = parse_time(value)
    if ts is None:
        raise InvalidArgument(f"invalid time {value!r} (RFC 3339, unix time, or a duration like 10m)")
    return int(ts * 1e9)
