"""The local rate limiter: fixed windows, each window length counted on its own."""

from __future__ import annotations

from wave_grpc.stores.limits import LocalRateLimiter


async def test_a_minute_window_passing_does_not_reset_an_hour_count() -> None:
    now = [7200.0]
    limiter = LocalRateLimiter(clock=lambda: now[0])
    assert await limiter.hit("freeze:alice", 2, window=3600) is None
    assert await limiter.hit("create:alice", 1) is None
    now[0] += 120  # two minute windows later, the same hour
    assert await limiter.hit("create:alice", 1) is None
    assert await limiter.hit("freeze:alice", 2, window=3600) is None
    wait = await limiter.hit("freeze:alice", 2, window=3600)
    assert wait == 3600 - 120
    now[0] += 3600  # the next hour
    assert await limiter.hit("freeze:alice", 2, window=3600) is None


async def test_each_key_counts_alone_and_refusals_say_how_long_to_wait() -> None:
    now = [90.0]
    limiter = LocalRateLimiter(clock=lambda: now[0])
    assert await limiter.hit("a", 1) is None
    assert await limiter.hit("b", 1) is None
    assert await limiter.hit("a", 1) == 30.0
