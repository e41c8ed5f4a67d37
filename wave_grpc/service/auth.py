"""Who is calling: pluggable verifiers of caller tokens, chosen in the TOML config.

A caller presents a token as gRPC metadata ``authorization: Bearer <token>`` (the
gateway forwards the HTTP ``Authorization`` header as that metadata) or, as Wave's
clients do, in the request's ``tower_access_token``. The :class:`Authenticator`
asks the configured verifiers in order; the first that knows the token names the
user, and that user id becomes the owner of what the call creates.

Verifiers (``[auth].verifiers``):

``static``
    ``[service].tokens``: tokens stored as their sha256, each mapped to a user id.
``tower``
    A Seqera-Platform-compatible ``GET <endpoint>/user-info`` with the bearer
    token; the answer's ``user.id`` names the user ``tower:<host>/<id>``.
    Answers are cached briefly (``[auth.tower].cache_ttl``) by the token's
    sha256. A request's ``tower_endpoint`` is honoured only when it is the
    configured endpoint or in ``[auth.tower].allowed_endpoints``: the service
    never sends a caller's token to a URL the operator did not list.
``oidc``
    ``[[auth.oidc]]``: an OpenID Connect ID token (a JWT) checked locally against its
    issuer's published keys (wave_grpc/service/oidc.py); the caller is the entry's
    ``prefix`` followed by the configured claim (default ``sub``).

Without a token the caller is :data:`ANONYMOUS` when ``[service].anonymous`` is
true. With a token and at least one verifier, the token must verify: a bad token
is refused rather than silently downgraded to anonymous. With no verifier at all
(an anonymous-only deployment) presented tokens are ignored, so clients that
always send one (Nextflow with ``tower.accessToken`` set) keep working.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from wave_grpc.config import Config, StaticToken
from wave_grpc.errors import Errors, WaveError, brief
from wave_grpc.record import ANONYMOUS
from wave_grpc.service.oidc import OidcIssuers

log = logging.getLogger(__name__)

# A user-info answer is a few hundred bytes; refuse to buffer anything big.
_MAX_USER_INFO_BYTES = 1 << 20


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of an ``authorization: Bearer <token>`` metadata entry, or ""."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, credential = value.partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
    return ""


@dataclass(frozen=True, slots=True)
class Decline:
    """A verifier does not accept the token; ``reason`` says why (never the token itself)."""

    reason: str


class Verifier(Protocol):
    """Maps a caller token to a user id.

    ``verify`` answers the user id, or a :class:`Decline` when the token is not
    one this verifier accepts. It raises :class:`WaveError` only when it cannot
    tell (its backend is unavailable or rate-limiting), so a caller with a good
    token is told to retry instead of being refused.
    """

    name: str

    async def verify(self, token: str, tower_endpoint: str) -> str | Decline: ...


class StaticTokens:
    """``[service].tokens``: sha256 of the token -> user id. The config holds no secret."""

    name = "static"

    def __init__(self, tokens: Sequence[StaticToken]) -> None:
        self._users = {t.sha256: t.user for t in tokens}

    async def verify(self, token: str, tower_endpoint: str) -> str | Decline:
        user = self._users.get(_sha256(token))
        return user if user is not None else Decline("not a configured token")


def normalise_endpoint(url: str) -> str:
    return url.strip().rstrip("/")


class TowerUserInfo:
    """A Seqera-Platform-compatible ``GET <endpoint>/user-info`` check, cached briefly."""

    name = "tower"

    def __init__(
        self,
        endpoint: str,
        allowed_endpoints: Sequence[str] = (),
        *,
        cache_ttl: float = 60.0,
        timeout: float = 10.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._endpoint = normalise_endpoint(endpoint)
        self._allowed = {self._endpoint, *(normalise_endpoint(e) for e in allowed_endpoints)}
        self._cache_ttl = cache_ttl
        self._timeout = timeout
        self._max_entries = max_entries
        self._clock = clock
        # (endpoint, sha256 of the token) -> (user id, valid until); the token itself is never kept.
        self._cache: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def _endpoint_for(self, requested: str) -> str | Decline:
        wanted = normalise_endpoint(requested)
        if not wanted:
            return self._endpoint
        if wanted in self._allowed:
            return wanted
        return Decline(
            f"tower_endpoint {brief(wanted)} is not an endpoint this service checks tokens with "
            f"({', '.join(sorted(self._allowed))}); list it in [auth.tower].allowed_endpoints"
        )

    async def verify(self, token: str, tower_endpoint: str) -> str | Decline:
        endpoint = self._endpoint_for(tower_endpoint)
        if isinstance(endpoint, Decline):
            return endpoint
        key = (endpoint, _sha256(token))
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(key)
            return cached[0]
        result = await self._user_info(endpoint, token)
        if isinstance(result, str):
            # Only acceptances are cached: a refused token is asked again, so a
            # token fixed on the platform works at once.
            self._cache[key] = (result, self._clock() + self._cache_ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return result

    async def _user_info(self, endpoint: str, token: str) -> str | Decline:
        url = f"{endpoint}/user-info"
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            async with (
                # One short-lived session per check: checks are rare (answers are
                # cached), and the verifier then owns nothing that needs closing.
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout)) as session,
                # Never follow a redirect: it could carry the caller's token elsewhere.
                session.get(url, headers=headers, allow_redirects=False) as resp,
            ):
                if resp.status in (401, 403):
                    return Decline(f"{url} answered HTTP {resp.status}")
                if resp.status == 429:
                    raise WaveError(
                        Errors.TOO_MANY_REQUESTS,
                        f"the Seqera Platform at {endpoint} is rate-limiting token checks (HTTP 429); retry later",
                    )
                if resp.status != 200:
                    raise WaveError(
                        Errors.SERVICE_UNAVAILABLE,
                        f"the Seqera Platform at {endpoint} answered HTTP {resp.status} to /user-info; retry later",
                    )
                body = await resp.content.read(_MAX_USER_INFO_BYTES + 1)
        except TimeoutError:
            raise WaveError(
                Errors.SERVICE_UNAVAILABLE, f"the Seqera Platform at {endpoint} did not answer /user-info in time"
            ) from None
        except aiohttp.ClientError as exc:
            raise WaveError(
                Errors.SERVICE_UNAVAILABLE,
                f"cannot reach the Seqera Platform at {endpoint} ({type(exc).__name__}); retry later",
            ) from None
        user_id = _user_id(body)
        if user_id is None:
            raise WaveError(
                Errors.SERVICE_UNAVAILABLE,
                f"{url} answered 200 without a user id; is {endpoint} a Seqera Platform API?",
            )
        return f"tower:{urlsplit(endpoint).netloc}/{user_id}"


class OidcTokens:
    """``[[auth.oidc]]``: ID tokens of the configured issuers, verified here with their keys."""

    name = "oidc"

    def __init__(self, issuers: OidcIssuers) -> None:
        self.issuers = issuers

    async def verify(self, token: str, tower_endpoint: str) -> str | Decline:
        result = await self.issuers.caller(token)
        return result if isinstance(result, str) else Decline(result.reason)


def _user_id(body: bytes) -> str | None:
    if len(body) > _MAX_USER_INFO_BYTES:
        return None
    try:
        document: Any = json.loads(body)
    except ValueError:
        return None
    user = document.get("user") if isinstance(document, dict) else None
    user_id = user.get("id") if isinstance(user, dict) else None
    if isinstance(user_id, bool) or not isinstance(user_id, (int, str)) or str(user_id) == "":
        return None
    return str(user_id)


class Authenticator:
    """The configured verifiers, tried in order, and the anonymous policy."""

    def __init__(self, verifiers: Sequence[Verifier], *, anonymous: bool) -> None:
        self.verifiers = tuple(verifiers)
        self.anonymous = anonymous

    @classmethod
    def from_config(cls, config: Config) -> Authenticator:
        verifiers: list[Verifier] = []
        for name in config.auth.verifiers:
            if name == "static":
                verifiers.append(StaticTokens(config.service.tokens))
            elif name == "tower":
                tower = config.auth.tower
                verifiers.append(
                    TowerUserInfo(
                        tower.endpoint,
                        tower.allowed_endpoints,
                        cache_ttl=tower.cache_ttl.total_seconds(),
                        timeout=tower.timeout.total_seconds(),
                    )
                )
            elif name == "oidc":
                issuers = OidcIssuers.from_entries(config.auth.oidc, config.upstream.egress_proxy)
                verifiers.append(OidcTokens(issuers))
            else:  # parse_config accepts only the names above
                raise ValueError(f"unknown verifier {name!r}")
        return cls(verifiers, anonymous=config.service.anonymous)

    async def authenticate(self, token: str, tower_endpoint: str = "") -> str:
        """The caller's user id; UNAUTHORIZED when the token (or its absence) is not accepted."""
        if token and self.verifiers:
            declines: list[str] = []
            failure: WaveError | None = None
            for verifier in self.verifiers:
                try:
                    result = await verifier.verify(token, tower_endpoint)
                except WaveError as exc:
                    # Another verifier may still know the token; report this only if none does.
                    failure = failure or exc
                    continue
                if isinstance(result, str):
                    return result
                declines.append(f"{verifier.name}: {result.reason}")
            if failure is not None:
                raise failure
            raise WaveError(
                Errors.UNAUTHORIZED,
                "the caller token was not accepted (" + "; ".join(declines) + "); send a valid token "
                "as 'Authorization: Bearer <token>' or towerAccessToken",
            )
        if token:
            log.debug("ignoring a caller token: no verifier is configured")
        if self.anonymous:
            return ANONYMOUS
        raise WaveError(
            Errors.UNAUTHORIZED,
            "this service needs a caller token: send 'Authorization: Bearer <token>' (gRPC metadata "
            "'authorization') or set tower_access_token",
        )
