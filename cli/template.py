"""The part of Go's text/template that `--format` users write in practice.

Supported: `{{.Field}}`, `{{.A.B}}`, `{{json .}}`, `{{json .Field}}`, `{{index .Labels "k"}}`,
`{{upper .X}}`/`{{lower .X}}`, `{{join .List ","}}`, a leading `table` (header row, aligned columns),
and the escapes `\\t` and `\\n`. Anything else is an error, not silently wrong output.
"""
from __future__ import annotations

import json
import re

from pinnace.errors import InvalidArgument

_ACTION = re.compile(r"{{\s*(.*?)\s*}}")
_ARG = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')


def _lookup(obj: object, path: str) -> object:
    if path == ".":
        return obj
    cur = obj
    for depth, part in enumerate(path.lstrip(".").split(".")):
        if isinstance(cur, dict):
            if part in cur:
                cur = cur[part]
                continue
            lowered = {k.lower(): v for k, v in cur.items()}
            if part.lower() in lowered:
                cur = lowered[part.lower()]
                continue
            if depth > 0:
                return None  # a missing key of a map (Labels, Config …): Go prints <no value>
        elif cur is None and depth > 0:
            return None
        raise InvalidArgument(f"template: can't evaluate field {part}")
    return cur


def _text(value: object) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_text(v)}" for k, v in sorted(value.items())) + "]"
    return str(value)


def _evaluate(expr: str, data: dict) -> str:
    args = _ARG.findall(expr)
    if not args:
        raise InvalidArgument("template: empty action {{}}")
    fn, rest = args[0], args[1:]
    if fn.startswith("."):
        if rest:
            raise InvalidArgument(f"template: unexpected {' '.join(rest)!r} after {fn}")
        return _text(_lookup(data, fn))
    values = [json.loads(a) if a.startswith('"') else _lookup(data, a) for a in rest]
    if fn == "json" and len(values) == 1:
        return json.dumps(values[0], separators=(",", ":"))  # compact, like Go's encoding/json
    if fn == "index" and len(values) == 2:
        container, key = values
        if isinstance(container, dict):
            return _text(container.get(key))
        if isinstance(container, (list, tuple)) and isinstance(key, int):
            return _text(container[key])
    if fn in ("upper", "lower") and len(values) == 1:
        return getattr(_text(values[0]), fn)()
    if fn == "join" and len(values) == 2 and isinstance(values[0], (list, tuple)):
        return str(values[1]).join(_text(v) for v in values[0])
    raise InvalidArgument(f"template: unsupported action {{{{{expr}}}}}")


def _unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n")


def render_rows(template: str, rows: list[dict]) -> str:
    """Render one line per row; with a `table` prefix, a header and aligned columns."""
    table = template.startswith("table")
    if table:
        template = template[len("table"):].lstrip()
    template = _unescape(template)
    if template.count("{{") != len(_ACTION.findall(template)):
        raise InvalidArgument("template: unclosed action (a '{{' without its '}}')")
    lines = [_ACTION.sub(lambda m: _evaluate(m.group(1), row), template) for row in rows]
    if not table:
        return "".join(line + "\n" for line in lines)
    header = _ACTION.sub(lambda m: _header(m.group(1)), template)
    from pinnace.cli.output import tabulate
    return tabulate([c.split("\t") for c in [header, *lines]])


def _header(expr: str) -> str:
    field = expr.split()[-1].lstrip(".")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", field).upper() if field else "VALUE"
