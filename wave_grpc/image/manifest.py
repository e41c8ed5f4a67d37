"""Media types and manifest values (descriptors, image manifests, indexes, configs).

Each is parsed once from upstream bytes and validated at construction; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from wave_grpc.errors import Errors, WaveError, brief, invalid_argument
from wave_grpc.image.compression import Compression
from wave_grpc.image.digest import Digest
from wave_grpc.image.jsonbound import JsonLimits, limits_in_force, loads_bounded
from wave_grpc.image.platform import Platform


class MediaType(StrEnum):
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    @property
    def is_index(self) -> bool:
        return self in (MediaType.OCI_INDEX, MediaType.DOCKER_LIST)

    @property
    def is_image_manifest(self) -> bool:
        return self in (MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST)

    @property
    def is_docker(self) -> bool:
        return self.value.startswith("application/vnd.docker.")


def layer_media_type(compression: Compression, docker: bool) -> MediaType:
    """An injected layer's type in a manifest of the Docker or the OCI family.

    Docker's family has no zstd type: a manifest that lists a zstd layer is an OCI one
    (``image/rewrite.py`` converts the augmented image when its base is Docker's).
    """
    if compression is Compression.ZSTD:
        return MediaType.OCI_LAYER_ZSTD
    return MediaType.DOCKER_LAYER_GZIP if docker else MediaType.OCI_LAYER_GZIP


# The same content said in the other family; what is not here has no Docker type.
DOCKER_TO_OCI: Mapping[str, str] = MappingProxyType(
    {
        MediaType.DOCKER_MANIFEST: MediaType.OCI_MANIFEST,
        MediaType.DOCKER_LIST: MediaType.OCI_INDEX,
        MediaType.DOCKER_CONFIG: MediaType.OCI_CONFIG,
        MediaType.DOCKER_LAYER_GZIP: MediaType.OCI_LAYER_GZIP,
        MediaType.DOCKER_LAYER_FOREIGN_GZIP: MediaType.OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    }
)
OCI_TO_DOCKER: Mapping[str, str] = MappingProxyType({oci: docker for docker, oci in DOCKER_TO_OCI.items()})


# What we ask every upstream for, one Accept header each (see REAL-COMPONENTS).
MANIFEST_MEDIA_TYPES: tuple[MediaType, ...] = (
    MediaType.OCI_INDEX,
    MediaType.OCI_MANIFEST,
    MediaType.DOCKER_LIST,
    MediaType.DOCKER_MANIFEST,
)


def parse_json_object(data: bytes, what: str, limits: JsonLimits | None = None) -> dict[str, Any]:
    """An upstream JSON object, measured before it is built (wave_grpc/image/jsonbound.py)."""
    value = loads_bounded(data, what, limits)
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
            f"{what} has media type {brief(declared)}, which wave-grpc cannot augment "
            "(supported: OCI image manifest and index, Docker v2 schema 2 and manifest list)",
        ) from None
    if not (media_type.is_index or media_type.is_image_manifest):
        raise WaveError(Errors.MANIFEST_INVALID, f"{what} has media type {brief(declared)}, not a manifest")
    return media_type


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise WaveError(Errors.MANIFEST_INVALID, f"{what} is not a JSON object")
    return MappingProxyType(value)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor (config, layer, index entry), validated; ``document`` is the
    JSON object as upstream wrote it (key order, annotations), never modified."""

    digest: Digest
    size: int
    media_type: str
    platform: Mapping[str, Any] | None
    document: Mapping[str, Any]

    @classmethod
    def parse(cls, value: Any, what: str) -> Descriptor:
        document = _mapping(value, what)
        try:
            digest = Digest.parse(str(document.get("digest", "")), field=f"{what} digest")
        except WaveError as exc:
            raise WaveError(Errors.MANIFEST_INVALID, exc.message) from None
        size = document.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise WaveError(Errors.MANIFEST_INVALID, f"{what} has an invalid size {brief(size)}")
        platform = document.get("platform")
        return cls(
            digest,
            size,
            str(document.get("mediaType") or ""),
            MappingProxyType(platform) if isinstance(platform, dict) else None,
            document,
        )

    @property
    def platform_text(self) -> str:
        platform = self.platform or {}
        text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
        return text + (f"/{platform['variant']}" if platform.get("variant") else "")


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """An image manifest (OCI or Docker v2 schema 2): its config and layers, in order."""

    media_type: MediaType
    config: Descriptor
    layers: tuple[Descriptor, ...]
    document: Mapping[str, Any]

    @classmethod
    def parse(cls, data: bytes, media_type: MediaType, what: str, *, max_layers: int | None = None) -> ImageManifest:
        if not media_type.is_image_manifest:
            raise WaveError(Errors.MANIFEST_INVALID, f"expected an image manifest, got {media_type}")
        document = parse_json_object(data, what)
        if not isinstance(document.get("config"), dict):
            raise WaveError(Errors.MANIFEST_INVALID, f"{what} has no config descriptor")
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise WaveError(Errors.MANIFEST_INVALID, f"{what} has no layers list")
        max_layers = max_layers or limits_in_force().max_layers
        if len(layers) > max_layers:
            raise WaveError(
                Errors.MANIFEST_INVALID,
                f"{what} lists {len(layers)} layers, more than the {max_layers} wave-grpc augments "
                "([upstream].max_layers); no runtime can unpack that many",
            )
        return cls(
            media_type,
            Descriptor.parse(document["config"], f"{what}: config"),
            tuple(Descriptor.parse(layer, f"{what}: layer {i}") for i, layer in enumerate(layers)),
            MappingProxyType(document),
        )


ATTESTATION_ANNOTATION = "vnd.docker.reference.type"


@dataclass(frozen=True, slots=True)
class Index:
    """An OCI index or a Docker manifest list."""

    media_type: MediaType
    manifests: tuple[Descriptor, ...]
    document: Mapping[str, Any]

    @classmethod
    def parse(cls, data: bytes, media_type: MediaType, what: str) -> Index:
        if not media_type.is_index:
            raise WaveError(Errors.MANIFEST_INVALID, f"expected an index, got {media_type}")
        document = parse_json_object(data, what)
        entries = document.get("manifests") or []
        if not isinstance(entries, list):
            raise WaveError(Errors.MANIFEST_INVALID, f"{what} has no manifests list")
        return cls(
            media_type,
            tuple(Descriptor.parse(e, f"{what}: entry {i}") for i, e in enumerate(entries) if isinstance(e, dict)),
            MappingProxyType(document),
        )

    def select(self, platform: Platform, image: str, *, field: str = "container_platform") -> Descriptor:
        """The entry for ``platform``; a clear INVALID_ARGUMENT when there is none."""
        for entry in self.manifests:
            # Attestations (BuildKit's provenance and SBOM entries) are never an image to run.
            annotations = entry.document.get("annotations")
            if isinstance(annotations, dict) and ATTESTATION_ANNOTATION in annotations:
                continue
            if platform.matches(entry.platform):
                return entry
        available = sorted(
            {e.platform_text for e in self.manifests if (e.platform or {}).get("os") not in (None, "unknown")}
        )
        raise invalid_argument(
            field,
            f"image {image} has no {platform} manifest; it has: {', '.join(available) or 'none'}",
        )


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image config: the platform it names and its ``rootfs.diff_ids``."""

    os: str
    architecture: str
    variant: str
    diff_ids: tuple[str, ...]
    document: Mapping[str, Any]

    @classmethod
    def parse(cls, data: bytes, what: str) -> ImageConfig:
        document = parse_json_object(data, what)
        rootfs = document.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise WaveError(Errors.MANIFEST_INVALID, f"{what} has no rootfs.diff_ids")
        return cls(
            str(document.get("os") or ""),
            str(document.get("architecture") or ""),
            str(document.get("variant") or ""),
            tuple(str(d) for d in rootfs["diff_ids"]),
            MappingProxyType(document),
        )

    @property
    def platform(self) -> Mapping[str, Any]:
        return {"os": self.os, "architecture": self.architecture, "variant": self.variant}
