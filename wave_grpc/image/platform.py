"""Platforms (``os/arch[/variant]``) and the aliases users type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wave_grpc.errors import brief, invalid_argument

_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "arm": ("arm", "v7"),
    "i386": ("386", ""),
    "386": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}
_OSES = {"linux", "windows"}
_VARIANTS = {"v5", "v6", "v7", "v8"}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str, *, field: str = "container_platform") -> Platform:
        """``linux/amd64`` (the default when empty), ``x86_64``, ``arm64/v8``, ``linux/arm/v7``."""
        raw = text.strip().lower()
        if not raw:
            return DEFAULT_PLATFORM
        parts = raw.split("/")
        os_name = "linux"
        if parts[0] in _OSES:
            os_name, parts = parts[0], parts[1:]
        if not parts or len(parts) > 2:
            raise invalid_argument(field, f"{brief(text)} is not a platform; use os/arch[/variant] such as linux/arm64")
        alias = _ARCH_ALIASES.get(parts[0])
        if alias is None:
            known = ", ".join(sorted(_ARCH_ALIASES))
            raise invalid_argument(
                field, f"{brief(text)} has an unknown architecture {brief(parts[0])}; known: {known}"
            )
        arch, variant = alias
        if len(parts) == 2:
            if parts[1] not in _VARIANTS:
                raise invalid_argument(
                    field, f"{brief(text)} has an unknown variant {brief(parts[1])}; use v6, v7 or v8"
                )
            variant = parts[1]
        # arm64 images almost never say v8; treat v8 as "no variant" so they match.
        if arch == "arm64" and variant == "v8":
            variant = ""
        return cls(os_name, arch, variant)

    def matches(self, descriptor_platform: Mapping[str, Any] | None) -> bool:
        """Does an index entry's ``platform`` object describe this platform?"""
        if not descriptor_platform:
            return False
        if descriptor_platform.get("os") != self.os:
            return False
        if descriptor_platform.get("architecture") != self.architecture:
            return False
        variant = str(descriptor_platform.get("variant") or "")
        if self.architecture == "arm64" and variant == "v8":
            variant = ""
        return not (self.variant and variant and variant != self.variant)

    def matches_config(self, config: Mapping[str, Any]) -> bool:
        """Does an image config's os/architecture fit this platform?"""
        return self.matches(
            {
                "os": config.get("os"),
                "architecture": config.get("architecture"),
                "variant": config.get("variant"),
            }
        )

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


DEFAULT_PLATFORM = Platform("linux", "amd64")
