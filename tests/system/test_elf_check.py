"""`run` refuses a program this host cannot execute, with "image is linux/arm64, this host is linux/amd64"
instead of a bare "exec format error" (engine/elf_check.py, issue 7).

Through the CLI: the arm64 entry of the fixture `busybox-multi` (pulled with --platform; it holds no
executable, so the image configuration decides), and an image built here whose programs are foreign ELF
files reached through PATH, symbolic links inside the rootfs and a `#!` script. Below the CLI: the
header parser against pyelftools on real binaries and on headers of big- and little-endian machines,
and the binfmt_misc matching against handler files in the kernel's format (registering an emulator on
the CI machine is not something a test may do).
"""
from __future__ import annotations

import io
import os
import struct
import textwrap

import pytest
from elftools.elf.elffile import ELFFile

from pinnace.engine import elf_check
from testenv import REGISTRY

pytestmark = pytest.mark.anyuser

BUSYBOX = f"{REGISTRY}/fixtures/busybox:latest"
MULTI = f"{REGISTRY}/fixtures/busybox-multi:latest"
HOST = elf_check.host_arch()
# the busybox-multi entry that is not this host's (it holds linux/amd64 and linux/arm64)
FOREIGN = "arm64" if HOST == "amd64" else "amd64"
MACHINES = {"amd64": 62, "arm64": 183}


def elf_header(machine: int, *, is64: bool = True, little: bool = True) -> bytes:
    """A complete ELF file header (no program): enough for the kernel, pyelftools and the check."""
    order = "<" if little else ">"
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1, 0]) + bytes(8)
    if is64:
        return ident + struct.pack(order + "HHIQQQIHHHHHH", 2, machine, 1, 0, 0, 0, 0, 64, 0, 0, 64, 0, 0)
    return ident + struct.pack(order + "HHIIIIIHHHHHH", 2, machine, 1, 0, 0, 0, 0, 52, 0, 0, 40, 0, 0)


def no_emulator_for(arch: str) -> None:
    """The refusal is only right where nothing emulates `arch`: say so instead of failing obscurely."""
    header = elf_check.synthetic_header(arch)
    assert header is not None and not elf_check.emulated(header), (
        f"this machine has a binfmt_misc emulator for {arch}: the refusal cannot be observed here")


# -- through the CLI ----------------------------------------------------------------------------------------

def test_foreign_platform_image_is_refused_with_both_platforms_named(pinnace):
    assert HOST in ("amd64", "arm64"), f"busybox-multi has no image foreign to this {HOST} host"
    no_emulator_for(FOREIGN)
    pinnace("pull", "-q", "--platform", f"linux/{FOREIGN}", MULTI)
    res = pinnace("run", "--rm", MULTI, check=False)
    assert res.rc == 125, (res.rc, res.err)
    assert f"image is linux/{FOREIGN}, this host is linux/{HOST}" in res.err, res.err
    assert "exec format error" not in res.err.lower()
    assert pinnace("ps", "-a", "-q").out.strip() == ""   # nothing half-created is left
    # the same image for this host runs
    pinnace("pull", "-q", "--platform", f"linux/{HOST}", MULTI)
    assert pinnace("run", "--rm", MULTI, "echo", "native").out == "native\n"


