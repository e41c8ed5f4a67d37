"""Single flight and a bounded cache: one upstream exchange for many concurrent askers.

Three places need the same thing (the source resolver, the registry client's bearer
tokens and the gateway's token resolver): concurrent callers asking for one key share
one piece of work, and its result may be kept for a while in a cache bounded in entries
and, optionally, in bytes. Failures are never kept.

Work started for callers belongs to them: when every caller waiting on a flight has
gone (its deadline passed, its client hung up), the flight is cancelled, so an
upstream that drips its answer cannot keep connections busy for nobody.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class _Flight(Generic[V]):
    task: asyncio.Task[V]
    waiters: int = 0


class SingleFlight(Generic[K, V]):
    """Concurrent :meth:`run` calls with one key share one task, cancelled when all leave."""

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        flight = self._flights.get(key)
        if flight is None or flight.task.done() or flight.task.cancelling():
            # (A flight cancelled because its callers left is not joined: it answers nobody.)
            flight = _Flight(asyncio.ensure_future(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(functools.partial(self._landed, key, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                # The last caller left (cancelled or timed out): nobody wants the answer.
                flight.task.cancel()

    def _landed(self, key: K, flight: _Flight[V], _task: object) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved, so an unawaited failure is not logged as lost


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    expires: float
    weight: int = 0


class BoundedCache(Generic[K, V]):
    """A least-recently-used map bounded in entries and (optionally) in summed weight,
    whose entries expire ``ttl`` seconds after they are put (None: never by age)."""

    def __init__(
        self,
        max_entries: int,
        *,
        ttl: float | None = None,
        max_weight: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._max_entries = max_entries
        self._max_weight = max_weight
        self._ttl = ttl
        self._clock = clock
        self.weight = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self.pop(key)
            return None
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: K, value: V, *, weight: int = 0, ttl: float | None = None) -> bool:
        """Keep ``value``; False when it alone would take over a quarter of the weight budget
        (served, not kept: one entry may not push out everything else)."""
        self.pop(key)
        if self._max_weight is not None and weight > self._max_weight // 4:
            return False
        lifetime = ttl if ttl is not None else self._ttl
        expires = self._clock() + lifetime if lifetime is not None else float("inf")
        self._entries[key] = _Entry(value, expires, weight)
        self.weight += weight
        while len(self._entries) > self._max_entries or (
            self._max_weight is not None and self.weight > self._max_weight
        ):
            _, evicted = self._entries.popitem(last=False)
            self.weight -= evicted.weight
        return True

    def pop(self, key: K) -> V | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self.weight -= entry.weight
        return entry.value

    def clear(self) -> None:
        self._entries.clear()
        self.weight = 0


class CachedFlight(Generic[K, V]):
    """:class:`SingleFlight` in front of a :class:`BoundedCache`: a hit answers at once, a
    miss joins (or starts) the one flight for its key, and a success is kept."""

    def __init__(self, cache: BoundedCache[K, V], *, keep: Callable[[V], bool] = lambda _v: True) -> None:
        self.cache = cache
        self._flight: SingleFlight[K, V] = SingleFlight()
        self._keep = keep

    async def get(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        hit = self.cache.get(key)
        if hit is not None:
            return hit

        async def fill() -> V:
            value = await work()
            if self._keep(value):
                self.cache.put(key, value)
            return value

        return await self._flight.run(key, fill)
