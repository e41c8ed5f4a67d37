"""The manifest and config rewrite: a pure function of (upstream bytes, request).

No I/O and no clock: the same token gives the same bytes on every replica and
after every restart. JSON objects keep the upstream's key order, and output is
compact UTF-8, so the result depends on nothing but the inputs.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import ImageManifest, Index, MediaType, parse_json_object
from wave_grpc.image.platform import Platform

ENTRY_CHAIN_VAR = "WAVE_ENTRY_CHAIN"


@dataclass(frozen=True, slots=True)
class InjectedLayer:
    digest: Digest
    size: int
    tar_digest: Digest


@dataclass(frozen=True, slots=True)
class Augmentation:
    """What the token asks for. ``created`` is the token's creation time (RFC 3339)."""

    layers: tuple[InjectedLayer, ...]
    platform: Platform
    created: str
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""


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
class AugmentedImage:
    manifest: Blob
    config: Blob
    index: Blob | None
    base_layers: frozenset[Digest]
    injected: tuple[InjectedLayer, ...]

    def top_level(self, accepts_index: bool) -> Blob:
        """What a tag resolves to: the one-entry index if the client takes one."""
        if self.index is not None and accepts_index:
            return self.index
        return self.manifest

    def manifest_by_digest(self, digest: Digest) -> Blob | None:
        for blob in (self.manifest, self.index):
            if blob is not None and blob.digest == digest:
                return blob
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
    rootfs["diff_ids"] = [*rootfs["diff_ids"], *(str(layer.tar_digest) for layer in augmentation.layers)]
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
                    "created_by": f"wave-grpc: injected layer {i}/{total} {layer.digest}",
                    "comment": "added by wave-grpc",
                }
                for i, layer in enumerate(augmentation.layers, start=1)
            ),
        ]
    return _dump(out)


def augment(upstream: UpstreamImage, augmentation: Augmentation) -> AugmentedImage:
    """Append the injected layers and apply the config overrides."""
    media_type = MediaType(upstream.manifest.media_type)
    manifest = ImageManifest.parse(upstream.manifest.data, media_type, "upstream manifest")
    if manifest.config.digest != Digest.of(upstream.config):
        raise WaveError(Errors.DIGEST_INVALID, "upstream config bytes do not match the manifest's config digest")

    config = Blob.of(
        rewrite_config(upstream.config, augmentation),
        manifest.config.media_type or str(MediaType.DOCKER_CONFIG if media_type.is_docker else MediaType.OCI_CONFIG),
    )
    layer_type = MediaType.DOCKER_LAYER_GZIP if media_type.is_docker else MediaType.OCI_LAYER_GZIP
    out = copy.deepcopy(dict(manifest.document))
    out["config"] = {**manifest.config.document, "digest": str(config.digest), "size": len(config.data)}
    out["layers"] = [
        *(dict(layer.document) for layer in manifest.layers),
        *(
            {"mediaType": str(layer_type), "digest": str(layer.digest), "size": layer.size}
            for layer in augmentation.layers
        ),
    ]
    augmented_manifest = Blob.of(_dump(out), str(media_type))

    index_blob: Blob | None = None
    if upstream.index is not None:
        index = Index.parse(upstream.index.data, MediaType(upstream.index.media_type), "upstream index")
        entry = index.select(augmentation.platform, "source")
        if entry.digest != upstream.manifest.digest:
            raise WaveError(Errors.MANIFEST_INVALID, "pinned manifest is not the index's entry for the platform")
        new_entry = {
            **entry.document,
            "mediaType": str(media_type),
            "digest": str(augmented_manifest.digest),
            "size": len(augmented_manifest.data),
        }
        # Only the augmented manifest is listed: nothing un-augmented is served under a token.
        index_blob = Blob.of(_dump({**index.document, "manifests": [new_entry]}), upstream.index.media_type)

    return AugmentedImage(
        manifest=augmented_manifest,
        config=config,
        index=index_blob,
        base_layers=frozenset(layer.digest for layer in manifest.layers),
        injected=augmentation.layers,
    )
