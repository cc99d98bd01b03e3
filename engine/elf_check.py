"""Before a container starts: can this host execute its program at all?

An image built for another architecture fails deep in the runtime with a bare "exec format error". This
check reads the ELF header of the program the container would execute — resolved in the container's
root filesystem the way the runtime resolves it (PATH search for a bare name, symbolic links followed
inside the rootfs), following `#!` scripts to their interpreter — and refuses with "image is linux/arm64,
this host is linux/amd64" when its machine is not one the host runs. A binfmt_misc emulator registered
for that kind of executable (qemu-user-static, with the F flag so it works inside containers) makes it
runnable, and the check then stays quiet. When the program cannot be read (not in the image, on a
volume, not ELF), the image configuration's os/architecture is compared instead.

Why not pyelftools here: importing it takes about 25 ms, on every `run`; the header fields needed (class,
byte order, e_machine) sit at fixed offsets of the first 20 bytes (ELF specification, "ELF Header").
tests/system/test_elf_check.py checks this parser against pyelftools on real binaries.
"""
from __future__ import annotations

import os
import stat
import sys

from pinnace.errors import InvalidArgument

ELF_MAGIC = b"\x7fELF"
BINPRM_BUF = 256      # what the kernel reads to recognise a binary (#! line included)
MAX_LINKS = 40        # symbolic links followed in one resolution, as the kernel allows
MAX_SCRIPT_DEPTH = 4  # nested #! interpreters the kernel follows
BINFMT_DIR = "/proc/sys/fs/binfmt_misc"

# e_machine values (ELF specification / <elf.h>)
EM_386, EM_MIPS, EM_ARM, EM_PPC64, EM_S390, EM_X86_64 = 3, 8, 40, 21, 22, 62
EM_AARCH64, EM_RISCV, EM_LOONGARCH = 183, 243, 258

# kernel machine name (uname -m) → (GOARCH, the e_machine values it executes natively or in compat mode)
_HOST = {
    "x86_64": ("amd64", {EM_X86_64, EM_386}),
    "aarch64": ("arm64", {EM_AARCH64, EM_ARM}),
    "armv8l": ("arm", {EM_ARM}), "armv7l": ("arm", {EM_ARM}), "armv6l": ("arm", {EM_ARM}),
    "i686": ("386", {EM_386}), "i586": ("386", {EM_386}), "i386": ("386", {EM_386}),
    "ppc64le": ("ppc64le", {EM_PPC64}), "ppc64": ("ppc64", {EM_PPC64}),
    "s390x": ("s390x", {EM_S390}),
    "riscv64": ("riscv64", {EM_RISCV}),
    "loongarch64": ("loong64", {EM_LOONGARCH}),
    "mips64": ("mips64", {EM_MIPS}), "mips": ("mips", {EM_MIPS}),
}
# GOARCH → what amd64/arm64 hosts also run (32-bit compat)
_COMPAT = {"amd64": {"amd64", "386"}, "arm64": {"arm64", "arm"}}
# GOARCH → (ELF class, little endian, e_machine): a synthetic header to ask binfmt_misc about an architecture
_SYNTHETIC = {
    "amd64": (2, True, EM_X86_64), "386": (1, True, EM_386), "arm64": (2, True, EM_AARCH64),
    "arm": (1, True, EM_ARM), "ppc64le": (2, True, EM_PPC64), "ppc64": (2, False, EM_PPC64),
    "s390x": (2, False, EM_S390), "riscv64": (2, True, EM_RISCV), "loong64": (2, True, EM_LOONGARCH),
    "mips64le": (2, True, EM_MIPS), "mips64": (2, False, EM_MIPS), "mipsle": (1, True, EM_MIPS),
    "mips": (1, False, EM_MIPS),
}


