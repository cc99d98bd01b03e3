"""Report the newest GLIBC symbol version a frozen pinnace executable needs.

The executable runs on any Linux whose glibc is at least that version (the README turns it into the
oldest supported distributions), so this is the number to watch when the build machine changes. It
reads the version-needed section (SHT_GNU_verneed) of every ELF file in the bundle — the bootloader,
libpython, the bundled shared libraries and extension modules — with pyelftools, and prints the newest
version overall plus the files that need it.

    python packaging/glibc_report.py dist/pinnace [--top N] [--json]

Accepts the one-file executable (the bundle is read from its payload, in memory), the one-directory
build (scanned recursively) and plain ELF files.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import sys
import tarfile
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


_OFFSET = re.compile(rb"^v=.* off=(\d+)$", re.M)


def _payload_members(path: Path):
    """(name, bytes) of each ELF file in a pinnace one-file executable (packaging/launcher.sh followed by
    a gzip'd tar of the bundle); nothing when `path` is not one."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head.startswith(b"#!/bin/sh"):
        return
    m = _OFFSET.search(head)
    if not m:
        return
    with open(path, "rb") as f:
        f.seek(int(m.group(1)))
        try:
            with tarfile.open(fileobj=f, mode="r:gz") as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    data = tar.extractfile(member).read()
                    if data[:4] == b"\x7fELF":
                        yield member.name, data
        except (tarfile.TarError, OSError, EOFError) as exc:
            print(f"warning: {path}: cannot read its payload: {exc}", file=sys.stderr)


def scan(paths: list[Path]) -> list[Requirement]:
    found: list[Requirement] = []
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else [path]
        for f in files:
            label = str(f.relative_to(path)) if path.is_dir() else str(f)
            with open(f, "rb") as fh:
                magic = fh.read(4)
            if magic == b"\x7fELF":
                try:
                    found.append(Requirement(label, newest_glibc(f.read_bytes())))
                except ELFError as exc:
                    print(f"warning: {f}: {exc}", file=sys.stderr)
                continue
            for name, member in _payload_members(f):
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
    parser.add_argument("--newest", action="store_true", help="print only the newest version (x.y)")
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
    if args.newest:
        print(".".join(map(str, newest)) if newest else "0")
        return 0
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
