"""Open the configured stores from their URLs: the one place that knows every store class."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from wave_grpc.config import Config
from wave_grpc.metrics import Metrics
from wave_grpc.registry.client import RegistryClient
from wave_grpc.store_urls import StoreRole, StoreUrl, serves
from wave_grpc.stores.blobcache import SiteCache
from wave_grpc.stores.cachestores import CacheStore, FileCacheStore, RegistryCacheStore
from wave_grpc.stores.layers import FileLayerReader, FileLayerStore, LayerReader, LayerStore
from wave_grpc.stores.limits import LocalRateLimiter, RateLimiter
from wave_grpc.stores.oci import RegistryLayerReader, RegistryLayerStore
from wave_grpc.stores.redis import RedisRateLimiter, RedisTokenStore, redis_client
from wave_grpc.stores.sqlite import SqliteTokenStore
from wave_grpc.stores.tokens import TokenStore

# Each scheme of the table in store_urls that may hold tokens, and its store.
_TOKEN_STORES: dict[str, Callable[[str], TokenStore]] = {
    "sqlite": SqliteTokenStore.from_url,
    "redis": RedisTokenStore.from_url,
    "rediss": RedisTokenStore.from_url,
}


def open_token_store(url: str) -> TokenStore:
    try:
        scheme = StoreUrl.parse(url, StoreRole.TOKENS).scheme
    except ValueError:
        raise ValueError(f"token store {url!r}: use sqlite:///path or redis://host:port/db") from None
    return _TOKEN_STORES[scheme](url)


def open_layer_store(config: Config, upstream: RegistryClient) -> LayerStore:
    """The configured layer store; an oci:// store talks through ``upstream`` (its route holds any credentials)."""
    store = config.layers.store_url
    if store.scheme == "oci":
        staging = FileLayerStore(
            Path(config.layers.staging),
            config.layers.limits,
            verify_workers=config.layers.verify_workers,
            name=f"the layer staging directory ([layers].staging = {config.layers.staging})",
        )
        return RegistryLayerStore(
            upstream, store.registry, store.repository, staging, gc_grace=config.layers.gc_grace.total_seconds()
        )
    return FileLayerStore(config.layers.file_root, config.layers.limits, verify_workers=config.layers.verify_workers)


def open_layer_reader(config: Config, upstream: RegistryClient) -> LayerReader:
    """The configured layer store, read side only: what a gateway worker serves blobs from.

    It makes no directories, starts no threads and scans nothing (the writer does, in the service).
    """
    store = config.layers.store_url
    if store.scheme == "oci":
        return RegistryLayerReader(upstream, store.registry, store.repository)
    return FileLayerReader(config.layers.file_root)


def open_cache_store(config: Config, upstream: RegistryClient) -> CacheStore:
    """Where ``[cache]`` keeps blobs (an oci:// store talks through ``upstream``, like the layer store)."""
    store = config.cache.store_url
    if store.scheme == "oci":
        return RegistryCacheStore(upstream, store.registry, store.repository)
    return FileCacheStore(config.cache.file_root)


def open_site_cache(config: Config, upstream: RegistryClient, metrics: Metrics | None = None) -> SiteCache | None:
    """The site cache, installed on ``upstream``; None (nothing installed) when no route has ``blobs = "cache"``."""
    if not any(route.blobs == "cache" for route in config.registries):
        return None
    site = SiteCache(open_cache_store(config, upstream), config.cache.staging_dir, metrics)
    upstream.use_site_cache(site)
    return site


def open_rate_limiter(redis_url: str) -> RateLimiter:
    """Shared through Redis when the deployment has one (``redis_url``), else this process's own."""
    if serves(redis_url, StoreRole.SHARED_CACHE):
        client, prefix = redis_client(redis_url)
        return RedisRateLimiter(client, prefix)
    return LocalRateLimiter()