def elf_arch(header: bytes) -> str | None:
    """The GOARCH name of an ELF file from its first 20 bytes (None: not ELF); unknown machines are
    named `elf-machine-N`."""
    if len(header) < 20 or header[:4] != ELF_MAGIC or header[4] not in (1, 2) or header[5] not in (1, 2):
        return None
    is64, little = header[4] == 2, header[5] == 1
    machine = int.from_bytes(header[18:20], "little" if little else "big")
    if machine == EM_X86_64:
        return "amd64"
    if machine == EM_386:
        return "386"
    if machine == EM_AARCH64:
        return "arm64"
    if machine == EM_ARM:
        return "arm"
    if machine == EM_PPC64:
        return "ppc64le" if little else "ppc64"
    if machine == EM_S390:
        return "s390x" if is64 else "s390"
    if machine == EM_RISCV:
        return "riscv64" if is64 else "riscv32"
    if machine == EM_LOONGARCH:
        return "loong64"
    if machine == EM_MIPS:
        return ("mips64" if is64 else "mips") + ("le" if little else "")
    return f"elf-machine-{machine}"


def host_arch() -> str | None:
    """The host's GOARCH name (None: a machine this check does not know, and then never refuses)."""
    entry = _HOST.get(os.uname().machine)
    if entry is None:
        return None
    if entry[0] in ("ppc64le", "ppc64"):
        return "ppc64le" if sys.byteorder == "little" else "ppc64"
    return entry[0]


def runs_natively(arch: str, host: str) -> bool:
    return arch in _COMPAT.get(host, {host})


def resolve_in_root(root: str, path: str, cwd: str = "/") -> str | None:
    """The host path of `path` as seen inside `root` (relative paths from `cwd`), following symbolic
    links within the root: an absolute target starts again at the root, `..` stops at it. None when a
    component is missing or the links loop."""
    if not path.startswith("/"):
        path = f"{cwd.rstrip('/')}/{path}"
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()  # a stack: the next component is last
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, part)
        try:
            st = os.lstat(host)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return None
            try:
                target = os.readlink(host)
            except OSError:
                return None
            if target.startswith("/"):
                done = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            return None
        done.append(part)
    return os.path.join(root, *done)


def find_program(root: str, name: str, env: list[str], cwd: str = "/") -> str | None:
    """Where the runtime would find `name` (its PATH search: runtime/executor.py), as a host path."""
    if "/" in name:
        return resolve_in_root(root, name, cwd)
    path = next((e[5:] for e in env if e.startswith("PATH=")), "/usr/bin:/bin")
    for d in path.split(":"):
        found = resolve_in_root(root, f"{d or '.'}/{name}", cwd)
        if found is None:
            continue
        try:
            st = os.stat(found)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return found
    return None


