"""The manifest and config rewrite: a pure function of (upstream bytes, request).

No I/O and no clock: the same token gives the same bytes on every replica and
after every restart. JSON objects keep the upstream's key order, and output is
compact UTF-8, so the result depends on nothing but the inputs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.compression import Compression
from wave_grpc.image.digest import Digest
from wave_grpc.image.jsonbound import JsonLimits, limits_in_force
from wave_grpc.image.manifest import (
    DOCKER_TO_OCI,
    OCI_TO_DOCKER,
    Descriptor,
    ImageManifest,
    Index,
    MediaType,
    layer_media_type,
    parse_json_object,
)
from wave_grpc.image.platform import Platform

ENTRY_CHAIN_VAR = "WAVE_ENTRY_CHAIN"
# OCI image-spec annotations.md: what an image was built on (a reference, and its manifest's digest).
BASE_NAME_ANNOTATION = "org.opencontainers.image.base.name"
BASE_DIGEST_ANNOTATION = "org.opencontainers.image.base.digest"


@dataclass(frozen=True, slots=True)
class InjectedLayer:
    digest: Digest
    size: int
    tar_digest: Digest
    compression: Compression = Compression.GZIP


@dataclass(frozen=True, slots=True)
class IncludedLayers:
    """The layers of an included image for one platform: descriptors as its manifest
    lists them, and the matching ``diff_ids`` of its config."""

    reference: str
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Augmentation:
    """What the token asks for one platform. ``created`` goes into the history entries of
    added layers (RFC 3339; the source config's own ``created``)."""

    layers: tuple[InjectedLayer, ...]
    platform: Platform
    created: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    includes: tuple[IncludedLayers, ...] = ()
    # The source as the record pins it: written as the base annotations of an OCI manifest.
    base_name: str = ""
    base_digest: str = ""


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    media_type: str
    digest: Digest

    @classmethod
    def of(cls, data: bytes, media_type: str) -> Blob:
        return cls(data, media_type, Digest.of(data))


@dataclass(frozen=True, slots=True)
class UpstreamImage:
    """The pinned upstream bytes: the platform manifest, its config, and the index if any."""

    manifest: Blob
    config: bytes
    index: Blob | None = None


@dataclass(frozen=True, slots=True)
class PlatformImage:
    """One platform's augmented manifest and config, and where its layers come from."""

    manifest: Blob
    config: Blob
    base_layers: frozenset[Digest]
    injected: tuple[InjectedLayer, ...]
    # Layer digest -> the included image (a normalised reference) it comes from.
    included: Mapping[Digest, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AugmentedImage:
    """Every requested platform's image (the first answers a client that takes no index),
    and the index listing them when the source is an index."""

    images: tuple[PlatformImage, ...]
    index: Blob | None
    # Over every platform, computed once: the blob route asks on every request.
    base_layers: frozenset[Digest] = field(init=False)
    injected: tuple[InjectedLayer, ...] = field(init=False)
    included: Mapping[Digest, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_layers", frozenset().union(*(i.base_layers for i in self.images)))
        injected = {layer.digest: layer for image in self.images for layer in image.injected}
        object.__setattr__(self, "injected", tuple(injected.values()))
        object.__setattr__(
            self, "included", {digest: ref for image in self.images for digest, ref in image.included.items()}
        )

    @property
    def manifest(self) -> Blob:
        return self.images[0].manifest

    @property
    def config(self) -> Blob:
        return self.images[0].config

    def top_level(self, accepts_index: bool) -> Blob:
        """What a tag resolves to: the index if the client takes one."""
        if self.index is not None and accepts_index:
            return self.index
        return self.manifest

    def manifest_by_digest(self, digest: Digest) -> Blob | None:
        if self.index is not None and self.index.digest == digest:
            return self.index
        for image in self.images:
            if image.manifest.digest == digest:
                return image.manifest
        return None

    def config_by_digest(self, digest: Digest) -> Blob | None:
        for image in self.images:
            if image.config.digest == digest:
                return image.config
        return None


# Every creation from one source (and every rebuild of its tokens) parses the same upstream
# manifest and index again: parsed once per bytes (and the JSON limits in force) instead.
# A parsed value is shared, so nothing here changes it (its documents are read-only views).
@functools.lru_cache(maxsize=256)
def _upstream_manifest(data: bytes, media_type: MediaType, _limits: JsonLimits) -> ImageManifest:
    return ImageManifest.parse(data, media_type, "upstream manifest")


@functools.lru_cache(maxsize=256)
def _upstream_index(data: bytes, media_type: MediaType, _limits: JsonLimits) -> Index:
    return Index.parse(data, media_type, "upstream index")


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def merge_env(base: list[str], overrides: tuple[str, ...]) -> list[str]:
    """Merge ``NAME=value`` entries by name: given values win, new names append."""
    merged = list(base)
    position = {entry.split("=", 1)[0]: i for i, entry in enumerate(merged)}
    for entry in overrides:
        name = entry.split("=", 1)[0]
        if name in position:
            merged[position[name]] = entry
        else:
            position[name] = len(merged)
            merged.append(entry)
    return merged


def rewrite_config(config_bytes: bytes, augmentation: Augmentation) -> bytes:
    # Parsed here, so ours to change in place: no copy.
    out = parse_json_object(config_bytes, "upstream image config")
    runtime = out.get("config")
    if not isinstance(runtime, dict):
        runtime = {}
        out["config"] = runtime
    env_overrides: tuple[str, ...] = augmentation.env
    if augmentation.entrypoint:
        original = runtime.get("Entrypoint") or []
        if original:
            # Wave's convention: the replaced entrypoint stays reachable so a
            # wrapper entrypoint can chain to it. Given env values still win.
            env_overrides = (f"{ENTRY_CHAIN_VAR}={' '.join(original)}", *env_overrides)
        runtime["Entrypoint"] = list(augmentation.entrypoint)
    if augmentation.cmd:
        runtime["Cmd"] = list(augmentation.cmd)
    if augmentation.working_dir:
        runtime["WorkingDir"] = augmentation.working_dir
    if env_overrides:
        runtime["Env"] = merge_env(list(runtime.get("Env") or []), env_overrides)
    rootfs = out.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise WaveError(Errors.MANIFEST_INVALID, "upstream image config has no rootfs.diff_ids")
    included = [diff_id for include in augmentation.includes for diff_id in include.diff_ids]
    rootfs["diff_ids"] = [
        *rootfs["diff_ids"],
        *included,
        *(str(layer.tar_digest) for layer in augmentation.layers),
    ]
    history = out.get("history")
    # A history that covers only some layers misleads tools that pair history
    # entries with layers, so we extend a history but never start one.
    if isinstance(history, list) and history:
        total = len(augmentation.layers)
        out["history"] = [
            *history,
            *(
                {
                    "created": augmentation.created,
                    "created_by": f"wave-grpc: included from {include.reference} {layer.digest}",
                    "comment": "added by wave-grpc",
                }
                for include in augmentation.includes
                for layer in include.layers
            ),
            *(
                {
                    "created": augmentation.created,
                    "created_by": f"wave-grpc: injected layer {i}/{total} {layer.digest}",
                    "comment": "added by wave-grpc",
                }
                for i, layer in enumerate(augmentation.layers, start=1)
            ),
        ]
    return _dump(out)


def needs_oci(media_type: MediaType, augmentation: Augmentation) -> bool:
    """Would a Docker manifest fail to say what this augmentation adds? A zstd layer, an
    included layer of a type Docker has no name for, or an included layer's annotations
    (a Docker descriptor has none, and zstd:chunked and eStargz keep their tables' places there)."""
    if not media_type.is_docker:
        return False
    return any(layer.compression is not Compression.GZIP for layer in augmentation.layers) or any(
        "annotations" in layer.document or not (layer.media_type in OCI_TO_DOCKER or layer.media_type in DOCKER_TO_OCI)
        for include in augmentation.includes
        for layer in include.layers
    )


def _descriptor(document: Mapping[str, Any], docker: bool) -> dict[str, Any]:
    """A layer descriptor as upstream wrote it (annotations, urls and all), its media type
    said in the manifest's family (a Docker manifest cannot list an OCI type, and back)."""
    media_type = str(document.get("mediaType") or "")
    family = OCI_TO_DOCKER if docker else DOCKER_TO_OCI
    return {**document, "mediaType": family.get(media_type, media_type)}


def _base_annotations(out: dict[str, Any], augmentation: Augmentation) -> None:
    if augmentation.base_name and augmentation.base_digest:
        annotations = out.get("annotations")
        out["annotations"] = {
            **(annotations if isinstance(annotations, dict) else {}),
            BASE_NAME_ANNOTATION: augmentation.base_name,
            BASE_DIGEST_ANNOTATION: augmentation.base_digest,
        }


def augment_platform(upstream: UpstreamImage, augmentation: Augmentation, *, as_oci: bool = False) -> PlatformImage:
    """One platform: append the included and injected layers and apply the config overrides.

    ``as_oci`` serves a Docker base in the OCI family (see :func:`needs_oci`): the
    manifest, config and layer types converted, every other byte of their documents kept.
    """
    media_type = MediaType(upstream.manifest.media_type)
    manifest = _upstream_manifest(upstream.manifest.data, media_type, limits_in_force())
    if manifest.config.digest != Digest.of(upstream.config):
        raise WaveError(Errors.DIGEST_INVALID, "upstream config bytes do not match the manifest's config digest")
    docker = media_type.is_docker and not as_oci
    out_type = media_type if docker or not media_type.is_docker else MediaType.OCI_MANIFEST

    config_type = manifest.config.media_type or str(MediaType.DOCKER_CONFIG if docker else MediaType.OCI_CONFIG)
    config = Blob.of(
        rewrite_config(upstream.config, augmentation),
        config_type if docker else DOCKER_TO_OCI.get(config_type, config_type),
    )
    # Parsed above for this call; only top-level keys are replaced below, so a shallow copy keeps it intact.
    out = dict(manifest.document)
    if out_type != media_type:
        out["mediaType"] = str(out_type)
    out["config"] = {
        **manifest.config.document,
        "mediaType": config.media_type,
        "digest": str(config.digest),
        "size": len(config.data),
    }
    out["layers"] = [
        # Base layers stay as upstream listed them, unless the family changes.
        *(
            _descriptor(layer.document, docker) if out_type != media_type else dict(layer.document)
            for layer in manifest.layers
        ),
        *(_descriptor(layer.document, docker) for include in augmentation.includes for layer in include.layers),
        *(
            {
                "mediaType": str(layer_media_type(layer.compression, docker)),
                "digest": str(layer.digest),
                "size": layer.size,
            }
            for layer in augmentation.layers
        ),
    ]
    if not docker:
        _base_annotations(out, augmentation)
    return PlatformImage(
        manifest=Blob.of(_dump(out), str(out_type)),
        config=config,
        base_layers=frozenset(layer.digest for layer in manifest.layers),
        injected=augmentation.layers,
        included={layer.digest: include.reference for include in augmentation.includes for layer in include.layers},
    )


def augment_all(index: Blob | None, platforms: Sequence[tuple[UpstreamImage, Augmentation]]) -> AugmentedImage:
    """Every requested platform, and the index that lists exactly their augmented manifests.

    Without an upstream index there is one platform and no index. With one, the
    augmented index keeps the upstream's document (media type family,
    annotations) and lists one entry per requested platform, in the request's
    order: nothing un-augmented is served under a token.
    """
    if not platforms:
        raise WaveError(Errors.INTERNAL, "an augmentation needs at least one platform")
    # One family for the whole image: if any platform needs OCI's, every platform is served in it.
    as_oci = any(
        needs_oci(MediaType(upstream.manifest.media_type), augmentation) for upstream, augmentation in platforms
    )
    images = tuple(augment_platform(upstream, augmentation, as_oci=as_oci) for upstream, augmentation in platforms)
    if index is None:
        if len(images) != 1:
            raise WaveError(Errors.MANIFEST_INVALID, "several platforms need an upstream index")
        return AugmentedImage(images, None)
    parsed = _upstream_index(index.data, MediaType(index.media_type), limits_in_force())
    entries = []
    for (upstream, augmentation), image in zip(platforms, images, strict=True):
        entry = parsed.select(augmentation.platform, "source")
        if entry.digest != upstream.manifest.digest:
            raise WaveError(Errors.MANIFEST_INVALID, "pinned manifest is not the index's entry for the platform")
        entries.append(
            {
                **entry.document,
                "mediaType": image.manifest.media_type,
                "digest": str(image.manifest.digest),
                "size": len(image.manifest.data),
            }
        )
    index_type = MediaType.OCI_INDEX if as_oci else parsed.media_type
    document = {**parsed.document, "manifests": entries}
    if index_type != parsed.media_type:
        document["mediaType"] = str(index_type)
    return AugmentedImage(images, Blob.of(_dump(document), str(index_type)))


def augment(upstream: UpstreamImage, augmentation: Augmentation) -> AugmentedImage:
    """One platform: the augmented manifest, and a one-entry index when the source is an index."""
    return augment_all(upstream.index, [(upstream, augmentation)])
