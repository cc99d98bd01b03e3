"""Platforms (`os/architecture[/variant]`) and the rules for matching them against index entries.

Architecture names follow Go's GOARCH as the OCI image spec does (`amd64`, `arm64`, `arm`, `386`, …);
kernel names (`x86_64`, `aarch64`, `armv7l`) are accepted and translated. Matching rules (the ones
Docker and containerd use): `arm64` without a variant means `v8`, `arm` without a variant means `v7`,
and `amd64` micro-architecture variants (`v2`, `v3`) are ignored unless the wanted platform names one.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pinnace.errors import InvalidArgument

_COMPONENT_RE = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")

# kernel/distribution spellings → (GOARCH, variant or None)
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None), "x86-64": ("amd64", None), "amd64": ("amd64", None),
    "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armhf": ("arm", "v7"), "armel": ("arm", "v6"), "arm": ("arm", None),
    "armv7l": ("arm", "v7"), "armv7": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "i386": ("386", None), "i486": ("386", None), "i586": ("386", None), "i686": ("386", None), "386": ("386", None),
    "ppc64le": ("ppc64le", None), "ppc64": ("ppc64", None), "s390x": ("s390x", None),
    "riscv64": ("riscv64", None), "mips64": ("mips64", None), "mips64le": ("mips64le", None),
    "mips": ("mips", None), "mipsle": ("mipsle", None), "loong64": ("loong64", None), "loongarch64": ("loong64", None),
}
_KNOWN_OS = frozenset({"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos",
                       "aix", "android", "ios", "plan9", "wasip1", "js"})


def _normalize(arch: str, variant: str | None) -> tuple[str, str | None]:
    """The canonical (architecture, variant) pair used for comparisons, with defaults filled in."""
    arch, alias_variant = _ARCH_ALIASES.get(arch, (arch, None))
    variant = variant or alias_variant
    if variant and not variant.startswith("v") and variant[0].isdigit():
        variant = f"v{variant}"
    if arch == "arm64":
        return arch, "v8" if variant in (None, "v8", "v8.0") else variant
    if arch == "arm":
        return arch, variant or "v7"
    if arch == "amd64":
        return arch, variant or "v1"
    return arch, variant


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/arm64/v8`, `linux/amd64`, or a bare architecture (`arm64`, meaning linux)."""
        parts = text.strip().lower().split("/") if isinstance(text, str) else []
        if not parts or len(parts) > 3 or not all(_COMPONENT_RE.match(p) for p in parts):
            raise InvalidArgument(f"invalid platform {text!r}: expected os/architecture[/variant]")
        if len(parts) == 1:
            if parts[0] not in _ARCH_ALIASES:
                raise InvalidArgument(f"invalid platform {text!r}: unknown architecture (expected os/architecture[/variant])")
            parts = ["linux", parts[0]]
        os_name, arch = parts[0], parts[1]
        if os_name not in _KNOWN_OS:
            raise InvalidArgument(f"invalid platform {text!r}: unknown operating system {os_name!r}")
        arch, alias_variant = _ARCH_ALIASES.get(arch, (arch, None))
        variant = parts[2] if len(parts) == 3 else alias_variant
        return cls(os_name, arch, variant)

    def matches(self, descriptor_platform: Mapping | None) -> bool:
        """True when an index entry's `platform` object can serve this platform."""
        if not isinstance(descriptor_platform, Mapping):
            return False
        os_name, arch = descriptor_platform.get("os"), descriptor_platform.get("architecture")
        variant = descriptor_platform.get("variant")
        if not isinstance(os_name, str) or not isinstance(arch, str) or os_name != self.os:
            return False
        if variant is not None and not isinstance(variant, str):
            return False
        want_arch, want_variant = _normalize(self.architecture, self.variant)
        have_arch, have_variant = _normalize(arch, variant)
        if want_arch != have_arch:
            return False
        if want_arch == "amd64" and not self.variant:
            return True
        return want_variant == have_variant


def host_platform() -> Platform:
    """The platform of this machine (`linux/amd64`, `linux/arm64/v8`, `linux/arm/v7`, …)."""
    machine = os.uname().machine.lower()
    arch, variant = _ARCH_ALIASES.get(machine, (machine, None))
    if arch == "arm64":
        variant = "v8"
    elif arch == "arm" and variant is None:
        variant = "v7"
    return Platform("linux", arch, variant)
