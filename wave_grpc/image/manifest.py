"""Media types, manifest parsing and platform selection (no I/O)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from wave_grpc.errors import Errors, WaveError, invalid_argument
from wave_grpc.image.digest import Digest
from wave_grpc.image.platform import Platform


class MediaType(StrEnum):
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

    @property
    def is_index(self) -> bool:
        return self in (MediaType.OCI_INDEX, MediaType.DOCKER_LIST)

    @property
    def is_image_manifest(self) -> bool:
        return self in (MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST)

    @property
    def is_docker(self) -> bool:
        return self.value.startswith("application/vnd.docker.")


# What we ask every upstream for, one Accept header each (see REAL-COMPONENTS).
MANIFEST_MEDIA_TYPES: tuple[MediaType, ...] = (
    MediaType.OCI_INDEX,
    MediaType.OCI_MANIFEST,
    MediaType.DOCKER_LIST,
    MediaType.DOCKER_MANIFEST,
)


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WaveError(Errors.MANIFEST_INVALID, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise WaveError(Errors.MANIFEST_INVALID, f"{what} is not a JSON object")
    return value


def manifest_media_type(data: bytes, content_type: str | None, what: str) -> MediaType:
    """The manifest's media type: its own ``mediaType`` field, else the header.

    OCI manifests may omit ``mediaType``; then a ``manifests`` list means an index.
    """
    doc = parse_json_object(data, what)
    declared = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not declared or declared == "application/json":
        declared = MediaType.OCI_INDEX if "manifests" in doc else MediaType.OCI_MANIFEST
    try:
        media_type = MediaType(declared)
    except ValueError:
        raise WaveError(
            Errors.MANIFEST_INVALID,
            f"{what} has media type {declared!r}, which wave-grpc cannot augment "
            "(supported: OCI image manifest and index, Docker v2 schema 2 and manifest list)",
        ) from None
    if not (media_type.is_index or media_type.is_image_manifest):
        raise WaveError(Errors.MANIFEST_INVALID, f"{what} has media type {declared!r}, not a manifest")
    return media_type


def descriptor_platform(entry: dict[str, Any]) -> str:
    platform = entry.get("platform") or {}
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return text + (f"/{platform['variant']}" if platform.get("variant") else "")


def select_platform(index: dict[str, Any], platform: Platform, image: str) -> dict[str, Any]:
    """The index entry for ``platform``; a clear INVALID_ARGUMENT when there is none."""
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict)]
    for entry in entries:
        if platform.matches(entry.get("platform")):
            return entry
    available = sorted(
        {descriptor_platform(e) for e in entries if (e.get("platform") or {}).get("os") not in (None, "unknown")}
    )
    raise invalid_argument(
        "container_platform",
        f"image {image} has no {platform} manifest; it has: {', '.join(available) or 'none'}",
    )


def descriptor_digest(entry: dict[str, Any], what: str) -> Digest:
    try:
        return Digest.parse(str(entry.get("digest", "")), field=what)
    except WaveError as exc:
        raise WaveError(Errors.MANIFEST_INVALID, exc.message) from None
