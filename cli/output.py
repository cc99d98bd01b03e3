"""Rendering helpers: aligned tables (like Go's tabwriter), sizes and times as Podman prints them, JSON."""
from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from collections.abc import Sequence


def tabulate(rows: Sequence[Sequence[str]], pad: int = 2) -> str:
    if not rows:
        return ""
    widths = [0] * max(len(r) for r in rows)
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(cell))
    out = []
    for r in rows:
        cells = [cell.ljust(widths[i] + pad) if i < len(r) - 1 else cell for i, cell in enumerate(r)]
        out.append("".join(cells).rstrip())
    return "\n".join(out) + "\n"


def human_size(n: int) -> str:
    """Decimal units with three significant digits, as Podman/Docker print them (e.g. '2.1 MB')."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    size = float(n)
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    if i == 0:
        return f"{int(size)} B"
    text = f"{size:.3g}"
    return f"{text} {units[i]}"


def parse_time(value: str | None) -> float | None:
    if not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python 3.11's fromisoformat copes with RFC 3339 except > 6 fractional digits
    if "." in text:
        head, _, tail = text.partition(".")
        frac = "".join(c for c in tail if c.isdigit())
        zone = tail[len(frac):]
        text = f"{head}.{frac[:6]}{zone}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def human_duration(seconds: float) -> str:
    """Go's units.HumanDuration, which Podman uses for 'CREATED' columns."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def since(value: str | None) -> str:
    ts = parse_time(value)
    if ts is None:
        return "N/A"
    return human_duration(time.time() - ts) + " ago"


def print_json(obj: object) -> None:
    import json
    sys.stdout.write(json.dumps(obj, indent=4, default=str) + "\n")


def short_id(image_id: str, no_trunc: bool = False) -> str:
    hexpart = image_id.removeprefix("sha256:")
    return image_id if no_trunc else hexpart[:12]


def emit_formatted(fmt: str | None, data: object) -> bool:
    """Handle `--format json` and `--format TEMPLATE` for a record or a list of records.
    Returns False when the caller should print its own human form (no format, or `table`)."""
    if not fmt or fmt == "table":
        return False
    if fmt == "json":
        print_json(data)
        return True
    from pinnace.cli.template import render_rows
    sys.stdout.write(render_rows(fmt, data if isinstance(data, list) else [data]))
    return True
