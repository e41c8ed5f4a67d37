"""One SQLite connection served by a thread of its own, the calls waiting run as one transaction.

Under concurrent creations a hand-off per statement (``asyncio.to_thread``) costs the event
loop more than the statement: a thread wake-up, a self-pipe write and an epoll wake-up each
way. Here every call joins one queue; the thread takes all calls waiting, runs them in order
inside one ``BEGIN IMMEDIATE ... COMMIT`` and wakes each waiting loop once for the batch.
A loop hands its calls over once per iteration, so the calls its requests make together
wake the thread once.

Each caller still sees its own call's result, in the order the calls were queued, and only
after the batch is committed. If any call of a batch raises, or the commit fails (a full
disk, a lock another process holds too long), the batch is rolled back and its calls run
again one by one in autocommit, as they did before batching: each caller then gets exactly
the result or error its call alone would give.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

# Enough to take every creation a 64-caller burst has waiting; a batch holds the write lock
# for about 30 us a call.
MAX_BATCH = 128


@dataclass(frozen=True, slots=True)
class _Call:
    run: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass(frozen=True, slots=True)
class _Outcome:
    value: Any = None
    error: BaseException | None = None


def _call(run: Callable[[], Any]) -> _Outcome:
    try:
        return _Outcome(run())
    except Exception as exc:
        return _Outcome(error=exc)


def _settle(settled: list[tuple[asyncio.Future[Any], _Outcome]]) -> None:
    for future, outcome in settled:
        if future.cancelled():  # its caller has gone; the call ran all the same, as with to_thread
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.value)


class BatchedConnection:
    """Calls on ``db`` from one thread, batched; ``lock`` (reentrant) is held around each batch."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, name: str) -> None:
        self._db = db
        self._lock = lock
        self._name = name
        self._queue: queue.SimpleQueue[list[_Call] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # The calls each event loop made since it last handed its calls over.
        self._waiting: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        # Held while handing calls over and while stopping: no call is queued behind the stop.
        self._handing = threading.Lock()
        self._stopped = False

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on the connection's thread; its result once the batch it ran in is committed."""
        if self._stopped:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if self._thread is None:
            # Started on first use: a store opened only to create its schema holds no thread.
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        waiting = self._waiting.setdefault(loop, [])
        if not waiting:
            # Handed over once the loop has run what is ready: the calls the requests of one
            # loop iteration make wake the thread once, not once each.
            loop.call_soon(self._hand_over, loop)
        waiting.append(_Call(call, future, loop))
        return await future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        calls = self._waiting.pop(loop, [])
        with self._handing:
            if not self._stopped:
                self._queue.put(calls)
                return
        closed = _Outcome(error=sqlite3.ProgrammingError("Cannot operate on a closed database."))
        _settle([(c.future, closed) for c in calls])

    def close(self) -> None:
        """Finish the calls handed over, then stop the thread."""
        with self._handing:
            self._stopped = True
            self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _serve(self) -> None:
        while (first := self._queue.get()) is not None:
            calls = list(first)
            stop = False
            while len(calls) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                calls.extend(more)
            for start in range(0, len(calls), MAX_BATCH):
                batch = calls[start : start + MAX_BATCH]
                self._deliver(batch, self._run_batch(batch))
            if stop:
                return

    def _run_batch(self, batch: list[_Call]) -> list[_Outcome]:
        with self._lock:
            if len(batch) == 1:
                return [_call(batch[0].run)]
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return [_call(c.run) for c in batch]
            outcomes = [_call(c.run) for c in batch]
            if all(o.error is None for o in outcomes):
                try:
                    self._db.execute("COMMIT")
                    return outcomes
                except sqlite3.Error:
                    pass
            # Something failed: nothing of the batch is kept, and each call is run alone.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            return [_call(c.run) for c in batch]

    @staticmethod
    def _deliver(batch: list[_Call], outcomes: list[_Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], _Outcome]]] = {}
        for call, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(call.loop, []).append((call.future, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)
