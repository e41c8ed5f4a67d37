"""Rate limits (``[limits]``): how many requests a key may make per fixed window (a minute
by default; ``[limits].freezes_per_hour`` counts per hour).

A limiter answers each hit with None (go on) or the seconds until the window
ends (refuse, and say how long to wait). The local one serves a single
process; with a Redis store every replica shares one count
(wave_grpc/stores/redis.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class RateLimiter(Protocol):
    async def hit(self, key: str, limit: int, window: float = 60.0) -> float | None:
        """Count one request for ``key``; the wait in seconds when it is over ``limit`` in this window."""
        ...


class LocalRateLimiter:
    """Fixed windows in this process, each window length counted on its own (a minute's
    count never resets an hour's); each table is pruned of past windows as it goes."""

    # Keys are callers and token owners: bounded by pruning every window, and by this.
    MAX_KEYS = 100_000

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        # window length -> (the current window's number, counts by key in it)
        self._windows: dict[float, tuple[int, dict[str, int]]] = {}

    async def hit(self, key: str, limit: int, window: float = 60.0) -> float | None:
        now = self._clock()
        start = int(now // window)
        current, counts = self._windows.get(window, (start, {}))
        if current != start:
            counts = {}
        self._windows[window] = (start, counts)
        if key not in counts and len(counts) >= self.MAX_KEYS:
            return (start + 1) * window - now  # a flood of new keys: refuse rather than grow
        count = counts.get(key, 0) + 1
        counts[key] = count
        return (start + 1) * window - now if count > limit else None
