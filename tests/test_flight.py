"""The shared single-flight and bounded-cache helper (wave_grpc/flight.py)."""

from __future__ import annotations

import asyncio

import pytest

from wave_grpc.flight import BoundedCache, CachedFlight, SingleFlight


async def test_concurrent_callers_share_one_run() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0
    gate = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 7

    callers = [asyncio.ensure_future(flight.run("k", work)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*callers) == [7] * 20
    assert runs == 1
    assert len(flight) == 0


async def test_work_is_cancelled_when_every_caller_leaves() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def drip() -> int:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    callers = [asyncio.ensure_future(flight.run("k", drip)) for _ in range(3)]
    await started.wait()
    callers[0].cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set()  # two callers still want the answer
    for caller in callers[1:]:
        caller.cancel()
    await asyncio.wait_for(cancelled.wait(), 5)
    await asyncio.sleep(0)
    assert len(flight) == 0


async def test_a_new_caller_after_cancellation_starts_afresh() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0

    async def work() -> int:
        nonlocal runs
        runs += 1
        if runs == 1:
            await asyncio.sleep(3600)
        return runs

    first = asyncio.ensure_future(flight.run("k", work))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0.01)  # the caller has left, and with it the work
    assert await flight.run("k", work) == 2


async def test_failures_reach_every_caller_and_are_not_kept() -> None:
    cache: BoundedCache[str, int] = BoundedCache(8, ttl=60)
    cached = CachedFlight(cache)

    async def fail() -> int:
        raise ValueError("upstream said no")

    with pytest.raises(ValueError, match="upstream said no"):
        await cached.get("k", fail)
    assert len(cache) == 0

    async def succeed() -> int:
        return 3

    assert await cached.get("k", succeed) == 3
    assert cache.get("k") == 3


def test_cache_is_bounded_in_entries_weight_and_age() -> None:
    now = [0.0]
    cache: BoundedCache[str, str] = BoundedCache(3, ttl=10, max_weight=100, clock=lambda: now[0])
    for key in "abcd":
        cache.put(key, key, weight=10)
    assert [cache.get(k) for k in "abcd"] == [None, "b", "c", "d"]
    assert cache.weight == 30
    # One entry may not take over a quarter of the weight budget: served, not kept.
    assert cache.put("big", "x", weight=26) is False
    assert cache.get("big") is None
    cache.put("e", "e", weight=25)
    assert cache.weight <= 100
    now[0] = 11
    assert cache.get("e") is None
