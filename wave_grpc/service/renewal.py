"""How far a token's expiry may move: a renewal, or an identical creation answering a live token.

A token lives at most ``[service].max_token_lifetime`` from its creation, however often
it is renewed: its name keeps pointing at bytes pinned at creation, and a long-running
pipeline is what renewal is for, not a name that never ends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from wave_grpc.config import Config
from wave_grpc.errors import invalid_argument
from wave_grpc.record import TokenRecord


def _instant(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def max_expiry(record: TokenRecord, config: Config) -> float:
    """The latest a record may expire: its creation plus ``[service].max_token_lifetime``."""
    return record.message.create_time.seconds + config.service.max_token_lifetime.total_seconds()


def renewed_expiry(record: TokenRecord, now: float, duration: timedelta | None, config: Config) -> float:
    """The expiry a renewal sets.

    With a ``duration``: now + it, which may not pass the maximum (the caller asked for
    more than a token may have: refused, saying how much is left). Without one: now + the
    token TTL, capped at the maximum, and never earlier than the expiry the token has;
    refused once the token already expires at its maximum.
    """
    latest = max_expiry(record, config)
    lifetime = config.service.max_token_lifetime
    if duration is not None:
        if duration <= timedelta(0):
            raise invalid_argument("duration", "must be positive")
        wanted = int(now + duration.total_seconds())
        if wanted > latest:
            raise invalid_argument(
                "duration",
                f"renewing for {duration} would end after {_instant(latest)}, the token's creation plus "
                f"[service].max_token_lifetime ({lifetime}); ask for at most {timedelta(seconds=int(latest - now))}, "
                "or create a new token",
            )
        return wanted
    if record.expires_at >= latest:
        raise invalid_argument(
            "container_token",
            f"the token already expires at {_instant(record.expires_at)}, the latest its "
            f"[service].max_token_lifetime ({lifetime}) from its creation allows; create a new token",
        )
    return max(int(min(now + config.service.token_ttl.total_seconds(), latest)), record.expires_at)


def answered_expiry(record: TokenRecord, now: float, config: Config) -> float | None:
    """When an identical creation answers a live token: the expiry a new token would have
    (now + the token TTL, up to the maximum), or None when the token already lives as long."""
    wanted = int(min(now + config.service.token_ttl.total_seconds(), max_expiry(record, config)))
    return wanted if wanted > record.expires_at else None