def _read_head(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(BINPRM_BUF)
    except OSError:
        return None


def program_header(root: str, name: str, env: list[str], cwd: str = "/") -> tuple[str, bytes] | None:
    """(path inside the root, first bytes) of the ELF file the kernel would end up loading for `name`:
    `#!` scripts are followed to their interpreter. None when there is no readable ELF file to look at."""
    host = find_program(root, name, env, cwd)
    shown = name
    for _ in range(MAX_SCRIPT_DEPTH + 1):
        head = _read_head(host) if host else None
        if head is None:
            return None
        if head[:4] == ELF_MAGIC:
            return shown, head
        if head[:2] != b"#!":
            return None
        line = head[2:].split(b"\n", 1)[0].strip(b" \t")
        interpreter = line.split(None, 1)[0].decode(errors="replace") if line else ""
        if not interpreter:
            return None
        shown, host = interpreter, resolve_in_root(root, interpreter, cwd)
    return None


def _binfmt_handlers(binfmt_dir: str) -> list[tuple[int, bytes, bytes]]:
    """(offset, magic, mask) of every enabled binfmt_misc handler with the F flag (the interpreter is
    opened when registered, so it works inside a container's mount namespace)."""
    try:
        with open(os.path.join(binfmt_dir, "status")) as f:
            if f.read().strip() != "enabled":
                return []
        names = os.listdir(binfmt_dir)
    except OSError:
        return []
    handlers = []
    for name in names:
        if name in ("status", "register"):
            continue
        try:
            with open(os.path.join(binfmt_dir, name)) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        fields = dict(line.split(" ", 1) if " " in line else (line, "") for line in lines)
        flags = fields.get("flags:", "")
        if "enabled" not in lines or "F" not in flags or "magic" not in fields:
            continue
        try:
            magic = bytes.fromhex(fields["magic"])
            mask = bytes.fromhex(fields["mask"]) if "mask" in fields else b"\xff" * len(magic)
            offset = int(fields.get("offset", "0"))
        except ValueError:
            continue
        handlers.append((offset, magic, mask))
    return handlers


def emulated(head: bytes, binfmt_dir: str = BINFMT_DIR) -> bool:
    """True when a binfmt_misc handler (F flag) takes executables starting with `head`."""
    for offset, magic, mask in _binfmt_handlers(binfmt_dir):
        data = head[offset:offset + len(magic)]
        if len(data) == len(magic) and all((d ^ m) & k == 0 for d, m, k in zip(data, magic, mask)):
            return True
    return False


def synthetic_header(arch: str) -> bytes | None:
    """The first 20 bytes of an executable of `arch` (GOARCH): what binfmt_misc would be shown."""
    if arch not in _SYNTHETIC:
        return None
    elf_class, little, machine = _SYNTHETIC[arch]
    order = "little" if little else "big"
    return (ELF_MAGIC + bytes([elf_class, 1 if little else 2, 1, 0]) + bytes(8)
            + (2).to_bytes(2, order) + machine.to_bytes(2, order))


def _config_platform(image_config: dict | None) -> tuple[str, str] | None:
    """(os, GOARCH) the image says it is for, normalised; None when it says nothing."""
    if not isinstance(image_config, dict):
        return None
    arch = str(image_config.get("architecture") or "").lower()
    if not arch:
        return None
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armhf": "arm", "i386": "386"}.get(arch, arch)
    return str(image_config.get("os") or "linux").lower(), arch


def _name(os_name: str, arch: str, image_config: dict | None = None) -> str:
    variant = (image_config or {}).get("variant") if arch == "arm" else None
    return f"{os_name}/{arch}/{variant}" if variant else f"{os_name}/{arch}"


def check_entrypoint(rootfs: str | os.PathLike, process: dict, image_config: dict | None = None,
                     *, binfmt_dir: str = BINFMT_DIR) -> None:
    """Raise InvalidArgument (exit 125) when the container's program cannot run on this host.

    `process` is the OCI spec's process object (args, env, cwd); `image_config` the image's
    configuration (its os/architecture are the fallback when the program cannot be read)."""
    host = host_arch()
    args = process.get("args") or []
    if host is None or not args:
        return
    root = os.fspath(rootfs)
    host_name = f"linux/{host}"
    found = program_header(root, args[0], list(process.get("env") or []), process.get("cwd") or "/")
    if found is not None:
        shown, head = found
        arch = elf_arch(head)
        if arch is None or runs_natively(arch, host) or emulated(head, binfmt_dir):
            return
        raise InvalidArgument(
            f"image is linux/{arch}, this host is {host_name}: {shown} is a linux/{arch} executable and no "
            f"emulator (binfmt_misc, e.g. qemu-user-static) is registered for it; pull the image for this "
            f"host with --platform {host_name}")
    said = _config_platform(image_config)
    if said is None:
        return
    os_name, arch = said
    if os_name == "linux" and runs_natively(arch, host):
        return
    header = synthetic_header(arch) if os_name == "linux" else None
    if header is not None and emulated(header, binfmt_dir):
        return
    raise InvalidArgument(
        f"image is {_name(os_name, arch, image_config)}, this host is {host_name}: {args[0]} cannot run here "
        f"(no emulator for it is registered with binfmt_misc); pull the image for this host with "
        f"--platform {host_name}")
