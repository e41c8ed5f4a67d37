"""The SQLite token store: the embedded default, one file in WAL mode.

Calls run on the connection's own thread, those waiting at once in one transaction
(wave_grpc/stores/sqlitebatch.py): concurrent creations cost one hand-off per batch, not per statement.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from wave_grpc.errors import disk_full, store_full
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import expiry_seconds, record_listing_key, set_expiry
from wave_grpc.stores.sqlitebatch import BatchedConnection
from wave_grpc.stores.tokens import EPHEMERAL_LOCK_PREFIX


class SqliteTokenStore:
    """One file, WAL mode; calls run on one thread, batched (see the module doc), serialised by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._locks: dict[str, BinaryIO] = {}
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # Reentrant: a batch holds it around the calls it runs, and each call takes it too.
        self._lock = threading.RLock()
        self._batches = BatchedConnection(self._db, self._lock, name=f"sqlite {path.name}")
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
            # Added for ListContainers; a database from before has rows without it (never listed).
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(containers)")}
            if "listing" not in columns:
                self._db.execute("ALTER TABLE containers ADD COLUMN listing TEXT")
            self._db.execute("CREATE INDEX IF NOT EXISTS containers_listing ON containers (listing, expires_at)")
            # Added for "same request, same name"; rows from before have none (never matched).
            if "fingerprint" not in columns:
                self._db.execute("ALTER TABLE containers ADD COLUMN fingerprint TEXT")
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS containers_fingerprint ON containers (fingerprint, expires_at)"
            )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The lock, for a write; a full disk is named with its key (SQLite rolled the write back)."""
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                    raise
                raise store_full(f"the token store ([service].store = sqlite:///{self._path})") from None
            except OSError as exc:
                if not disk_full(exc):
                    raise
                raise store_full(f"the token store ([service].store = sqlite:///{self._path})") from None

    @classmethod
    def from_url(cls, url: str) -> SqliteTokenStore:
        # SQLAlchemy form: sqlite:///relative/path or sqlite:////absolute/path
        if not url.startswith("sqlite:///"):
            raise ValueError(f"{url!r} is not a sqlite:/// URL")
        return cls(Path(url[len("sqlite:///") :]))

    def _put(self, record: pb.ContainerRecord) -> bool:
        now = time.time()
        with self._writing():
            # Expired rows are dead weight; drop a few on each write so the table stays bounded.
            self._db.execute(
                "DELETE FROM containers WHERE token IN (SELECT token FROM containers WHERE expires_at < ? LIMIT 100)",
                (now,),
            )
            try:
                self._db.execute(
                    "INSERT INTO containers (token, owner, expires_at, record, request_id, listing, fingerprint)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.container_token,
                        record.owner,
                        expiry_seconds(record),
                        record.SerializeToString(),
                        record.request_id or None,
                        record_listing_key(record),
                        record.request_fingerprint or None,
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
        with self._writing():
            cursor = self._db.execute(
                "UPDATE containers SET revoked = 1, fingerprint = NULL"
                " WHERE token = ? AND revoked = 0 AND expires_at > ?",
                (token, time.time()),
            )
        return cursor.rowcount > 0

    async def put(self, record: pb.ContainerRecord) -> bool:
        return await self._batches.run(functools.partial(self._put, record))

    def _update(self, record: pb.ContainerRecord) -> bool:
        with self._writing():
            cursor = self._db.execute(
                "UPDATE containers SET record = ? WHERE token = ? AND revoked = 0 AND expires_at > ?",
                (record.SerializeToString(), record.container_token, time.time()),
            )
        return cursor.rowcount > 0

    async def update(self, record: pb.ContainerRecord) -> bool:
        return await self._batches.run(functools.partial(self._update, record))

    def _get_by_fingerprint(self, fingerprint: str) -> pb.ContainerRecord | None:
        with self._lock:
            # Two identical creations at once may both have stored a record: the one living longest answers.
            row = self._db.execute(
                "SELECT record FROM containers WHERE fingerprint = ? AND revoked = 0 AND expires_at > ?"
                " ORDER BY expires_at DESC, token LIMIT 1",
                (fingerprint, time.time()),
            ).fetchone()
        return None if row is None else pb.ContainerRecord.FromString(row[0])

    async def get_by_fingerprint(self, fingerprint: str) -> pb.ContainerRecord | None:
        if not fingerprint:
            return None
        return await self._batches.run(functools.partial(self._get_by_fingerprint, fingerprint))

    def _renew(self, token: str, expires_at: float) -> pb.ContainerRecord | None:
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM containers WHERE token = ? AND revoked = 0 AND expires_at > ?", (token, now)
            ).fetchone()
            if row is None:
                return None
            record = pb.ContainerRecord.FromString(row[0])
            set_expiry(record, expires_at)
            # The expiry column is every index's expiry here (request id, listing, fingerprint).
            self._db.execute(
                "UPDATE containers SET record = ?, expires_at = ? WHERE token = ? AND revoked = 0",
                (record.SerializeToString(), expiry_seconds(record), token),
            )
        return record

    async def renew(self, token: str, expires_at: float) -> pb.ContainerRecord | None:
        return await self._batches.run(functools.partial(self._renew, token, expires_at))

    async def get(self, token: str) -> pb.ContainerRecord | None:
        return await self._batches.run(functools.partial(self._get, token))

    async def get_by_request_id(self, request_id: str) -> pb.ContainerRecord | None:
        return await self._batches.run(functools.partial(self._get_by_request_id, request_id))

    def _list(self, listing: str, offset: int, limit: int) -> list[pb.ContainerRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM containers WHERE listing = ? AND revoked = 0 AND expires_at > ?"
                " ORDER BY expires_at, token LIMIT ? OFFSET ?",
                (listing, time.time(), limit, offset),
            ).fetchall()
        return [pb.ContainerRecord.FromString(row[0]) for row in rows]

    async def listed(self, listing: str, offset: int, limit: int) -> list[pb.ContainerRecord]:
        return await self._batches.run(functools.partial(self._list, listing, offset, limit))

    def _live_page(self, after: str, limit: int) -> list[tuple[str, bytes]]:
        with self._lock:
            rows: list[tuple[str, bytes]] = self._db.execute(
                "SELECT token, record FROM containers WHERE token > ? AND revoked = 0 AND expires_at > ?"
                " ORDER BY token LIMIT ?",
                (after, time.time(), limit),
            ).fetchall()
        return rows

    async def live_records(self) -> AsyncIterator[pb.ContainerRecord]:
        after = ""
        while rows := await self._batches.run(functools.partial(self._live_page, after, 1000)):
            for _, data in rows:
                yield pb.ContainerRecord.FromString(data)
            after = rows[-1][0]

    async def lock(self, name: str, ttl: float) -> str | None:
        # Replicas of a SQLite deployment share one machine: a file lock beside the
        # database, released by the kernel if its holder dies (ttl is not needed).
        handle = (self._path.parent / f"{self._path.name}.{name}.lock").open("a+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        holder = uuid.uuid4().hex
        self._locks[holder] = handle
        return holder

    async def unlock(self, name: str, holder: str) -> None:
        handle = self._locks.pop(holder, None)
        if handle is not None:
            if name.startswith(EPHEMERAL_LOCK_PREFIX):
                # One file per freeze would pile up: removed while still held. A replica that
                # opened it just before takes a lock nobody else sees; callers re-read the
                # record under a lock, so the worst is a second look at finished work.
                (self._path.parent / f"{self._path.name}.{name}.lock").unlink(missing_ok=True)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def _ping(self) -> None:
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    async def ping(self) -> None:
        await self._batches.run(self._ping)

    async def revoke(self, token: str) -> bool:
        return await self._batches.run(functools.partial(self._revoke, token))

    async def close(self) -> None:
        await asyncio.to_thread(self._batches.close)
        with self._lock:
            self._db.close()
