"""Global flags, carried from the root callback to every command."""
from __future__ import annotations

from dataclasses import dataclass, field

import typer


@dataclass
class AppState:
    root: str | None = None
    runroot: str | None = None
    storage_driver: str | None = None
    log_level: str = "warn"
    _engine: object = field(default=None, repr=False)

    def engine(self):  # noqa: ANN201 - LocalEngine, imported lazily
        if self._engine is None:
            from pinnace.engine.config import resolve_config
            from pinnace.engine.local import LocalEngine
            self._engine = LocalEngine(resolve_config(self.root, self.runroot, self.storage_driver))
        return self._engine


def engine(ctx: typer.Context):  # noqa: ANN201
    return ctx.find_root().obj.engine()
