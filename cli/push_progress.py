"""Push progress (typer-free: the fast `push` and `image push` share it)."""
from __future__ import annotations

import sys


class PushProgress:
    """Pull's progress display (rich bars on a terminal, Podman's lines otherwise) plus the one thing a
    push has that a pull has not: a blob mounted from another repository."""

    def __init__(self, inner):  # noqa: ANN001 - PlainProgress | RichProgress
        self._inner = inner

    def __call__(self, ev) -> None:  # noqa: ANN001 - ProgressEvent
        from pinnace.engine.contract import ProgressEvent, ProgressKind
        if ev.kind == ProgressKind.LAYER_EXISTS and ev.message.startswith("mounted"):
            line = f"Copying blob {ev.id.removeprefix('sha256:')[:12]} {ev.message}"
            console = getattr(getattr(self._inner, "progress", None), "console", None)
            if console is not None:
                console.print(line)
                self._inner(ProgressEvent(ProgressKind.LAYER_DONE, id=ev.id, current=ev.total, total=ev.total))
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()
            return
        self._inner(ev)

    def close(self) -> None:
        self._inner.close()
