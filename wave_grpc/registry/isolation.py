"""What keeps one upstream from degrading the service for the others.

* ``UpstreamLimits``: the deadline of a whole exchange, the slowest a streamed
  body may be, and the connection budgets (one per listed registry, one shared
  and smaller for every unlisted one). The transport applies them.
* ``CircuitBreakers``: one per registry. After ``breaker_failures`` timeouts or
  failed connections within ``breaker_window`` with no exchange completed in
  between, requests to that registry fail fast for ``breaker_cooldown``; then
  one failure more opens it again, one completed exchange closes it.

No I/O here: the clock is injected, so every state can be tested directly.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from wave_grpc.config import UpstreamConfig
from wave_grpc.errors import Errors, WaveError

# The defaults, one per key the config will expose under [upstream].
DEFAULT_EXCHANGE_DEADLINE = 120.0  # s; headers and a buffered body (manifest, config, token)
DEFAULT_MIN_STREAM_RATE = 16 << 10  # bytes/s, averaged, once a stream is older than the deadline
DEFAULT_REGISTRY_CONNECTIONS = 64  # per listed registry (its realm and blob storage included)
DEFAULT_UNLISTED_CONNECTIONS = 32  # all unlisted registries together
DEFAULT_UNLISTED_CONNECTIONS_PER_HOST = 8  # one unlisted host
DEFAULT_POOL_WAIT = 10.0  # s a request waits for a free connection of its budget
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_WINDOW = 30.0  # s
DEFAULT_BREAKER_COOLDOWN = 30.0  # s
# Registries with recent failures that are remembered; the oldest is forgotten first
# (unlisted registries are as many as callers can name).
MAX_TRACKED_REGISTRIES = 4096


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    exchange_deadline: float = DEFAULT_EXCHANGE_DEADLINE
    min_stream_rate: int = DEFAULT_MIN_STREAM_RATE
    registry_connections: int = DEFAULT_REGISTRY_CONNECTIONS
    unlisted_connections: int = DEFAULT_UNLISTED_CONNECTIONS
    unlisted_connections_per_host: int = DEFAULT_UNLISTED_CONNECTIONS_PER_HOST
    pool_wait: float = DEFAULT_POOL_WAIT
    breaker_failures: int = DEFAULT_BREAKER_FAILURES
    breaker_window: float = DEFAULT_BREAKER_WINDOW
    breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN

    @classmethod
    def of(cls, upstream: UpstreamConfig) -> UpstreamLimits:
        """The ``[upstream]`` keys of the same names."""
        return cls(
            exchange_deadline=upstream.exchange_deadline.total_seconds(),
            min_stream_rate=upstream.min_stream_rate,
            registry_connections=upstream.registry_connections,
            unlisted_connections=upstream.unlisted_connections,
            unlisted_connections_per_host=upstream.unlisted_connections_per_host,
            pool_wait=upstream.pool_wait.total_seconds(),
            breaker_failures=upstream.breaker_failures,
            breaker_window=upstream.breaker_window.total_seconds(),
            breaker_cooldown=upstream.breaker_cooldown.total_seconds(),
        )

    def __post_init__(self) -> None:
        for name in ("exchange_deadline", "pool_wait", "breaker_window", "breaker_cooldown"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)}")
        counts = ("registry_connections", "unlisted_connections", "unlisted_connections_per_host", "breaker_failures")
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.min_stream_rate < 0:
            raise ValueError(f"min_stream_rate must not be negative, not {self.min_stream_rate}")


@dataclass(slots=True)
class _Breaker:
    failures: list[float] = field(default_factory=list)
    open_until: float = 0.0
    # After a cool-down: the next failure opens the breaker again at once.
    probation: bool = False


class CircuitBreakers:
    """One breaker per registry name; see the module docstring."""

    def __init__(self, limits: UpstreamLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._breakers: OrderedDict[str, _Breaker] = OrderedDict()

    def check(self, registry: str, label: str) -> None:
        """Raise UPSTREAM_UNAVAILABLE, naming the registry and when it is tried again, while it is open."""
        breaker = self._breakers.get(registry)
        if breaker is None:
            return
        now = self._clock()
        if now >= breaker.open_until:
            return
        wait = breaker.open_until - now
        again = datetime.fromtimestamp(time.time() + wait, UTC).strftime("%H:%M:%S UTC")
        raise WaveError(
            Errors.UPSTREAM_UNAVAILABLE,
            f"{label}: registry {registry} is not contacted until {again} (in {wait:.0f}s): its last "
            f"{self._limits.breaker_failures} requests within {self._limits.breaker_window:g}s timed out or could "
            "not connect, so requests to it fail fast meanwhile ([upstream].breaker_failures, breaker_cooldown); "
            "retry then, or check that the registry is healthy",
            retry_after=wait,
        )

    def failed(self, registry: str) -> None:
        """A timeout or a failed connection to ``registry``."""
        now = self._clock()
        breaker = self._breakers.pop(registry, None) or _Breaker()
        self._breakers[registry] = breaker  # most recent last
        while len(self._breakers) > MAX_TRACKED_REGISTRIES:
            self._breakers.popitem(last=False)
        if now < breaker.open_until:
            return  # already open (a request that started before it opened)
        if breaker.open_until:
            # The cool-down is over and this is the first answer since: one is enough.
            breaker.probation, breaker.open_until = True, 0.0
        recent = [t for t in breaker.failures if now - t < self._limits.breaker_window]
        recent.append(now)
        if breaker.probation or len(recent) >= self._limits.breaker_failures:
            breaker.open_until = now + self._limits.breaker_cooldown
            breaker.failures = []
        else:
            breaker.failures = recent

    def succeeded(self, registry: str) -> None:
        """An exchange with ``registry`` completed: its failures are forgotten."""
        self._breakers.pop(registry, None)

    def is_open(self, registry: str) -> bool:
        breaker = self._breakers.get(registry)
        return breaker is not None and self._clock() < breaker.open_until
