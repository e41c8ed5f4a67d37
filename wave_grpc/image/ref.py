"""Image references: ``alpine`` -> ``docker.io/library/alpine:latest``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from wave_grpc.errors import WaveError, brief, invalid_argument
from wave_grpc.image.digest import Digest

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_PATH_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REGISTRY = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$"
)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalised reference. ``tag`` may be set alongside ``digest``; the digest wins."""

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __post_init__(self) -> None:
        if self.tag is None and self.digest is None:
            raise ValueError("an image reference needs a tag or a digest")

    @classmethod
    def parse(cls, text: str, *, field: str = "container_image") -> ImageRef:
        """Parse like docker does; errors name ``field`` and say what to change."""
        raw = text.strip()
        if not raw:
            raise invalid_argument(field, "is empty; give an image such as 'alpine' or 'quay.io/org/tool:1.0'")
        if "://" in raw:
            raise invalid_argument(field, f"{brief(text)} is not an image reference; drop the URL scheme")
        name, at, digest_text = raw.partition("@")
        digest: Digest | None = None
        if at:
            try:
                digest = Digest.parse(digest_text, field=field)
            except WaveError as exc:
                raise invalid_argument(field, f"{brief(text)} has a bad digest: {exc.message}") from None
        tag: str | None = None
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1 :]
            if not _TAG.match(tag):
                raise invalid_argument(
                    field, f"{brief(text)} has an invalid tag {brief(tag)}; tags are [A-Za-z0-9_.-], at most 128"
                )
        parts = name.split("/")
        if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
            registry, path = parts[0], parts[1:]
            if not _REGISTRY.match(registry):
                raise invalid_argument(field, f"{brief(text)} has an invalid registry host {brief(registry)}")
        else:
            registry, path = DOCKER_HUB, parts
        if registry.lower() in _DOCKER_HUB_ALIASES:
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and len(path) == 1:
            path = ["library", *path]
        for component in path:
            if not _PATH_COMPONENT.match(component):
                raise invalid_argument(
                    field,
                    f"{brief(text)} has an invalid path component {brief(component)}; use lowercase letters, "
                    "digits and single separators (. _ __ -)",
                )
        repository = "/".join(path)
        if len(repository) > 255:
            raise invalid_argument(field, f"{brief(text)}: the repository path is longer than 255 characters")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repository, tag, digest)

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        assert self.tag is not None
        return self.tag

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text
