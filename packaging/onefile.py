"""Pack PyInstaller's one-directory build into the one file users download (called by packaging/build).

    python packaging/onefile.py ONEDIR OUT --version V --glibc X.Y

The result is packaging/launcher.sh with its placeholders filled in, followed by a gzip'd tar of ONEDIR
(gzip and tar are on every Linux system; the launcher needs nothing else to unpack it). Before packing,
ONEDIR gets `.manifest` ("SIZE PATH" per file, read by entry.py to tell a damaged copy from a real
import error). The tar is reproducible: sorted names, fixed mtime, owner 0:0, gzip without a timestamp.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import platform
import re
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MTIME = 1704067200  # 2024-01-01T00:00:00Z: the archive's bytes depend on the bundle's content only


def write_manifest(onedir: Path) -> int:
    lines = []
    for path in sorted(onedir.rglob("*")):
        rel = path.relative_to(onedir).as_posix()
        if rel in (".manifest", ".complete") or (path.is_dir() and not path.is_symlink()):
            continue
        if " " in rel or "\n" in rel:
            sys.exit(f"onefile.py: {rel!r}: file names with spaces are not supported by the manifest")
        lines.append(f"{path.lstat().st_size} {rel}")
    (onedir / ".manifest").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def pack(onedir: Path) -> bytes:
    """A gzip'd tar of ONEDIR's contents (names relative to it)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(onedir.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(onedir).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = MTIME
            info.mode &= 0o755  # no group/other write, no set-id bits, whatever the build umask was
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def fill(template: str, values: dict[str, str]) -> str:
    out = template
    for key, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9._+/-]*", value):
            sys.exit(f"onefile.py: {key}={value!r} is not safe inside the launcher")
        out = out.replace(f"@{key}@", value)
    left = re.findall(r"@[A-Z0-9_]+@", out)
    if left:
        sys.exit(f"onefile.py: placeholders left in the launcher: {left}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onedir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--version", required=True)
    parser.add_argument("--glibc", required=True, help="the newest GLIBC symbol version the bundle needs (x.y)")
    args = parser.parse_args(argv)

    onedir = args.onedir
    libpython = sorted(p.name for p in (onedir / "_internal").glob("libpython3*.so*"))
    if not (onedir / "pinnace").is_file() or not libpython:
        sys.exit(f"onefile.py: {onedir} is not pinnace's PyInstaller one-directory build")
    files = write_manifest(onedir)
    payload = pack(onedir)
    digest = hashlib.sha256(payload).hexdigest()
    values = {"VERSION": args.version, "HASH": digest[:12], "SHA256": digest, "LIBPYTHON": libpython[0],
              "GLIBC": args.glibc, "ARCH": platform.machine()}
    template = (HERE / "launcher.sh").read_text(encoding="utf-8")
    # The offset is part of the text it measures: settle it (a digit more moves it by one).
    offset = 0
    while True:
        header = fill(template, {**values, "OFFSET": str(offset)}).encode()
        if len(header) == offset:
            break
        offset = len(header)
    tmp = args.out.with_name(args.out.name + ".part")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload)
    os.chmod(tmp, 0o755)
    os.replace(tmp, args.out)
    print(f"onefile.py: {args.out}: launcher {len(header)} bytes + payload {len(payload)} bytes "
          f"({files} files, sha256 {digest[:12]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
