"""Open the configured stores from their URLs: the one place that knows every store class."""

from __future__ import annotations

from pathlib import Path

from wave_grpc.config import Config
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.layers import FileLayerReader, FileLayerStore, LayerReader, LayerStore
from wave_grpc.stores.limits import LocalRateLimiter, RateLimiter
from wave_grpc.stores.oci import RegistryLayerReader, RegistryLayerStore, parse_store_url
from wave_grpc.stores.redis import RedisRateLimiter, RedisTokenStore, redis_client
from wave_grpc.stores.sqlite import SqliteTokenStore
from wave_grpc.stores.tokens import TokenStore


def open_token_store(url: str) -> TokenStore:
    if url.startswith("sqlite:"):
        return SqliteTokenStore.from_url(url)
    if url.startswith(("redis://", "rediss://")):
        return RedisTokenStore.from_url(url)
    raise ValueError(f"token store {url!r}: use sqlite:///path or redis://host:port/db")


def open_layer_store(config: Config, upstream: RegistryClient) -> LayerStore:
    """The configured layer store; an oci:// store talks through ``upstream`` (its route holds any credentials)."""
    if config.layers.store.startswith("oci://"):
        registry, repository = parse_store_url(config.layers.store)
        staging = FileLayerStore(
            Path(config.layers.staging), config.layers.limits, verify_workers=config.layers.verify_workers
        )
        return RegistryLayerStore(
            upstream, registry, repository, staging, gc_grace=config.layers.gc_grace.total_seconds()
        )
    return FileLayerStore(config.layers.file_root, config.layers.limits, verify_workers=config.layers.verify_workers)


def open_layer_reader(config: Config, upstream: RegistryClient) -> LayerReader:
    """The configured layer store, read side only: what a gateway worker serves blobs from.

    It makes no directories, starts no threads and scans nothing (the writer does, in the service).
    """
    if config.layers.store.startswith("oci://"):
        registry, repository = parse_store_url(config.layers.store)
        return RegistryLayerReader(upstream, registry, repository)
    return FileLayerReader(config.layers.file_root)


def open_rate_limiter(redis_url: str) -> RateLimiter:
    """Shared through Redis when the deployment has one (``redis_url``), else this process's own."""
    if redis_url.startswith(("redis://", "rediss://")):
        client, prefix = redis_client(redis_url)
        return RedisRateLimiter(client, prefix)
    return LocalRateLimiter()
