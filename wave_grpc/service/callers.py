"""Who is calling: the verified user (or ``anonymous``), the client's address, and whether
the caller may go on (``[limits]``)."""

from __future__ import annotations

from typing import TypeVar

import grpc

from wave_grpc.addresses import ip_literal
from wave_grpc.channel import CLIENT_ADDRESS_METADATA, proves_gateway
from wave_grpc.config import Config
from wave_grpc.errors import Errors, WaveError
from wave_grpc.metrics import Metrics
from wave_grpc.record import listing_key
from wave_grpc.service.auth import Authenticator, bearer_token
from wave_grpc.service.creation import Caller
from wave_grpc.stores.limits import RateLimiter

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def peer_subjects(context: grpc.aio.ServicerContext[_Req, _Resp]) -> tuple[str, ...]:
    """The names a peer proved by its client certificate (mutual TLS): its common name and
    subject alternative names; empty without one."""
    auth = context.auth_context()
    names = [*auth.get("x509_common_name", ()), *auth.get("x509_subject_alternative_name", ())]
    return tuple(dict.fromkeys(n.decode() if isinstance(n, bytes) else str(n) for n in names))


def peer_subject(context: grpc.aio.ServicerContext[_Req, _Resp]) -> str:
    """The common name of the peer's client certificate, or "" without one."""
    names = list(context.auth_context().get("x509_common_name", ()))
    return names[0].decode() if names else ""


class Callers:
    """Authentication, the client address and the per-caller rate limits, for every RPC."""

    def __init__(self, config: Config, auth: Authenticator, limiter: RateLimiter, metrics: Metrics) -> None:
        self._config = config
        self._auth = auth
        self._limiter = limiter
        self._metrics = metrics

    async def authenticate(
        self,
        context: grpc.aio.ServicerContext[_Req, _Resp],
        tower_access_token: str = "",
        tower_endpoint: str = "",
    ) -> str:
        """The caller's user id (wave_grpc/service/auth.py); 'authorization' metadata wins over tower_access_token."""
        token = bearer_token(context.invocation_metadata()) or tower_access_token.strip()
        return await self._auth.authenticate(token, tower_endpoint)

    @staticmethod
    def peer_address(context: grpc.aio.ServicerContext[_Req, _Resp]) -> str:
        """The address the call came from (``ipv4:1.2.3.4:5678`` -> ``1.2.3.4``)."""
        peer = context.peer() or ""
        kind, _, rest = peer.partition(":")
        return rest.rsplit(":", 1)[0].strip("[]") if kind in ("ipv4", "ipv6") else kind or "unknown"

    def is_gateway(self, context: grpc.aio.ServicerContext[_Req, _Resp]) -> bool:
        """Does the caller prove it is the gateway? By its client certificate's subject
        ([service].gateway_subject, mutual TLS) or by the shared secret ([service].gateway_secret_env),
        from a peer in [service].trusted_proxies when that lists any. A peer address alone proves
        nothing: a NAT, a login node or a local process shares it."""
        service = self._config.service
        if service.trusted_proxies and self.peer_address(context) not in service.trusted_proxies:
            return False
        if service.gateway_subject and service.gateway_subject in peer_subjects(context):
            return True
        secret = service.gateway_secret
        return secret is not None and proves_gateway(context.invocation_metadata(), secret.value)

    def client_address(self, context: grpc.aio.ServicerContext[_Req, _Resp]) -> str:
        """The caller's address: its own, or the one the gateway forwarded for its REST client."""
        if self.is_gateway(context):
            for key, value in context.invocation_metadata() or ():
                if key == CLIENT_ADDRESS_METADATA and isinstance(value, str) and ip_literal(value) is not None:
                    return str(ip_literal(value))
        return self.peer_address(context)

    async def check_rate(self, counter: str, key: str, limit: int, config_key: str, window: float = 60.0) -> None:
        if not limit:
            return
        wait = await self._limiter.hit(f"{counter}:{key}", limit, window)
        if wait is not None:
            self._metrics.rate_limited.labels(counter).inc()
            raise WaveError(
                Errors.TOO_MANY_REQUESTS,
                f"{key} is over {limit} {counter}s {'an hour' if window == 3600 else 'a minute'} ({config_key}); "
                f"retry in {wait:.0f}s",
                retry_after=wait,
            )

    async def admit(
        self,
        context: grpc.aio.ServicerContext[_Req, _Resp],
        tower_access_token: str,
        tower_endpoint: str,
        counter: str,
    ) -> Caller:
        """The caller, past authentication and ``[limits].creates_per_minute`` (counted per ``counter``)."""
        owner = await self.authenticate(context, tower_access_token, tower_endpoint)
        address = self.client_address(context)
        await self.check_rate(
            counter, listing_key(owner, address), self._config.limits.creates_per_minute, "[limits].creates_per_minute"
        )
        return Caller(owner, address)
