"""The upstream registry client, shared by the service (resolve and pin at
creation) and the gateway (fetch pinned bytes, redirect or stream blobs).

It speaks the distribution API with the auth dance real registries need: the
``401`` challenge, ``Bearer`` tokens fetched from the realm (anonymously or with
the route's credentials) and cached per registry and scope until they expire,
``Basic`` auth, one retry on a ``401`` with a fresh token, and bounded retries
with backoff and jitter on ``429`` (honouring ``Retry-After``) and ``5xx``.

Credentials and tokens stay inside this module: they never appear in an error
message, a log line or anything handed back to a caller.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict

from wave_grpc.config import Config, RegistryRoute
from wave_grpc.digest import Digest
from wave_grpc.errors import ErrorKind, Errors, WaveError
from wave_grpc.manifests import MANIFEST_MEDIA_TYPES, MediaType, manifest_media_type

log = logging.getLogger(__name__)

# Manifests and configs are small; refuse to buffer anything bigger.
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 32 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    params: Mapping[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        scheme, _, rest = header.strip().partition(" ")
        if not scheme:
            return None
        params = {
            m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        return cls(scheme.lower(), params)


@dataclass(frozen=True, slots=True)
class ManifestBlob:
    data: bytes
    media_type: MediaType
    digest: Digest


@dataclass(frozen=True, slots=True)
class BlobLocation:
    """Where a runtime should fetch a base blob: a URL that needs no credentials."""

    url: str


def _retry_after(value: str | None, default: float) -> float:
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default


class RegistryClient:
    """One per process; holds a pooled session and the token cache."""

    def __init__(self, config: Config, *, max_backoff: float = 4.0) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._max_backoff = max_backoff
        # Registries that challenged with Basic: send credentials up front from then on.
        self._basic_known: set[str] = set()

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("RegistryClient.start() was not called")
        return self._session

    def route(self, registry: str) -> RegistryRoute:
        route = self._config.route_for(registry)
        if route is None:
            raise WaveError(
                Errors.DENIED,
                f"registry {registry} is not routed by this deployment; add a [[registries]] "
                f"entry named {registry!r} to {self._config.source}",
            )
        return route

    # -- auth ---------------------------------------------------------------

    def _basic(self, route: RegistryRoute) -> str | None:
        if route.password is None:
            return None
        raw = f"{route.username}:{route.password.value}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def _fetch_token(self, route: RegistryRoute, challenge: Challenge, scope: str) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"registry {route.name} sent a Bearer challenge without realm")
        query = {"scope": scope}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        headers = {}
        basic = self._basic(route)
        if basic:
            headers["Authorization"] = basic
        timeout = aiohttp.ClientTimeout(
            sock_connect=route.connect_timeout.total_seconds(), sock_read=route.read_timeout.total_seconds()
        )
        try:
            async with self.session.get(realm, params=query, headers=headers, timeout=timeout) as resp:
                if resp.status in (401, 403):
                    raise self._unauthorized(route, scope.split(":")[1] if ":" in scope else "", resp.status)
                if resp.status != 200:
                    raise WaveError(
                        Errors.UPSTREAM_UNAVAILABLE,
                        f"registry {route.name}: token service answered HTTP {resp.status}",
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, ValueError) as exc:
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"registry {route.name}: token service unreachable ({type(exc).__name__})",
            ) from None
        except TimeoutError:
            raise WaveError(Errors.UPSTREAM_TIMEOUT, f"registry {route.name}: token service timed out") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"registry {route.name}: token service gave no token")
        expires_in = float(body.get("expires_in") or 60)
        # Renew a little early so a token never expires mid-request.
        self._tokens[(route.name, scope)] = (
            str(token),
            time.monotonic() + max(expires_in - 10, expires_in / 2),
        )
        return str(token)

    def _unauthorized(self, route: RegistryRoute, repository: str, status: int) -> WaveError:
        if route.has_credentials:
            hint = f"the credentials configured for {route.name} were refused (HTTP {status}); check them"
        else:
            hint = (
                f"registry {route.name} requires credentials (HTTP {status}); configure username and "
                f"password_env (or docker_config) in the [[registries]] entry named {route.name!r}"
            )
        return WaveError(Errors.UNAUTHORIZED, f"{route.name}/{repository}: {hint}")

    async def _auth_header(self, route: RegistryRoute, scope: str) -> str | None:
        cached = self._tokens.get((route.name, scope))
        if cached and cached[1] > time.monotonic():
            return "Bearer " + cached[0]
        return None

    # -- requests -----------------------------------------------------------

    @asynccontextmanager
    async def request(
        self,
        registry: str,
        repository: str,
        method: str,
        path: str,
        *,
        accept: tuple[str, ...] = (),
        allow_redirects: bool = True,
        not_found: ErrorKind = Errors.MANIFEST_UNKNOWN,
        what: str = "",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send an authenticated request; yield a 2xx/3xx response, raise WaveError otherwise."""
        route = self.route(registry)
        url = f"{route.endpoint}/v2/{repository}/{path}"
        scope = f"repository:{repository}:pull"
        label = what or f"{registry}/{repository}"
        timeout = aiohttp.ClientTimeout(
            sock_connect=route.connect_timeout.total_seconds(), sock_read=route.read_timeout.total_seconds()
        )
        retried_auth = False
        attempt = 0
        while True:
            headers: CIMultiDict[str] = CIMultiDict()
            for media_type in accept:
                headers.add("Accept", media_type)
            auth = await self._auth_header(route, scope) or self._basic_if_known(route)
            if auth:
                headers["Authorization"] = auth
            try:
                resp = await self.session.request(
                    method, url, headers=headers, allow_redirects=allow_redirects, timeout=timeout
                )
            except TimeoutError:
                raise WaveError(
                    Errors.UPSTREAM_TIMEOUT,
                    f"{label}: registry {registry} ({route.endpoint}) did not answer within "
                    f"{route.read_timeout.total_seconds():g}s",
                ) from None
            except aiohttp.ClientError as exc:
                if attempt < self._config.upstream.retries:
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt, None))
                    continue
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE,
                    f"{label}: registry {registry} ({route.endpoint}) is unreachable ({type(exc).__name__})",
                ) from None
            try:
                if resp.status == 401 and not retried_auth:
                    retried_auth = True
                    challenge = Challenge.parse(resp.headers.get("WWW-Authenticate", ""))
                    if challenge is not None and challenge.scheme == "bearer":
                        self._tokens.pop((route.name, scope), None)
                        await self._fetch_token(route, challenge, scope)
                        continue
                    if challenge is not None and challenge.scheme == "basic" and route.has_credentials:
                        self._basic_known.add(route.name)
                        continue
                if resp.status == 401 or resp.status == 403:
                    raise self._unauthorized(route, repository, resp.status)
                if resp.status == 404:
                    raise WaveError(not_found, f"{label}: not found in registry {registry}")
                if resp.status == 429 or resp.status >= 500:
                    if attempt < self._config.upstream.retries:
                        attempt += 1
                        await asyncio.sleep(self._backoff(attempt, resp.headers.get("Retry-After")))
                        continue
                    if resp.status == 429:
                        raise WaveError(
                            Errors.TOO_MANY_REQUESTS,
                            f"{label}: registry {registry} is rate-limiting us (HTTP 429); retry later",
                        )
                    raise WaveError(
                        Errors.UPSTREAM_UNAVAILABLE,
                        f"{label}: registry {registry} answered HTTP {resp.status}",
                    )
                if resp.status >= 400:
                    raise WaveError(
                        Errors.UPSTREAM_UNAVAILABLE,
                        f"{label}: registry {registry} answered HTTP {resp.status}",
                    )
                yield resp
                return
            finally:
                resp.release()

    def _basic_if_known(self, route: RegistryRoute) -> str | None:
        return self._basic(route) if route.name in self._basic_known else None

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        base = min(self._max_backoff, 0.25 * 2 ** (attempt - 1))
        jittered = base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not crypto
        return min(self._max_backoff, _retry_after(retry_after, jittered))

    async def _read_limited(self, resp: aiohttp.ClientResponse, limit: int, label: str) -> bytes:
        length = resp.content_length
        if length is not None and length > limit:
            raise WaveError(Errors.MANIFEST_INVALID, f"{label} is {length} bytes, over the {limit} byte limit")
        data = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > limit:
                raise WaveError(Errors.MANIFEST_INVALID, f"{label} is over the {limit} byte limit")
        return bytes(data)

    async def get_manifest(self, registry: str, repository: str, reference: str) -> ManifestBlob:
        """Fetch a manifest by tag or digest; a digest reference is verified against the bytes."""
        label = (
            f"{registry}/{repository}:{reference}" if ":" not in reference else f"{registry}/{repository}@{reference}"
        )
        try:
            async with self.request(
                registry,
                repository,
                "GET",
                f"manifests/{reference}",
                accept=tuple(str(m) for m in MANIFEST_MEDIA_TYPES),
                what=label,
            ) as resp:
                data = await self._read_limited(resp, MAX_MANIFEST_BYTES, f"manifest {label}")
                content_type = resp.headers.get("Content-Type")
        except TimeoutError:
            raise WaveError(Errors.UPSTREAM_TIMEOUT, f"{label}: registry {registry} stalled") from None
        digest = Digest.of(data)
        if Digest.is_digest(reference) and Digest.parse(reference) != digest:
            raise WaveError(Errors.DIGEST_INVALID, f"{label}: registry {registry} sent bytes with digest {digest}")
        return ManifestBlob(data, manifest_media_type(data, content_type, f"manifest {label}"), digest)

    async def get_blob(self, registry: str, repository: str, digest: Digest, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """Fetch a small blob (a config) and verify it."""
        label = f"{registry}/{repository}@{digest}"
        try:
            async with self.request(
                registry,
                repository,
                "GET",
                f"blobs/{digest}",
                not_found=Errors.BLOB_UNKNOWN,
                what=f"blob {label}",
            ) as resp:
                data = await self._read_limited(resp, limit, f"blob {label}")
        except TimeoutError:
            raise WaveError(Errors.UPSTREAM_TIMEOUT, f"blob {label}: registry {registry} stalled") from None
        if Digest.of(data) != digest:
            raise WaveError(Errors.DIGEST_INVALID, f"blob {label}: registry {registry} sent bytes of another digest")
        return data

    def direct_blob_url(self, registry: str, repository: str, digest: Digest) -> str:
        return f"{self.route(registry).endpoint}/v2/{repository}/blobs/{digest}"

    def headers_for_log(self, headers: Mapping[str, Any]) -> dict[str, Any]:
        return {k: ("***" if k.lower() in ("authorization", "proxy-authorization") else v) for k, v in headers.items()}
