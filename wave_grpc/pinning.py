"""Resolving a source image at creation, and fetching its pinned bytes later.

Both sides go through here: the service resolves a tag to digests and records
them; the gateway fetches exactly those digests, so every pull during a token's
life sees the same upstream bytes and computes the same augmented image.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from wave_grpc.errors import Errors, WaveError, invalid_argument
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import ImageConfig, ImageManifest, Index, MediaType
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import Augmentation, Blob, InjectedLayer, UpstreamImage
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.registry.client import ManifestBlob, RegistryClient
from wave_grpc.stores.content import ContentCache


@dataclass(frozen=True, slots=True)
class ResolvedSource:
    top: ManifestBlob
    image: UpstreamImage
    platform: Platform
    config: ImageConfig


def _to_blob(manifest: ManifestBlob) -> Blob:
    return Blob(manifest.data, str(manifest.media_type), manifest.digest)


def _image_manifest(ref: ImageRef, manifest: ManifestBlob) -> ImageManifest:
    return ImageManifest.parse(manifest.data, manifest.media_type, f"manifest of {ref}")


async def _fetch_config(client: RegistryClient, ref: ImageRef, manifest: ImageManifest) -> bytes:
    return await client.get_blob(ref.registry, ref.repository, manifest.config.digest)


async def resolve_source(
    client: RegistryClient, ref: ImageRef, platform: Platform, *, platform_given: bool
) -> ResolvedSource:
    """Resolve ``ref`` to pinned digests for ``platform``.

    A single-platform image whose config names another platform is refused only
    when the caller asked for a platform; without one, the image's own platform
    is taken (and recorded).
    """
    top = await client.get_manifest(ref.registry, ref.repository, ref.reference)
    index: Blob | None = None
    manifest = top
    if top.media_type.is_index:
        entry = Index.parse(top.data, top.media_type, f"index of {ref}").select(platform, str(ref))
        manifest = await client.get_manifest(ref.registry, ref.repository, str(entry.digest))
        if not manifest.media_type.is_image_manifest:
            raise WaveError(
                Errors.MANIFEST_INVALID, f"{ref}: the {platform} entry of the index is not an image manifest"
            )
        index = _to_blob(top)
    config = await _fetch_config(client, ref, _image_manifest(ref, manifest))
    image_config = ImageConfig.parse(config, f"config of {ref}")
    actual = platform
    if index is None:
        if platform.matches_config(image_config.platform):
            actual = platform
        elif platform_given:
            image_platform = f"{image_config.os}/{image_config.architecture}"
            raise invalid_argument(
                "container_platform", f"image {ref} is {image_platform} only; it has no {platform} manifest"
            )
        else:
            actual = Platform(
                image_config.os or "linux",
                image_config.architecture or "amd64",
                image_config.variant,
            )
    return ResolvedSource(top, UpstreamImage(_to_blob(manifest), config, index), actual, image_config)


class SourceResolver:
    """:func:`resolve_source` with single flight and a short cache.

    Concurrent creations of one image share one upstream resolution, and a
    resolution is reused for ``ttl`` seconds (``[upstream].tag_cache_ttl``; None
    turns reuse off, concurrent callers still share). Failures are never cached.
    The cache is bounded in entries; a digest reference never changes, but it is
    kept no longer than a tag so the bound holds.
    """

    MAX_ENTRIES = 4096

    def __init__(self, client: RegistryClient, ttl: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str, bool], tuple[float, ResolvedSource]] = OrderedDict()
        self._inflight: dict[tuple[str, str, bool], asyncio.Future[ResolvedSource]] = {}

    async def resolve(self, ref: ImageRef, platform: Platform, *, platform_given: bool) -> ResolvedSource:
        key = (str(ref), str(platform), platform_given)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock():
            self._cache.move_to_end(key)
            return hit[1]
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(resolve_source(self._client, ref, platform, platform_given=platform_given))
            self._inflight[key] = pending
            pending.add_done_callback(lambda f: self._settle(key, f))
        return await asyncio.shield(pending)

    def _settle(self, key: tuple[str, str, bool], future: asyncio.Future[ResolvedSource]) -> None:
        self._inflight.pop(key, None)
        if future.cancelled() or future.exception() is not None or not self._ttl:
            return
        self._cache[key] = (self._clock() + self._ttl, future.result())
        self._cache.move_to_end(key)
        while len(self._cache) > self.MAX_ENTRIES:
            self._cache.popitem(last=False)


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


async def fetch_pinned(
    client: RegistryClient, record: pb.ContainerRecord, cache: ContentCache | None = None, ttl: float = 3600
) -> UpstreamImage:
    """The exact upstream bytes a record pinned (every digest verified)."""
    ref = ImageRef.parse(record.container_image)
    manifest = await _cached_manifest(client, ref, record.source_manifest_digest, cache, ttl)
    index: Blob | None = None
    if record.source_digest != record.source_manifest_digest:
        index = _to_blob(await _cached_manifest(client, ref, record.source_digest, cache, ttl))
    image_manifest = _image_manifest(ref, manifest)
    config_digest = image_manifest.config.digest
    key = f"upstream:{ref.registry}/{ref.repository}@{config_digest}"
    config = await cache.get(key) if cache is not None else None
    if config is None or Digest.of(config) != config_digest:
        config = await _fetch_config(client, ref, image_manifest)
        if cache is not None:
            await cache.put(key, config, ttl)
    return UpstreamImage(_to_blob(manifest), config, index)


EPOCH = "1970-01-01T00:00:00Z"


def history_created(config: ImageConfig) -> str:
    """The time injected layers' history entries carry: the source config's own ``created``.

    Taken from the request rather than the clock, so one request always gives the same
    config and manifest digests (a freeze asked twice pushes nothing new).
    """
    value = config.document.get("created")
    return value if isinstance(value, str) and value else EPOCH


def augmentation_from_record(record: pb.ContainerRecord) -> Augmentation:
    cfg = record.container_config
    return Augmentation(
        layers=tuple(
            InjectedLayer(Digest.parse(layer.gzip_digest), layer.gzip_size, Digest.parse(layer.tar_digest))
            for layer in cfg.layers
        ),
        platform=Platform.parse(record.container_platform),
        created=record.history_created or record.create_time.ToJsonString(),
        entrypoint=tuple(cfg.entrypoint),
        cmd=tuple(cfg.cmd),
        env=tuple(cfg.env),
        working_dir=cfg.working_dir,
    )
