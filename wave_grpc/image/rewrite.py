"""The manifest and config rewrite: a pure function of (upstream bytes, request).

No I/O and no clock: the same token gives the same bytes on every replica and
after every restart. JSON objects keep the upstream's key order, and output is
compact UTF-8, so the result depends on nothing but the inputs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import Descriptor, ImageManifest, Index, MediaType, parse_json_object
from wave_grpc.image.platform import Platform

ENTRY_CHAIN_VAR = "WAVE_ENTRY_CHAIN"


@dataclass(frozen=True, slots=True)
class InjectedLayer:
    digest: Digest
    size: int
    tar_digest: Digest


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
    config = parse_json_object(config_bytes, "upstream image config")
    out = copy.deepcopy(config)
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


# An included image's layer keeps its digest; its media type is said in the base
# manifest's family (a Docker manifest cannot list an OCI layer type, and back).
_LAYER_FAMILY = {
    True: {str(MediaType.OCI_LAYER_GZIP): str(MediaType.DOCKER_LAYER_GZIP)},
    False: {str(MediaType.DOCKER_LAYER_GZIP): str(MediaType.OCI_LAYER_GZIP)},
}


def augment_platform(upstream: UpstreamImage, augmentation: Augmentation) -> PlatformImage:
    """One platform: append the included and injected layers and apply the config overrides."""
    media_type = MediaType(upstream.manifest.media_type)
    manifest = ImageManifest.parse(upstream.manifest.data, media_type, "upstream manifest")
    if manifest.config.digest != Digest.of(upstream.config):
        raise WaveError(Errors.DIGEST_INVALID, "upstream config bytes do not match the manifest's config digest")

    config = Blob.of(
        rewrite_config(upstream.config, augmentation),
        manifest.config.media_type or str(MediaType.DOCKER_CONFIG if media_type.is_docker else MediaType.OCI_CONFIG),
    )
    layer_type = MediaType.DOCKER_LAYER_GZIP if media_type.is_docker else MediaType.OCI_LAYER_GZIP
    family = _LAYER_FAMILY[media_type.is_docker]
    out = copy.deepcopy(dict(manifest.document))
    out["config"] = {**manifest.config.document, "digest": str(config.digest), "size": len(config.data)}
    out["layers"] = [
        *(dict(layer.document) for layer in manifest.layers),
        *(
            {
                "mediaType": family.get(layer.media_type, layer.media_type),
                "digest": str(layer.digest),
                "size": layer.size,
            }
            for include in augmentation.includes
            for layer in include.layers
        ),
        *(
            {"mediaType": str(layer_type), "digest": str(layer.digest), "size": layer.size}
            for layer in augmentation.layers
        ),
    ]
    return PlatformImage(
        manifest=Blob.of(_dump(out), str(media_type)),
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
    images = tuple(augment_platform(upstream, augmentation) for upstream, augmentation in platforms)
    if index is None:
        if len(images) != 1:
            raise WaveError(Errors.MANIFEST_INVALID, "several platforms need an upstream index")
        return AugmentedImage(images, None)
    parsed = Index.parse(index.data, MediaType(index.media_type), "upstream index")
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
    return AugmentedImage(images, Blob.of(_dump({**parsed.document, "manifests": entries}), index.media_type))


def augment(upstream: UpstreamImage, augmentation: Augmentation) -> AugmentedImage:
    """One platform: the augmented manifest, and a one-entry index when the source is an index."""
    return augment_all(upstream.index, [(upstream, augmentation)])
