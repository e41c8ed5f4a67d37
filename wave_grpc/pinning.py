"""Resolving a source image at creation, and fetching its pinned bytes later.

Both sides go through here: the service resolves a tag to digests and records
them; the gateway fetches exactly those digests, so every pull during a token's
life sees the same upstream bytes and computes the same augmented image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wave_grpc.errors import Errors, WaveError, brief, invalid_argument
from wave_grpc.flight import BoundedCache, CachedFlight
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import ImageConfig, ImageManifest, Index, MediaType
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import (
    AugmentedImage,
    Blob,
    IncludedLayers,
    UpstreamImage,
    augment_all,
)
from wave_grpc.record import TokenRecord
from wave_grpc.redaction import token_id
from wave_grpc.registry.client import ManifestBlob, RegistryClient
from wave_grpc.stores.content import ContentCache

EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class ResolvedPlatform:
    platform: Platform
    image: UpstreamImage
    config: ImageConfig
    layer_count: int  # the manifest's layers: what the augmented image starts from


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    """A reference resolved once (one top-level digest) and pinned for every requested platform."""

    reference: str  # normalised
    top: ManifestBlob
    platforms: tuple[ResolvedPlatform, ...]

    @property
    def index(self) -> Blob | None:
        return _to_blob(self.top) if self.top.media_type.is_index else None

    # The first platform's: what a single-platform request is about.
    @property
    def image(self) -> UpstreamImage:
        return self.platforms[0].image

    @property
    def platform(self) -> Platform:
        return self.platforms[0].platform

    @property
    def config(self) -> ImageConfig:
        return self.platforms[0].config


def _to_blob(manifest: ManifestBlob) -> Blob:
    return Blob(manifest.data, str(manifest.media_type), manifest.digest)


def _image_manifest(ref: ImageRef, manifest: ManifestBlob) -> ImageManifest:
    return ImageManifest.parse(manifest.data, manifest.media_type, f"manifest of {ref}")


async def _fetch_config(client: RegistryClient, ref: ImageRef, manifest: ImageManifest) -> bytes:
    return await client.get_blob(ref.registry, ref.repository, manifest.config.digest)


def parse_platforms(text: str, *, field: str = "container_platform") -> tuple[Platform, ...]:
    """One platform, or a comma-separated list of distinct ones (``linux/amd64,linux/arm64``)."""
    if "," not in text:
        return (Platform.parse(text, field=field),)
    parts = [part for part in (p.strip() for p in text.split(",")) if part]
    if not parts:
        raise invalid_argument(field, f"{brief(text)} names no platform; give e.g. linux/amd64,linux/arm64")
    platforms = tuple(Platform.parse(part, field=field) for part in parts)
    if len(set(platforms)) != len(platforms):
        raise invalid_argument(field, f"{brief(text)} names a platform twice")
    if len(platforms) > MAX_PLATFORMS:
        raise invalid_argument(field, f"at most {MAX_PLATFORMS} platforms, got {len(platforms)}")
    return platforms


MAX_PLATFORMS = 16


async def resolve_source(
    client: RegistryClient,
    ref: ImageRef,
    platforms: tuple[Platform, ...],
    *,
    platform_given: bool,
    field: str = "container_platform",
) -> ResolvedSource:
    """Resolve ``ref`` once and pin it for every platform in ``platforms``.

    A single-platform image whose config names another platform is refused only
    when the caller asked for a platform; without one, the image's own platform
    is taken (and recorded). Several platforms need an index that has them all.
    """
    top = await client.get_manifest(ref.registry, ref.repository, ref.reference)
    if not top.media_type.is_index:
        parsed = _image_manifest(ref, top)
        config = await _fetch_config(client, ref, parsed)
        image_config = ImageConfig.parse(config, f"config of {ref}")
        image_platform = f"{image_config.os}/{image_config.architecture}"
        if len(platforms) > 1:
            raise invalid_argument(
                field,
                f"image {ref} is {image_platform} only (not an index); it cannot serve {len(platforms)} platforms",
            )
        platform = platforms[0]
        if not platform.matches_config(image_config.platform):
            if platform_given:
                raise invalid_argument(field, f"image {ref} is {image_platform} only; it has no {platform} manifest")
            platform = Platform(image_config.os or "linux", image_config.architecture or "amd64", image_config.variant)
        single = ResolvedPlatform(
            platform, UpstreamImage(_to_blob(top), config, None), image_config, len(parsed.layers)
        )
        return ResolvedSource(str(ref), top, (single,))
    index = Index.parse(top.data, top.media_type, f"index of {ref}")
    resolved = []
    for platform in platforms:
        entry = index.select(platform, str(ref), field=field)
        manifest = await client.get_manifest(ref.registry, ref.repository, str(entry.digest))
        if not manifest.media_type.is_image_manifest:
            raise WaveError(
                Errors.MANIFEST_INVALID, f"{ref}: the {platform} entry of the index is not an image manifest"
            )
        parsed = _image_manifest(ref, manifest)
        config = await _fetch_config(client, ref, parsed)
        image_config = ImageConfig.parse(config, f"config of {ref}")
        image = UpstreamImage(_to_blob(manifest), config, _to_blob(top))
        resolved.append(ResolvedPlatform(platform, image, image_config, len(parsed.layers)))
    return ResolvedSource(str(ref), top, tuple(resolved))


class SourceResolver:
    """:func:`resolve_source` with single flight and a short cache.

    Concurrent creations of one image share one upstream resolution, and a
    resolution is reused for ``ttl`` seconds (``[upstream].tag_cache_ttl``; None
    turns reuse off, concurrent callers still share). Failures are never cached.
    The cache is bounded in entries; a digest reference never changes, but it is
    kept no longer than a tag so the bound holds. When every creation waiting on a
    resolution has gone, the resolution is cancelled (wave_grpc/flight.py).
    """

    MAX_ENTRIES = 4096

    def __init__(self, client: RegistryClient, ttl: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        cache: BoundedCache[tuple[str, str, bool], ResolvedSource] = BoundedCache(
            self.MAX_ENTRIES, ttl=ttl or 0.0, clock=clock
        )
        self._flight = CachedFlight(cache, keep=lambda _source: bool(ttl))

    async def resolve(self, ref: ImageRef, platforms: tuple[Platform, ...], *, platform_given: bool) -> ResolvedSource:
        key = (str(ref), ",".join(str(p) for p in platforms), platform_given)
        return await self._flight.get(
            key, lambda: resolve_source(self._client, ref, platforms, platform_given=platform_given)
        )


async def _cached_manifest(
    client: RegistryClient, ref: ImageRef, digest: str, cache: ContentCache | None, ttl: float
) -> ManifestBlob:
    key = f"upstream:{ref.registry}/{ref.repository}@{digest}"
    if cache is not None:
        hit = await cache.get(key)
        if hit is not None:
            media_type, _, data = hit.partition(b"\n")
            if str(Digest.of(data)) == digest:
                return ManifestBlob(data, MediaType(media_type.decode()), Digest.parse(digest))
    manifest = await client.get_manifest(ref.registry, ref.repository, digest)
    if cache is not None:
        await cache.put(key, str(manifest.media_type).encode() + b"\n" + manifest.data, ttl)
    return manifest


@dataclass(frozen=True, slots=True)
class PinnedPlatform:
    """One platform's pinned upstream bytes, and each included image's layers for it."""

    image: UpstreamImage
    includes: tuple[IncludedLayers, ...] = ()


@dataclass(frozen=True, slots=True)
class PinnedImage:
    """Everything a record pinned, fetched and verified: what the rewrite needs."""

    index: Blob | None
    platforms: tuple[PinnedPlatform, ...]


def pinned_from(resolved: ResolvedSource, includes: Sequence[ResolvedSource]) -> PinnedImage:
    """What a creation resolved, in the form a pull fetches back (to compute the digests now)."""
    platforms = []
    for i, platform in enumerate(resolved.platforms):
        included = []
        for include in includes:
            part = include.platforms[i]
            manifest = ImageManifest.parse(
                part.image.manifest.data, MediaType(part.image.manifest.media_type), "include"
            )
            if len(part.config.diff_ids) != len(manifest.layers):
                raise WaveError(
                    Errors.MANIFEST_INVALID,
                    f"included image {include.top.digest}: its manifest and config disagree on the layer count",
                )
            included.append(IncludedLayers(include.reference, manifest.layers, part.config.diff_ids))
        platforms.append(PinnedPlatform(platform.image, tuple(included)))
    return PinnedImage(resolved.index, tuple(platforms))


async def _pinned_config(
    client: RegistryClient, ref: ImageRef, manifest: ImageManifest, cache: ContentCache | None, ttl: float
) -> bytes:
    config_digest = manifest.config.digest
    key = f"upstream:{ref.registry}/{ref.repository}@{config_digest}"
    config = await cache.get(key) if cache is not None else None
    if config is None or Digest.of(config) != config_digest:
        config = await _fetch_config(client, ref, manifest)
        if cache is not None:
            await cache.put(key, config, ttl)
    return config


async def _included_layers(
    client: RegistryClient, ref: ImageRef, digest: str, cache: ContentCache | None, ttl: float
) -> IncludedLayers:
    manifest = _image_manifest(ref, await _cached_manifest(client, ref, digest, cache, ttl))
    config = ImageConfig.parse(await _pinned_config(client, ref, manifest, cache, ttl), f"config of {ref}")
    if len(config.diff_ids) != len(manifest.layers):
        raise WaveError(
            Errors.MANIFEST_INVALID,
            f"included image {ref}: its manifest lists {len(manifest.layers)} layers but its config "
            f"{len(config.diff_ids)} diff_ids",
        )
    return IncludedLayers(str(ref), manifest.layers, config.diff_ids)


async def fetch_pinned(
    client: RegistryClient, record: TokenRecord, cache: ContentCache | None = None, ttl: float = 3600
) -> PinnedImage:
    """The exact upstream bytes a record pinned (every digest verified), for every platform."""
    ref = record.source
    index_digest = record.index_digest
    index = _to_blob(await _cached_manifest(client, ref, index_digest, cache, ttl)) if index_digest else None
    includes = record.includes
    platforms = []
    for target in record.platforms:
        manifest = await _cached_manifest(client, ref, target.source_manifest_digest, cache, ttl)
        config = await _pinned_config(client, ref, _image_manifest(ref, manifest), cache, ttl)
        included = tuple(
            [
                await _included_layers(client, include, digest, cache, ttl)
                for include, digest in zip(includes, target.include_manifest_digests, strict=True)
            ]
        )
        platforms.append(PinnedPlatform(UpstreamImage(_to_blob(manifest), config, index), included))
    return PinnedImage(index, tuple(platforms))


def history_created(config: ImageConfig) -> str:
    """The time injected layers' history entries carry: the source config's own ``created``.

    Taken from the request rather than the clock, so one request always gives the same
    config and manifest digests (a freeze asked twice pushes nothing new).
    """
    value = config.document.get("created")
    return value if isinstance(value, str) and value else EPOCH


def augment_record(pinned: PinnedImage, record: TokenRecord) -> AugmentedImage:
    """The augmented image a record describes, from its pinned bytes."""
    augmentations = record.augmentations([platform.includes for platform in pinned.platforms])
    return augment_all(
        pinned.index, [(platform.image, a) for platform, a in zip(pinned.platforms, augmentations, strict=True)]
    )


async def augmented_from_upstream(
    client: RegistryClient, record: TokenRecord, cache: ContentCache | None = None, ttl: float = 3600
) -> AugmentedImage:
    """The record's augmented image from its pinned upstream bytes, checked against the digests
    recorded at creation: the same pinned bytes giving another result means this replica's
    rewrite differs from the creator's, and serving it would serve bytes others would not."""
    image = augment_record(await fetch_pinned(client, record, cache, ttl), record)
    if not record.matches(image):
        raise WaveError(
            Errors.MANIFEST_INVALID,
            f"token {token_id(record.token)}: the augmented manifest computed here ({image.manifest.digest}) "
            f"differs from the one recorded at creation ({record.message.target_manifest_digest}); "
            "check that all replicas run one version",
        )
    return image
