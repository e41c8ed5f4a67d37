"""The content cache: bytes by key, each entry with an expiry.

Content addressed by digest never changes, so it can be cached without
invalidation; only memory bounds it. The shared tier (Redis, in
wave_grpc/stores/redis.py) lets a replica that has never seen a token serve it
without asking the upstream again, and gives every entry an expiry in the same
write.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

from wave_grpc.metrics import Metrics


class ContentCache(Protocol):
    """A byte cache with per-entry expiry. Pinned upstream bytes are cached by digest: content that never changes."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None: ...


class LocalContentCache:
    """An LRU bounded by total bytes; ``ttl_seconds`` is ignored because the
    keys it is used for name immutable content (digests)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        if len(value) > self._max_bytes // 4:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        self._entries[key] = value
        self._bytes += len(value)
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)


class TieredContentCache:
    """Local first, then shared; a shared hit is copied into the local tier."""

    def __init__(self, local: ContentCache, shared: ContentCache | None) -> None:
        self._local = local
        self._shared = shared

    async def get(self, key: str) -> bytes | None:
        value = await self._local.get(key)
        if value is None and self._shared is not None:
            value = await self._shared.get(key)
            if value is not None:
                await self._local.put(key, value, 0)
        return value

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self._local.put(key, value, ttl_seconds)
        if self._shared is not None:
            await self._shared.put(key, value, ttl_seconds)


class CountedCache:
    """A cache tier whose lookups are counted in wave_grpc_cache_requests_total{cache=name}."""

    def __init__(self, inner: ContentCache, metrics: Metrics, name: str) -> None:
        self._inner = inner
        self._hits = metrics.cache_requests.labels(name, "hit")
        self._misses = metrics.cache_requests.labels(name, "miss")

    async def get(self, key: str) -> bytes | None:
        value = await self._inner.get(key)
        (self._misses if value is None else self._hits).inc()
        return value

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self._inner.put(key, value, ttl_seconds)
