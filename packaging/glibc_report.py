"""Report the newest GLIBC symbol version a frozen pinnace executable needs.

The executable runs on any Linux whose glibc is at least that version, so this is the number to
watch when the build machine changes. It reads the bootloader's own ELF headers and every ELF file
bundled in the PyInstaller archive (shared libraries and extension modules, inflated in memory),
and prints the newest version overall plus the files that need it.

    python packaging/glibc_report.py dist/pinnace [--top N] [--json]

Plain ELF files and directories (scanned recursively) are accepted too.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.common.exceptions import ELFError

_GLIBC = re.compile(r"^GLIBC_(\d+(?:\.\d+)*)$")


@dataclass(frozen=True)
class Requirement:
    name: str                      # the file, as named in the archive or on disk
    newest: tuple[int, ...] | None  # newest GLIBC_x.y it references; None when it needs none


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _fmt(version: tuple[int, ...] | None) -> str:
    return "GLIBC_" + ".".join(map(str, version)) if version else "(none)"


def newest_glibc(data: bytes) -> tuple[int, ...] | None:
    """The newest GLIBC_x.y in the ELF's version-needed section (symbols it imports from libc)."""
    elf = ELFFile(io.BytesIO(data))
    newest = None
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_GNU_verneed":
            continue
        for _verneed, auxiliaries in section.iter_versions():
            for aux in auxiliaries:
                m = _GLIBC.match(aux.name)
                if m:
                    key = _version_key(m.group(1))
                    newest = key if newest is None or key > newest else newest
    return newest


def _archive_members(path: Path):
    """(name, bytes) of each ELF file bundled in a PyInstaller executable; none if it is not one."""
    try:
        from PyInstaller.archive.readers import ArchiveReadError, CArchiveReader
    except ImportError:  # PyInstaller missing: only the bootloader itself can be reported
        return
    try:
        archive = CArchiveReader(str(path))
    except (ArchiveReadError, OSError):
        return
    for name, entry in sorted(archive.toc.items()):
        typecode = entry[-1]
        if typecode not in ("b", "x", "d"):  # binaries, data files that might be ELF, dependencies
            continue
        try:
            data = archive.extract(name)
        except Exception:  # noqa: BLE001 - a corrupt entry is reported, not fatal
            print(f"warning: cannot extract {name} from {path}", file=sys.stderr)
            continue
        if data[:4] == b"\x7fELF":
            yield name, data


def scan(paths: list[Path]) -> list[Requirement]:
    found: list[Requirement] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            data = f.read_bytes()
            if data[:4] != b"\x7fELF":
                continue
            try:
                found.append(Requirement(str(f), newest_glibc(data)))
            except ELFError as exc:
                print(f"warning: {f}: {exc}", file=sys.stderr)
            for name, member in _archive_members(f):
                try:
                    found.append(Requirement(f"{f.name}:{name}", newest_glibc(member)))
                except ELFError as exc:
                    print(f"warning: {f.name}:{name}: {exc}", file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=5, help="files to list, newest requirement first")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)

    for p in args.paths:
        if not p.exists():
            parser.error(f"{p}: no such file or directory")
    reqs = scan(args.paths)
    if not reqs:
        print("error: no ELF file found", file=sys.stderr)
        return 1
    with_glibc = [r for r in reqs if r.newest]
    newest = max((r.newest for r in with_glibc), default=None)
    ranked = sorted(with_glibc, key=lambda r: (r.newest, r.name), reverse=True)
    if args.json:
        json.dump({"newest": _fmt(newest), "elf_files": len(reqs),
                   "files": [{"name": r.name, "newest": _fmt(r.newest)} for r in ranked]},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"needs glibc >= {'.'.join(map(str, newest)) if newest else '(any)'} ({_fmt(newest)}), "
          f"from {len(reqs)} ELF files")
    for r in ranked[: args.top]:
        print(f"  {_fmt(r.newest):<12} {r.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