@pytest.fixture(scope="module")
def foreign_bins(module_pinnace, tmp_path_factory):
    """An image for this host (busybox) holding a foreign ELF file, reached in several ways."""
    no_emulator_for(FOREIGN)
    ctx = tmp_path_factory.mktemp("foreign-ctx")
    (ctx / "foreignbin").write_bytes(elf_header(MACHINES[FOREIGN]))
    (ctx / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM {BUSYBOX}
        COPY foreignbin /opt/foreign/bin
        RUN mkdir -p /usr/local/bin && chmod 755 /opt/foreign/bin \\
         && ln -s /opt/foreign/bin /usr/local/bin/foreigntool \\
         && ln -s ../opt/foreign /foreigndir \\
         && printf '#!/usr/local/bin/foreigntool -x\\necho from-script\\n' > /opt/foreign/script \\
         && chmod 755 /opt/foreign/script
        """))
    module_pinnace("pull", "-q", BUSYBOX)
    tag = "localhost/elf-check/foreign:latest"
    module_pinnace("build", "-q", "-t", tag, str(ctx))
    return module_pinnace, tag


@pytest.mark.parametrize("how", [
    ("foreigntool",),                                # PATH search, then an absolute link inside the rootfs
    ("/foreigndir/bin",),                            # a relative link in the middle of the path
    ("/opt/foreign/script",),                        # a #! script: its interpreter decides
    ("--entrypoint", "/opt/foreign/bin", "@IMAGE@"),  # an --entrypoint
])
def test_foreign_executable_is_refused_however_it_is_reached(foreign_bins, how):
    store, image = foreign_bins
    args = [image if a == "@IMAGE@" else a for a in how]
    cmd = ["run", "--rm", *args] if "@IMAGE@" in how else ["run", "--rm", image, *args]
    res = store(*cmd, check=False)
    assert res.rc == 125, (res.rc, res.out, res.err)
    assert f"image is linux/{FOREIGN}, this host is linux/{HOST}" in res.err, res.err
    assert store("ps", "-a", "-q").out.strip() == ""


def test_native_programs_of_the_same_image_still_run(foreign_bins):
    store, image = foreign_bins
    assert store("run", "--rm", image, "sh", "-c", "echo native").out == "native\n"
    # a missing program is still the runtime's "not found" (127), not an architecture complaint
    res = store("run", "--rm", image, "no-such-program", check=False)
    assert res.rc == 127 and "image is" not in res.err, (res.rc, res.err)


# -- the parts, against the reference ------------------------------------------------------------------------

PYELFTOOLS_ARCH = {  # pyelftools' e_machine names → GOARCH, for the cases below
    ("EM_X86_64", 64, True): "amd64", ("EM_386", 32, True): "386", ("EM_AARCH64", 64, True): "arm64",
    ("EM_ARM", 32, True): "arm", ("EM_PPC64", 64, True): "ppc64le", ("EM_PPC64", 64, False): "ppc64",
    ("EM_S390", 64, False): "s390x", ("EM_RISCV", 64, True): "riscv64", ("EM_MIPS", 64, False): "mips64",
    ("EM_MIPS", 32, True): "mipsle",
}


def reference_arch(stream) -> str:
    elf = ELFFile(stream)
    return PYELFTOOLS_ARCH[(elf.header["e_machine"], elf.elfclass, elf.little_endian)]


def test_header_parser_agrees_with_pyelftools_on_real_binaries():
    seen = 0
    for d in ("/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"):
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d))[:400]:
            path = os.path.join(d, name)
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                head = f.read(20)
                if head[:4] != b"\x7fELF":
                    continue
                f.seek(0)
                assert elf_check.elf_arch(head) == reference_arch(f) == HOST, path
            seen += 1
    assert seen >= 20, f"only {seen} ELF files found on this machine"
    assert elf_check.elf_arch(b"#!/bin/sh\n" + bytes(20)) is None
    assert elf_check.elf_arch(b"\x7fELF") is None                  # too short to tell


@pytest.mark.parametrize("machine,is64,little", [
    (62, True, True), (3, False, True), (183, True, True), (40, False, True), (21, True, True),
    (21, True, False), (22, True, False), (243, True, True), (8, True, False), (8, False, True)])
def test_header_parser_agrees_with_pyelftools_on_other_machines(machine, is64, little):
    data = elf_header(machine, is64=is64, little=little)
    arch = elf_check.elf_arch(data)
    assert arch == reference_arch(io.BytesIO(data))
    synthetic = elf_check.synthetic_header(arch)
    assert synthetic is not None and elf_check.elf_arch(synthetic) == arch


def test_symbolic_links_resolve_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/real").write_bytes(elf_header(183))
    (root / "usr/bin/real").chmod(0o755)
    (root / "bin").symlink_to("usr/bin")                           # relative directory link
    (root / "usr/bin/abs").symlink_to("/usr/bin/real")             # absolute: the root's, not the host's
    (root / "usr/bin/up").symlink_to("../../../../../usr/bin/real")  # `..` stops at the root
    (root / "usr/bin/loop").symlink_to("loop")
    (root / "usr/bin/notexec").write_bytes(elf_header(183))
    real = str(root / "usr/bin/real")
    for name in ("/bin/real", "/usr/bin/abs", "/bin/up", "abs"):
        assert elf_check.find_program(str(root), name, ["PATH=/sbin:/bin"]) == real, name
    assert elf_check.find_program(str(root), "loop", ["PATH=/usr/bin"]) is None
    assert elf_check.find_program(str(root), "notexec", ["PATH=/usr/bin"]) is None   # not executable
    assert elf_check.find_program(str(root), "real", []) == real                     # default PATH
    assert elf_check.resolve_in_root(str(root), "bin/real", cwd="/usr/..") == real   # relative to cwd
    assert elf_check.resolve_in_root(str(root), "/usr/bin/real/x") is None           # a file is no dir


QEMU_AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: {flags}
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


def test_binfmt_misc_handlers_in_the_kernel_format(tmp_path):
    arm64, amd64 = elf_header(183), elf_header(62)
    (tmp_path / "status").write_text("enabled\n")
    (tmp_path / "register").write_text("")
    (tmp_path / "qemu-aarch64").write_text(QEMU_AARCH64.format(flags="POCF"))
    assert elf_check.emulated(arm64, str(tmp_path))
    assert elf_check.emulated(elf_check.synthetic_header("arm64"), str(tmp_path))
    assert not elf_check.emulated(amd64, str(tmp_path))
    # without F the interpreter is looked up in the container's own files: not counted
    (tmp_path / "qemu-aarch64").write_text(QEMU_AARCH64.format(flags="POC"))
    assert not elf_check.emulated(arm64, str(tmp_path))
    (tmp_path / "qemu-aarch64").write_text(QEMU_AARCH64.format(flags="F"))
    (tmp_path / "status").write_text("disabled\n")
    assert not elf_check.emulated(arm64, str(tmp_path))
    assert not elf_check.emulated(arm64, str(tmp_path / "absent"))


def test_check_entrypoint_directly(tmp_path):
    """The decision table: found ELF decides; else the image configuration; unknown says nothing."""
    from pinnace.errors import InvalidArgument
    root = tmp_path
    (root / "bin").mkdir()
    for name, machine in (("native", MACHINES.get(HOST, 62)), ("foreign", MACHINES[FOREIGN])):
        (root / "bin" / name).write_bytes(elf_header(machine))
        (root / "bin" / name).chmod(0o755)
    none = str(tmp_path / "no-binfmt")
    proc = {"args": ["native"], "env": ["PATH=/bin"], "cwd": "/"}
    foreign_cfg = {"os": "linux", "architecture": FOREIGN}
    elf_check.check_entrypoint(root, proc, foreign_cfg, binfmt_dir=none)   # the binary wins over the label
    with pytest.raises(InvalidArgument, match=f"image is linux/{FOREIGN}, this host is linux/{HOST}"):
        elf_check.check_entrypoint(root, {**proc, "args": ["foreign"]}, {"architecture": HOST}, binfmt_dir=none)
    with pytest.raises(InvalidArgument, match=f"image is linux/{FOREIGN}, this host"):
        elf_check.check_entrypoint(root, {**proc, "args": ["missing"]}, foreign_cfg, binfmt_dir=none)
    with pytest.raises(InvalidArgument, match="image is windows/amd64"):
        elf_check.check_entrypoint(root, {**proc, "args": ["missing"]},
                                   {"os": "windows", "architecture": "amd64"}, binfmt_dir=none)
    elf_check.check_entrypoint(root, {**proc, "args": ["missing"]}, {"architecture": HOST}, binfmt_dir=none)
    elf_check.check_entrypoint(root, {**proc, "args": ["missing"]}, {}, binfmt_dir=none)
    elf_check.check_entrypoint(root, {**proc, "args": []}, foreign_cfg, binfmt_dir=none)
