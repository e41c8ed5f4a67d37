"""An OIDC issuer's signing keys: discovered, fetched, kept, and refetched at a bounded rate.

The keys come from ``<issuer>/.well-known/openid-configuration``'s ``jwks_uri`` (or the
entry's ``jwks_url``). They are kept until ``key_max_age``, and refetched early when a
token names a key id the set lacks (the issuer rotated its keys), but at most once per
``min_refresh_interval`` per issuer, and concurrent refreshes share one fetch: made-up
key ids cost the issuer one fetch per interval, however many arrive.

Fetches are bounded in time and size, https only (plain http only to a loopback host),
go through ``[upstream].proxy`` when one is set (unless ``no_proxy`` lists the issuer's
host; loopback included, as for registries), follow no redirect, and never quote the
issuer's answer back: a caller or a log learns what failed, not what the issuer said.
Only public RS256 and ES256 keys are kept.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from wave_grpc.config.egress import EgressProxy
from wave_grpc.config.oidc import OidcIssuerConfig, fetch_url_problem
from wave_grpc.errors import Errors, WaveError
from wave_grpc.flight import SingleFlight

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
# A discovery document or key set is a few kilobytes; these bound what one fetch may buffer.
MAX_DOCUMENT_BYTES = 256 << 10
MAX_KEYS = 100
# After a failed fetch the next may start this soon (a caller retrying sees the failure until then).
FAILURE_BACKOFF = 5.0
WELL_KNOWN = "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str  # "" when the issuer gives none
    algorithm: str  # RS256 or ES256
    key: Any  # the cryptography public key


@dataclass(frozen=True, slots=True)
class KeySet:
    keys: tuple[SigningKey, ...]
    fetched_at: float

    def named(self, kid: str) -> tuple[SigningKey, ...]:
        """The keys a token's ``kid`` points at (without one: every key)."""
        return tuple(k for k in self.keys if k.kid == kid) if kid else self.keys


