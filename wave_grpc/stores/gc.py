"""Layer garbage collection: mark what live tokens reference, sweep what nothing marked for gc_grace.
The site cache's eviction (least recently used past [cache].max_size) runs beside it.

The same routine runs in the service every ``[layers].gc_interval`` and in
``wave-grpc gc``. A lock every replica sees (the token store's: Redis ``SET NX
EX``, or a file lock beside the SQLite database) makes sure one collects at a
time; each layer store also holds its own lock against a second collector on
the same machine. Why a layer that
a concurrent creation is about to reference is never removed is explained in
each store (wave_grpc/stores/layers.py, wave_grpc/stores/oci.py).
"""

from __future__ import annotations

import logging

from wave_grpc.config import Config
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import ImageManifest, manifest_media_type
from wave_grpc.record import TokenRecord
from wave_grpc.registry.client import MAX_MANIFEST_BYTES
from wave_grpc.stores.blobcache import SiteCache
from wave_grpc.stores.cachestores import sweep_partial
from wave_grpc.stores.layers import STORE_SCHEME, Collection, LayerStore
from wave_grpc.stores.tokens import TokenStore

log = logging.getLogger(__name__)

LOCK_NAME = "layer-gc"
CACHE_LOCK_NAME = "cache-gc"


async def referenced_layers(tokens: TokenStore) -> set[Digest]:
    """The stored layers that live tokens reference."""
    referenced: set[Digest] = set()
    async for record in tokens.live_records():
        for layer in record.container_config.layers:
            if layer.location.startswith(STORE_SCHEME):
                referenced.add(Digest.parse(layer.location[len(STORE_SCHEME) :]))
    return referenced


async def collect_layers(
    tokens: TokenStore, layers: LayerStore, grace: float, *, dry_run: bool = False, lock_ttl: float = 3600.0
) -> Collection | None:
    """One collection; None when another collector is at work."""
    holder = await tokens.lock(LOCK_NAME, lock_ttl)
    if holder is None:
        return None
    try:
        return await layers.collect(await referenced_layers(tokens), grace, dry_run=dry_run)
    finally:
        await tokens.unlock(LOCK_NAME, holder)


async def cache_referenced(tokens: TokenStore, config: Config, site: SiteCache) -> dict[Digest, float]:
    """What live tokens of ``blobs = "cache"`` routes need from the site cache: their pinned
    index and manifests, and each manifest's config and layers (read from the cache itself),
    each with the latest expiry (epoch seconds) of the tokens needing it."""
    referenced: dict[Digest, float] = {}

    def needed(digest: Digest, until: float) -> None:
        referenced[digest] = max(until, referenced.get(digest, until))

    async for message in tokens.live_records():
        record = TokenRecord.of(message)
        sources = [record.source, *record.includes]
        if not any(_cached_route(config, ref.registry) for ref in sources):
            continue
        manifests = [Digest.parse(record.index_digest)] if record.index_digest else []
        for target in record.platforms:
            manifests.append(Digest.parse(target.source_manifest_digest))
            manifests.extend(Digest.parse(d) for d in target.include_manifest_digests)
        for digest in manifests:
            needed(digest, record.expires_at)
            data = await site.stored(digest, MAX_MANIFEST_BYTES)
            if data is None:
                continue
            media_type = manifest_media_type(data, None, f"cached manifest {digest}")
            if media_type.is_image_manifest:
                manifest = ImageManifest.parse(data, media_type, f"cached manifest {digest}")
                for blob in (manifest.config, *manifest.layers):
                    needed(blob.digest, record.expires_at)
    return referenced


def _cached_route(config: Config, registry: str) -> bool:
    route = config.route_for(registry)
    return route is not None and route.blobs == "cache"


async def evict_cache(
    tokens: TokenStore, config: Config, site: SiteCache, *, dry_run: bool = False
) -> Collection | None:
    """Keep the site cache under ``[cache].max_size``, least recently used first, never
    evicting what a live token needs, or needed when it expired less than ``[layers].gc_grace``
    ago (as a layer stays for gc_grace after its last reference); None when another collector
    is at work."""
    holder = await tokens.lock(CACHE_LOCK_NAME, 3600.0)
    if holder is None:
        return None
    grace = config.layers.gc_grace.total_seconds()
    try:
        referenced = await cache_referenced(tokens, config, site)
        keep = await site.store.protect(referenced, grace, dry_run=dry_run)
        sweep_partial(config.cache.staging_dir, grace)
        return await site.store.evict(config.cache.max_size, keep, dry_run=dry_run)
    finally:
        await tokens.unlock(CACHE_LOCK_NAME, holder)
