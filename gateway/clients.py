"""Who is asking the gateway: the client's address, and how many unknown tokens it has asked for.

The address is the peer's own, or, from a reverse proxy listed in ``[gateway].trusted_proxies``,
the rightmost ``X-Forwarded-For`` address that is not such a proxy (the leftmost entries are
whatever the client wrote). ``[limits].token_misses_per_minute`` counts the "unknown token"
answers each address gets: a guesser of tokens is stopped long before it could find one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from gateway.keys import CONFIG
from wave_grpc.addresses import Networks, ip_literal
from wave_grpc.errors import Errors, WaveError
from wave_grpc.flight import BoundedCache
from wave_grpc.metrics import Metrics
from wave_grpc.stores.limits import RateLimiter


def forwarded_client(peer: str, forwarded_for: list[str], proxies: Networks) -> str:
    """The client's address: ``peer``, or, when ``peer`` is a trusted proxy, the rightmost
    ``X-Forwarded-For`` hop that is not one (a hop that is no address stops the walk there)."""
    if not proxies or peer not in proxies:
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",")]
    client = peer
    for hop in reversed(hops):
        address = ip_literal(hop)
        if address is None:
            break
        client = str(address)
        if client not in proxies:
            break
    return client


def client_address(request: web.Request) -> str:
    proxies = request.app[CONFIG].gateway.trusted_proxies
    return forwarded_client(request.remote or "", request.headers.getall("X-Forwarded-For", []), proxies)


class TokenGuesses:
    """``[limits].token_misses_per_minute``: "unknown token" answers counted per client address.

    Over the limit, every token lookup from that address is refused until its window ends,
    live tokens included, so that a refused guess tells nothing. The count is the shared
    rate limiter's (Redis when there is one); the refusal is remembered in this process, and
    another process learns it at the address's next miss there.
    """

    MAX_BLOCKED = 100_000

    def __init__(
        self, limiter: RateLimiter, limit: int, metrics: Metrics, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limiter = limiter
        self._limit = limit
        self._metrics = metrics
        self._clock = clock
        # address -> when its window ends (monotonic); bounded, each entry expires with its window.
        self._blocked: BoundedCache[str, float] = BoundedCache(self.MAX_BLOCKED, clock=clock)

    def _refusal(self, address: str, wait: float) -> WaveError:
        self._metrics.rate_limited.labels("token_miss").inc()
        return WaveError(
            Errors.TOO_MANY_REQUESTS,
            f"{address} asked for more than {self._limit} unknown tokens a minute "
            f"([limits].token_misses_per_minute): use the image names the AugmentService answered; "
            f"retry in {wait:.0f}s",
            retry_after=wait,
        )

    @property
    def refusing(self) -> bool:
        """Whether any address is refused now: when none is, a lookup need not know who asks."""
        return len(self._blocked) > 0

    def check(self, address: str) -> None:
        """Refuse an address that is over the limit in this window, before any lookup."""
        until = self._blocked.get(address)
        if until is not None:
            raise self._refusal(address, max(1.0, until - self._clock()))

    async def missed(self, address: str) -> None:
        """Count one unknown-token answer; raise the refusal instead when it is one too many."""
        if not self._limit:
            return
        wait = await self._limiter.hit(f"token_miss:{address}", self._limit)
        if wait is not None:
            self._blocked.put(address, self._clock() + wait, ttl=wait)
            raise self._refusal(address, wait)


GUESSES = web.AppKey("token_guesses", TokenGuesses)
