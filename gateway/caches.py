"""Caches the gateway keeps in front of the upstream registry and Redis.

Content addressed by digest never changes, so it can be cached without
invalidation; only memory bounds it. The shared tier (Redis) lets a replica
that has never seen a token serve it without asking the upstream again, and
gives every entry an expiry in the same write.
"""

from __future__ import annotations

import base64
import json
from collections import OrderedDict

import redis.asyncio as aioredis

from gateway.rewrite import AugmentedImage, Blob, InjectedLayer
from wave_grpc.digest import Digest
from wave_grpc.source import ContentCache


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


class RedisContentCache:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(self._prefix + key)
        # The client is made with decode_responses=False: values are bytes.
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        await self._redis.set(self._prefix + key, value, ex=max(1, int(ttl_seconds)))


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


def _blob_json(blob: Blob | None) -> list[str] | None:
    return None if blob is None else [blob.media_type, base64.b64encode(blob.data).decode()]


def _blob_from(value: list[str] | None) -> Blob | None:
    return None if value is None else Blob.of(base64.b64decode(value[1]), value[0])


def encode_augmented(image: AugmentedImage) -> bytes:
    return json.dumps(
        {"manifest": _blob_json(image.manifest), "config": _blob_json(image.config), "index": _blob_json(image.index)}
    ).encode()


def decode_augmented(data: bytes, injected: tuple[InjectedLayer, ...]) -> AugmentedImage:
    """Rebuild from the cached bytes; base layers are the manifest's layers that were not injected."""
    doc = json.loads(data)
    manifest = _blob_from(doc["manifest"])
    config = _blob_from(doc["config"])
    if manifest is None or config is None:
        raise ValueError("cached augmented image lacks its manifest or config")
    injected_digests = {layer.digest for layer in injected}
    layers = json.loads(manifest.data)["layers"]
    base = frozenset(Digest.parse(layer["digest"]) for layer in layers) - injected_digests
    return AugmentedImage(manifest, config, _blob_from(doc["index"]), base, injected)