def usable_keys(document: Any) -> tuple[SigningKey, ...] | None:
    """The public RS256/ES256 signature keys of a JWK set, or None when it is not one."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        return None
    keys: list[SigningKey] = []
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or "d" in entry:
            continue  # an encryption key, or private material an issuer should never publish
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue  # a key type or curve we do not take
        if jwk.algorithm_name in ALGORITHMS:
            kid = entry.get("kid")
            keys.append(SigningKey(kid if isinstance(kid, str) else "", jwk.algorithm_name, jwk.key))
    return tuple(keys)


class KeyFetcher:
    """Fetches one issuer's key set (discovery first, unless the entry names ``jwks_url``)."""

    def __init__(self, entry: OidcIssuerConfig, proxy: EgressProxy | None = None) -> None:
        self._entry = entry
        self._proxy = proxy
        self._ssl = ssl.create_default_context(cafile=entry.ca_file or None)

    async def fetch(self) -> tuple[SigningKey, ...]:
        issuer = self._entry.issuer
        jwks_url = self._entry.jwks_url or await self._discovered_jwks_url()
        keys = usable_keys(await self._get_json(jwks_url, "key set"))
        if keys is None:
            raise self._unavailable(f"{jwks_url} did not answer a JWK set (a JSON object with keys)")
        if not keys:
            raise self._unavailable(f"the key set at {jwks_url} holds no RS256 or ES256 signature key")
        log.info("fetched %d signing key(s) of OIDC issuer %s", len(keys), issuer)
        return keys

    async def _discovered_jwks_url(self) -> str:
        issuer = self._entry.issuer
        url = issuer.rstrip("/") + WELL_KNOWN
        document = await self._get_json(url, "discovery document")
        jwks_url = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(document, dict) or document.get("issuer") != issuer:
            raise self._unavailable(f"the discovery document at {url} names another issuer than {issuer!r}")
        if not isinstance(jwks_url, str) or fetch_url_problem(jwks_url) is not None:
            raise self._unavailable(
                f"the discovery document at {url} names no https jwks_uri; set [[auth.oidc]] jwks_url"
            )
        return jwks_url

    async def _get_json(self, url: str, what: str) -> Any:
        timeout = aiohttp.ClientTimeout(total=self._entry.timeout.total_seconds())
        host = urlsplit(url).hostname or ""
        proxy = None if self._proxy is None or self._proxy.bypassed_by(host) else self._proxy
        headers = {"Accept": "application/json"}
        proxy_headers = proxy.authorization if proxy is not None else {}
        if urlsplit(url).scheme == "http":  # the request goes to the proxy itself
            headers.update(proxy_headers)
        try:
            async with (
                # A session per fetch: fetches are rare (once per refresh interval at most).
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(
                    url,
                    headers=headers,
                    allow_redirects=False,
                    ssl=self._ssl,
                    proxy=proxy.url if proxy else None,
                    proxy_headers=proxy_headers or None,
                ) as resp,
            ):
                if proxy is not None and resp.status in (401, 407):  # tinyproxy says 401
                    raise self._unavailable(_proxy_refused(proxy, resp.status))
                if resp.status != 200:
                    raise self._unavailable(f"{url} answered HTTP {resp.status} for the {what}")
                body = await _bounded_body(resp)
        except aiohttp.ClientHttpProxyError as exc:  # an https target: the proxy refused the CONNECT
            assert proxy is not None
            raise self._unavailable(_proxy_refused(proxy, exc.status)) from None
        except TimeoutError:
            raise self._unavailable(f"{url} did not answer the {what} within {timeout.total:g}s") from None
        except aiohttp.ClientError as exc:
            via = f" through the egress proxy {proxy.url}" if proxy else ""
            raise self._unavailable(f"cannot reach {url}{via} ({type(exc).__name__})") from None
        if body is None:
            raise self._unavailable(f"the {what} at {url} is over {MAX_DOCUMENT_BYTES} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise self._unavailable(f"the {what} at {url} is not JSON") from None

    def _unavailable(self, problem: str) -> WaveError:
        return WaveError(
            Errors.SERVICE_UNAVAILABLE,
            f"cannot fetch the signing keys of OIDC issuer {self._entry.issuer}: {problem}; retry later",
        )


def _proxy_refused(proxy: EgressProxy, status: int) -> str:
    if status in (401, 407):
        password_from = proxy.credentials_from or "proxy_password_env"
        return (
            f"the egress proxy {proxy.url} refused our credentials (HTTP {status}); check the user in "
            f"{proxy.setting_key} and the password from {password_from}"
        )
    return (
        f"the egress proxy {proxy.url} ({proxy.setting_key}) would not connect (HTTP {status}); "
        "list the issuer's host in [upstream].no_proxy if it is reached directly"
    )


async def _bounded_body(resp: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None past MAX_DOCUMENT_BYTES (measured before it is all buffered)."""
    if (resp.content_length or 0) > MAX_DOCUMENT_BYTES:
        return None
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 << 10):
        body += chunk
        if len(body) > MAX_DOCUMENT_BYTES:
            return None
    return bytes(body)


class IssuerKeys:
    """One issuer's current key set, fetched on first use, when older than ``key_max_age``,
    and on an unknown key id at most once per ``min_refresh_interval`` (single flight)."""

    def __init__(
        self,
        entry: OidcIssuerConfig,
        fetch: Callable[[], Awaitable[tuple[SigningKey, ...]]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entry = entry
        self._fetch = fetch
        self._clock = clock
        self._min_interval = entry.min_refresh_interval.total_seconds()
        self._max_age = entry.key_max_age.total_seconds()
        self._current: KeySet | None = None
        self._next_fetch_at = 0.0  # the earliest moment another fetch may start
        self._last_failure: WaveError | None = None
        self._flight: SingleFlight[str, KeySet] = SingleFlight()
        self.fetches = 0  # fetches started (what the rate bound bounds)

    @property
    def may_refresh(self) -> bool:
        """Would a refresh fetch now (or join one in flight)?"""
        return len(self._flight) > 0 or self._clock() >= self._next_fetch_at

    def seconds_until_refresh(self) -> float:
        return max(0.0, self._next_fetch_at - self._clock())

    async def current(self) -> KeySet:
        """The keys to check a token with; fetched when there are none or they are old."""
        current = self._current
        if current is not None and self._clock() - current.fetched_at < self._max_age:
            return current
        if not self.may_refresh:
            if current is not None:
                return current  # old keys until the next fetch may start
            assert self._last_failure is not None
            raise self._last_failure
        try:
            return await self._flight.run(self._entry.issuer, self._refresh)
        except WaveError:
            if current is None:
                raise
            log.warning("keeping the old signing keys of OIDC issuer %s: the refetch failed", self._entry.issuer)
            return current

    async def refreshed(self) -> KeySet | None:
        """A fresh key set after an unknown key id, or None when the rate bound allows no fetch yet."""
        if not self.may_refresh:
            return None
        return await self._flight.run(self._entry.issuer, self._refresh)

    async def _refresh(self) -> KeySet:
        self.fetches += 1
        # The gate is set before the fetch: callers arriving meanwhile join this flight.
        self._next_fetch_at = self._clock() + self._min_interval
        try:
            keys = await self._fetch()
        except WaveError as exc:
            self._last_failure = exc
            self._next_fetch_at = min(self._next_fetch_at, self._clock() + FAILURE_BACKOFF)
            log.warning("%s", exc.message)
            raise
        self._current = KeySet(keys, self._clock())
        return self._current


def issuer_keys(
    entries: tuple[OidcIssuerConfig, ...], proxy: EgressProxy | None, clock: Callable[[], float] = time.monotonic
) -> Mapping[str, IssuerKeys]:
    """Each entry's keys, by issuer."""
    return {e.issuer: IssuerKeys(e, KeyFetcher(e, proxy).fetch, clock=clock) for e in entries}
