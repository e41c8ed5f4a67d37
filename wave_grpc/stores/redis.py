"""Shared state on Redis: the token store and the caches replicas share.

Every key is written with its expiry in the same command (``SET ... EX``), so
nothing outlives the token it belongs to and the keyspace cannot grow without
bound. Keys carry a prefix so one Redis can serve several deployments.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from wave_grpc.errors import Errors, WaveError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import expiry_seconds, record_listing_key, set_expiry

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

    def _listing_key(self, listing: str) -> str:
        return f"{self._prefix}listing:{listing}"

    def _fingerprint_key(self, fingerprint: str) -> str:
        return f"{self._prefix}fingerprint:{fingerprint}"

    async def put(self, record: pb.ContainerRecord) -> bool:
        async with _answering(self._url):
            expires_at = expiry_seconds(record)
            ttl = _seconds_left(expires_at)
            created = await self._redis.set(
                self._key(record.container_token), record.SerializeToString(), ex=ttl, nx=True
            )
            if created and record.request_id:
                # The request id -> token index expires with the record (same TTL, in its own write).
                await self._redis.set(self._request_key(record.request_id), record.container_token.encode(), ex=ttl)
            if created and record.request_fingerprint:
                # Same request, same name: the fingerprint -> token index, expiring with the record.
                fingerprint = self._fingerprint_key(record.request_fingerprint)
                await self._redis.set(fingerprint, record.container_token.encode(), ex=ttl)
            if created:
                # The listing: a sorted set by expiry, pruned of the expired on every write,
                # that itself expires with its last token (EXPIRE ... GT only ever extends it).
                listing = self._listing_key(record_listing_key(record))
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.zadd(listing, {record.container_token: expires_at})
                    pipe.zremrangebyscore(listing, "-inf", time.time())
                    pipe.expire(listing, ttl, nx=True)
                    pipe.expire(listing, ttl, gt=True)
                    await pipe.execute()
            return bool(created)

    async def listed(self, listing: str, offset: int, limit: int) -> list[pb.ContainerRecord]:
        async with _answering(self._url):
            found = await self._redis.zrangebyscore(
                self._listing_key(listing), time.time(), "+inf", start=offset, num=limit
            )
            tokens = [token for token in found if isinstance(token, bytes)]
            if not tokens:
                return []
            values = await self._redis.mget([self._key(t.decode()) for t in tokens])
        records = []
        for data in values:
            if isinstance(data, bytes):  # a revoked token's record is gone
                record = pb.ContainerRecord.FromString(data)
                if expiry_seconds(record) > time.time():
                    records.append(record)
        return records

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

    async def get_by_fingerprint(self, fingerprint: str) -> pb.ContainerRecord | None:
        if not fingerprint:
            return None
        async with _answering(self._url):
            token = await self._redis.get(self._fingerprint_key(fingerprint))
        if not isinstance(token, bytes):
            return None
        record = await self.get(token.decode())
        return record if record is not None and record.request_fingerprint == fingerprint else None

    async def renew(self, token: str, expires_at: float) -> pb.ContainerRecord | None:
        record = await self.get(token)
        if record is None:
            return None
        set_expiry(record, expires_at)
        ttl = _seconds_left(expires_at)
        async with _answering(self._url):
            # XX: a record revoked meanwhile stays gone.
            if not await self._redis.set(self._key(token), record.SerializeToString(), ex=ttl, xx=True):
                return None
            # Every index moves with the record, in one transaction.
            async with self._redis.pipeline(transaction=True) as pipe:
                if record.request_id:
                    pipe.expire(self._request_key(record.request_id), ttl)
                listing = self._listing_key(record_listing_key(record))
                pipe.zadd(listing, {token: expires_at}, xx=True)
                pipe.expire(listing, ttl, gt=True)
                if record.request_fingerprint:
                    # A renewed token is what its request answers from now on.
                    pipe.set(self._fingerprint_key(record.request_fingerprint), token.encode(), ex=ttl)
                await pipe.execute()
        return record

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

    async def live_records(self) -> AsyncIterator[pb.ContainerRecord]:
        cursor = 0
        while True:
            async with _answering(self._url):
                cursor, keys = await self._redis.scan(cursor, match=f"{self._prefix}token:*", count=1000)
                values = await self._redis.mget(keys) if keys else []
            for data in values:
                if isinstance(data, bytes):
                    record = pb.ContainerRecord.FromString(data)
                    if expiry_seconds(record) > time.time():
                        yield record
            if not cursor:
                return

    async def lock(self, name: str, ttl: float) -> str | None:
        """A lock every replica sees (``SET NX EX``): its holder's id, or None when taken."""
        holder = uuid.uuid4().hex
        async with _answering(self._url):
            taken = await self._redis.set(f"{self._prefix}lock:{name}", holder, ex=max(1, int(ttl)), nx=True)
        return holder if taken else None

    async def unlock(self, name: str, holder: str) -> None:
        key = f"{self._prefix}lock:{name}"
        async with _answering(self._url):
            if await self._redis.get(key) == holder.encode():
                await self._redis.delete(key)

    async def update(self, record: pb.ContainerRecord) -> bool:
        async with _answering(self._url):
            # XX: only a key that still exists (not revoked, not expired); KEEPTTL: same expiry.
            replaced = await self._redis.set(
                self._key(record.container_token), record.SerializeToString(), xx=True, keepttl=True
            )
        return bool(replaced)

    async def revoke(self, token: str) -> bool:
        record = await self.get(token)
        async with _answering(self._url):
            if record is not None:
                await self._redis.zrem(self._listing_key(record_listing_key(record)), token)
                fingerprint = self._fingerprint_key(record.request_fingerprint)
                if record.request_fingerprint and await self._redis.get(fingerprint) == token.encode():
                    await self._redis.delete(fingerprint)
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


class RedisRateLimiter:
    """Fixed one-minute windows shared by every replica: ``INCR`` and the key's expiry in one transaction."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    async def hit(self, key: str, limit: int, window: float = 60.0) -> float | None:
        now = time.time()
        start = int(now // window)
        name = f"{self._prefix}limit:{key}:{start}"
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, int(window) + 1)
                count, _ = await pipe.execute()
        except RedisError:
            return None  # a limiter that cannot count lets requests through rather than failing them
        return (start + 1) * window - now if int(count) > limit else None
