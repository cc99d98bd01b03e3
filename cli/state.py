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


def confirmed(force: bool, command: str, warning: str) -> bool:
    """For destructive commands: --force, or a yes on a terminal. Without a terminal and without --force
    they refuse (exit 125) rather than guess, so a script never deletes by accident."""
    if force:
        return True
    import sys
    if not sys.stdin.isatty():
        from pinnace.errors import InvalidArgument
        raise InvalidArgument(f"{command} deletes data: confirm on a terminal or pass --force")
    return typer.confirm(f"WARNING! {warning}\nAre you sure you want to continue?")
