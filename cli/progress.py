"""Pull progress: rich bars on a terminal, Podman-style plain lines otherwise (all on stderr)."""
from __future__ import annotations

import sys
import threading

from pinnace.engine.contract import ProgressEvent, ProgressKind


class PlainProgress:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, ev: ProgressEvent) -> None:
        line = None
        short = ev.id.removeprefix("sha256:")[:12]
        if ev.kind == ProgressKind.RESOLVED:
            line = "Getting image source signatures"
        elif ev.kind == ProgressKind.LAYER_EXISTS:
            line = f"Copying blob {short} skipped: already exists"
        elif ev.kind == ProgressKind.LAYER_DONE:
            line = f"Copying blob {short} done"
        elif ev.kind == ProgressKind.LAYER_RETRY:
            line = f"Copying blob {short} retrying: {ev.message}"
        elif ev.kind == ProgressKind.WRITING:
            line = f"Copying config {short} done\nWriting manifest to image destination"
        elif ev.kind == ProgressKind.WARNING:
            line = f"WARNING: {ev.message}"
        if line:
            with self._lock:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()

    def close(self) -> None:
        pass


class RichProgress:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=Console(file=sys.stderr), transient=False)
        self.tasks: dict[str, int] = {}
        self.progress.start()

    def _task(self, ev: ProgressEvent) -> int:
        if ev.id not in self.tasks:
            self.tasks[ev.id] = self.progress.add_task(f"Copying blob {ev.id[7:19]}", total=ev.total or None)
        return self.tasks[ev.id]

    def __call__(self, ev: ProgressEvent) -> None:
        if ev.kind == ProgressKind.LAYER_START:
            self._task(ev)
        elif ev.kind == ProgressKind.LAYER_PROGRESS:
            self.progress.update(self._task(ev), completed=ev.current)
        elif ev.kind in (ProgressKind.LAYER_DONE, ProgressKind.LAYER_EXISTS):
            t = self._task(ev)
            suffix = " skipped: already exists" if ev.kind == ProgressKind.LAYER_EXISTS else " done"
            self.progress.update(t, completed=ev.total, total=ev.total or 1,
                                 description=f"Copying blob {ev.id[7:19]}{suffix}")
        elif ev.kind == ProgressKind.WARNING:
            self.progress.console.print(f"WARNING: {ev.message}")
        elif ev.kind == ProgressKind.LAYER_RETRY:
            self.progress.console.print(f"Copying blob {ev.id[7:19]} retrying: {ev.message}")

    def close(self) -> None:
        self.progress.stop()


def make_progress(quiet: bool):  # noqa: ANN201
    if quiet:
        return None
    if sys.stderr.isatty():
        return RichProgress()
    return PlainProgress()
