"""Shared state on Redis: the token store and the caches replicas share.

Every key is written with its expiry in the same command (``SET ... EX``), so
nothing outlives the token it belongs to and the keyspace cannot grow without
bound. Keys carry a prefix so one Redis can serve several deployments.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wave_grpc.errors import Errors, WaveError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.stores.tokens import expiry_seconds

DEFAULT_PREFIX = "wave-grpc:"


def redis_client(url: str) -> tuple[aioredis.Redis, str]:
    """A client for ``redis://host:port/db[?prefix=name:]``, and the key prefix."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[0]
    clean = parts._replace(query="&".join(f"{k}={v[0]}" for k, v in query.items())).geturl()
    client = aioredis.Redis.from_url(clean, decode_responses=False, health_check_interval=30)
    return client, prefix


def safe_url(url: str) -> str:
    """A store URL fit for messages and logs: no user or password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc, query="").geturl()


@contextlib.asynccontextmanager
async def _answering(url: str) -> AsyncIterator[None]:
    """A Redis that is down is UNAVAILABLE naming the config key, not an internal error."""
    try:
        yield
    except RedisError as exc:
        raise WaveError(
            Errors.SERVICE_UNAVAILABLE,
            f"the token store {safe_url(url)} ([service].store) is not answering ({type(exc).__name__}); "
            "retry later, and check that Redis is running",
        ) from None


def _seconds_left(expires_at: float) -> int:
    return max(1, int(expires_at - time.time() + 0.999))


class RedisTokenStore:
    """Token records as ``<prefix>token:<token>``, expiring with the token.

    Revocation deletes the record; every service replica reads the same key,
    so the next lookup anywhere answers "unknown".
    """

    def __init__(self, client: aioredis.Redis, prefix: str = DEFAULT_PREFIX, url: str = "redis://") -> None:
        self._redis = client
        self._prefix = prefix
        self._url = url

    @classmethod
    def from_url(cls, url: str) -> RedisTokenStore:
        client, prefix = redis_client(url)
        return cls(client, prefix, url)

    async def ping(self) -> None:
        async with _answering(self._url):
            await self._redis.ping()

    def _key(self, token: str) -> str:
        return f"{self._prefix}token:{token}"

    def _request_key(self, request_id: str) -> str:
        return f"{self._prefix}request:{request_id}"

    async def put(self, record: pb.ContainerRecord) -> bool:
        async with _answering(self._url):
            ttl = _seconds_left(expiry_seconds(record))
            created = await self._redis.set(
                self._key(record.container_token), record.SerializeToString(), ex=ttl, nx=True
            )
            if created and record.request_id:
                # The request id -> token index expires with the record (same TTL, in its own write).
                await self._redis.set(self._request_key(record.request_id), record.container_token.encode(), ex=ttl)
            return bool(created)

    async def get_by_request_id(self, request_id: str) -> pb.ContainerRecord | None:
        if not request_id:
            return None
        async with _answering(self._url):
            token = await self._redis.get(self._request_key(request_id))
        if not isinstance(token, bytes):
            return None
        # Through the token's own key: a revoked (deleted) or expired record answers None.
        record = await self.get(token.decode())
        return record if record is not None and record.request_id == request_id else None

    async def get(self, token: str) -> pb.ContainerRecord | None:
        async with _answering(self._url):
            data = await self._redis.get(self._key(token))
            if not isinstance(data, bytes):
                return None
            record = pb.ContainerRecord.FromString(data)
            # Redis expires keys at whole seconds; never answer a record past its expiry.
            if expiry_seconds(record) <= time.time():
                return None
            return record

    async def revoke(self, token: str) -> bool:
        async with _answering(self._url):
            return bool(await self._redis.delete(self._key(token)))

    async def close(self) -> None:
        await self._redis.aclose()


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
