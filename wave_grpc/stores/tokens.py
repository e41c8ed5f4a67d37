"""Token records behind a small interface; SQLite is the embedded default.

A record is the serialized ``ContainerRecord`` message: the store needs to
understand only the token, the request id, the owner, the request fingerprint and the expiry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

# Locks named with this prefix are taken once per piece of work (a freeze), not reused.
EPHEMERAL_LOCK_PREFIX = "once-"


class TokenStore(Protocol):
    """Where token records live. Every method is safe to call from many replicas.

    A record is live from ``put`` until its ``expiration`` or ``revoke``; the
    lookups answer live records only. Both lookups must survive a restart.
    """

    async def put(self, record: pb.ContainerRecord) -> bool:
        """Store a new record; False when the token is taken (the caller picks another)."""
        ...

    async def get(self, token: str) -> pb.ContainerRecord | None:
        """The live record, or None when unknown, expired or revoked."""
        ...

    async def get_by_request_id(self, request_id: str) -> pb.ContainerRecord | None:
        """The live record ``put`` with this ``request_id`` (unique per record), or None.

        Wave's ``/v1alpha2/container/{requestId}/status`` is served from this.
        A store keeps an index from request id to token that expires (or is
        dropped) with the record.
        """
        ...

    async def update(self, record: pb.ContainerRecord) -> bool:
        """Replace a live record (same token, same expiry; a freeze's progress); False when it is gone."""
        ...

    async def revoke(self, token: str) -> bool:
        """End a live record and drop its indexes (request id, listing, fingerprint); False when it is gone."""
        ...

    async def get_by_fingerprint(self, fingerprint: str) -> pb.ContainerRecord | None:
        """The live record ``put`` (or renewed last) with this ``request_fingerprint``, or None.

        An identical creation by the same caller answers this record instead of a new one.
        The index expires with the record, and a revoked record is never answered.
        """
        ...

    async def renew(self, token: str, expires_at: float) -> pb.ContainerRecord | None:
        """Move a live record's expiry to ``expires_at`` (epoch seconds), the record and every
        index of it alike; the renewed record, or None when it is gone.

        A renewed record is what its fingerprint answers from then on.
        """
        ...

    async def listed(self, listing: str, offset: int, limit: int) -> list[pb.ContainerRecord]:
        """Live records whose :func:`wave_grpc.record.record_listing_key` is ``listing``, soonest to expire first."""
        ...

    def live_records(self) -> AsyncIterator[pb.ContainerRecord]:
        """Every live record (garbage collection marks the layers they reference)."""
        ...

    async def lock(self, name: str, ttl: float) -> str | None:
        """A lock every replica of this deployment sees: its holder's id, or None when taken.

        It lapses after ``ttl`` seconds if its holder dies; :meth:`unlock` releases it.
        """
        ...

    async def unlock(self, name: str, holder: str) -> None: ...

    async def ping(self) -> None:
        """Raise unless the store answers (``/readyz``); a store that is down raises SERVICE_UNAVAILABLE."""
        ...

    async def close(self) -> None: ...
