"""Token records behind a small interface; SQLite is the embedded default.

A record is the serialized ``ContainerRecord`` message: the store needs to
understand only the token, the request id, the owner and the expiry.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb


def expiry_seconds(record: pb.ContainerRecord) -> float:
    return record.expiration.seconds + record.expiration.nanos / 1e9


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

    async def revoke(self, token: str) -> bool: ...

    async def close(self) -> None: ...


class SqliteTokenStore:
    """One file, WAL mode; calls run in a worker thread, serialised by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS containers ("
                " token TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL,"
                " revoked INTEGER NOT NULL DEFAULT 0, record BLOB NOT NULL, request_id TEXT)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS containers_expiry ON containers (expires_at)")
            self._db.execute("CREATE INDEX IF NOT EXISTS containers_request_id ON containers (request_id)")

    @classmethod
    def from_url(cls, url: str) -> SqliteTokenStore:
        # SQLAlchemy form: sqlite:///relative/path or sqlite:////absolute/path
        if not url.startswith("sqlite:///"):
            raise ValueError(f"{url!r} is not a sqlite:/// URL")
        return cls(Path(url[len("sqlite:///") :]))

    def _put(self, record: pb.ContainerRecord) -> bool:
        now = time.time()
        with self._lock:
            # Expired rows are dead weight; drop a few on each write so the table stays bounded.
            self._db.execute(
                "DELETE FROM containers WHERE token IN (SELECT token FROM containers WHERE expires_at < ? LIMIT 100)",
                (now,),
            )
            try:
                self._db.execute(
                    "INSERT INTO containers (token, owner, expires_at, record, request_id) VALUES (?, ?, ?, ?, ?)",
                    (
                        record.container_token,
                        record.owner,
                        expiry_seconds(record),
                        record.SerializeToString(),
                        record.request_id or None,
                    ),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def _get(self, token: str) -> pb.ContainerRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM containers WHERE token = ? AND revoked = 0 AND expires_at > ?",
                (token, time.time()),
            ).fetchone()
        if row is None:
            return None
        return pb.ContainerRecord.FromString(row[0])

    def _get_by_request_id(self, request_id: str) -> pb.ContainerRecord | None:
        if not request_id:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM containers WHERE request_id = ? AND revoked = 0 AND expires_at > ?",
                (request_id, time.time()),
            ).fetchone()
        if row is None:
            return None
        return pb.ContainerRecord.FromString(row[0])

    def _revoke(self, token: str) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "UPDATE containers SET revoked = 1 WHERE token = ? AND revoked = 0 AND expires_at > ?",
                (token, time.time()),
            )
        return cursor.rowcount > 0

    async def put(self, record: pb.ContainerRecord) -> bool:
        return await asyncio.to_thread(self._put, record)

    async def get(self, token: str) -> pb.ContainerRecord | None:
        return await asyncio.to_thread(self._get, token)

    async def get_by_request_id(self, request_id: str) -> pb.ContainerRecord | None:
        return await asyncio.to_thread(self._get_by_request_id, request_id)

    async def revoke(self, token: str) -> bool:
        return await asyncio.to_thread(self._revoke, token)

    async def close(self) -> None:
        with self._lock:
            self._db.close()


def open_token_store(url: str) -> TokenStore:
    if url.startswith("sqlite:"):
        return SqliteTokenStore.from_url(url)
    if url.startswith(("redis://", "rediss://")):
        # Imported here: redisstore imports this module (expiry_seconds).
        from wave_grpc.redisstore import RedisTokenStore

        return RedisTokenStore.from_url(url)
    raise ValueError(f"token store {url!r}: only sqlite:/// is supported in this build")
