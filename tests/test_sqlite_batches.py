"""The SQLite token store's batches (wave_grpc/stores/sqlitebatch.py): calls waiting together
run in one transaction, and a failing call leaves every other caller its own result."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.stores.sqlite import SqliteTokenStore
from wave_grpc.stores.sqlitebatch import BatchedConnection


def _connection(path: Path) -> tuple[sqlite3.Connection, threading.RLock]:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE rows (name TEXT PRIMARY KEY)")
    return db, threading.RLock()


async def _batched(batches: BatchedConnection, calls: list[Callable[[], object]]) -> list[object]:
    """Run ``calls`` so that all but the first wait together: the first holds the thread until all are queued."""
    release = threading.Event()

    def first() -> str:
        release.wait(10)
        return "first"

    async def queue_then_release() -> None:
        await asyncio.sleep(0.05)  # every call below has been queued by now
        release.set()

    runs = [batches.run(first), *(batches.run(call) for call in calls)]
    results = await asyncio.gather(*runs, queue_then_release(), return_exceptions=True)
    return list(results[1:-1])


async def test_calls_waiting_together_each_get_their_own_result(tmp_path: Path) -> None:
    db, lock = _connection(tmp_path / "a.db")
    batches = BatchedConnection(db, lock, "test")

    def insert(name: str) -> bool:
        try:
            db.execute("INSERT INTO rows (name) VALUES (?)", (name,))
        except sqlite3.IntegrityError:
            return False
        return True

    names = [f"n{i}" for i in range(40)] + ["n3"]  # the last one is taken by then
    results = await _batched(batches, [functools.partial(insert, n) for n in names])
    batches.close()
    assert results == [True] * 40 + [False]
    assert db.execute("SELECT count(*) FROM rows").fetchone()[0] == 40


async def test_a_failing_call_fails_alone_and_the_others_are_kept_once(tmp_path: Path) -> None:
    db, lock = _connection(tmp_path / "b.db")
    batches = BatchedConnection(db, lock, "test")

    def insert(name: str) -> str:
        if name == "bad":
            raise ValueError("this call fails")
        db.execute("INSERT INTO rows (name) VALUES (?)", (name,))
        return name

    names = ["a", "b", "bad", "c"]
    results = await _batched(batches, [functools.partial(insert, n) for n in names])
    batches.close()
    assert results[:2] == ["a", "b"]
    assert results[3] == "c"
    assert isinstance(results[2], ValueError)
    # The batch was rolled back and its calls run one by one: each row once.
    assert sorted(r[0] for r in db.execute("SELECT name FROM rows")) == ["a", "b", "c"]


async def test_a_closed_connection_refuses_calls(tmp_path: Path) -> None:
    db, lock = _connection(tmp_path / "c.db")
    batches = BatchedConnection(db, lock, "test")
    assert await batches.run(lambda: 1) == 1
    batches.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await batches.run(lambda: 2)


async def test_concurrent_creations_store_every_record(tmp_path: Path) -> None:
    store = SqliteTokenStore(tmp_path / "wave.db")
    records = []
    for i in range(100):
        record = pb.ContainerRecord(
            container_token=f"t{i:011d}", owner="alice", request_id=f"{i:032x}", request_fingerprint=f"f{i}"
        )
        record.expiration.FromSeconds(4_000_000_000)
        records.append(record)
    try:
        stored = await asyncio.gather(*(store.put(r) for r in records), store.put(records[7]))
        found = await asyncio.gather(*(store.get_by_fingerprint(f"f{i}") for i in range(100)))
    finally:
        await store.close()
    assert stored == [True] * 100 + [False]
    assert [f.container_token if f else None for f in found] == [r.container_token for r in records]


async def test_a_call_not_yet_handed_over_when_the_connection_closes_fails_as_closed(tmp_path: Path) -> None:
    db, lock = _connection(tmp_path / "d.db")
    batches = BatchedConnection(db, lock, "test")
    assert await batches.run(lambda: 1) == 1  # the thread runs
    pending = asyncio.ensure_future(batches.run(lambda: 2))
    await asyncio.sleep(0)  # the call is made; its loop hands it over only after this step
    batches.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await pending
