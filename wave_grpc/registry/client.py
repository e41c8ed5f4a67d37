"""The upstream registry client, shared by the service (resolve and pin at
creation) and the gateway (fetch pinned bytes, redirect or stream blobs).

It speaks the distribution API the way real registries need:

* Auth: the registry's scheme is learnt once from the ``/v2/`` challenge (and
  again from any later ``401``). ``Bearer`` tokens come from the challenge's
  realm with ``service`` and ``scope`` (anonymously, or with the route's
  credentials as Basic), cached per registry and scope until ``expires_in``
  (minus a margin); concurrent requests share one token fetch. ``Basic`` sends
  the credentials. A ``401`` is retried once with a fresh token, then it is an
  error that says which registry and image refused and what to configure
  (wave_grpc/registry/auth.py; the token service exchange: realm.py).
* Each request is a value first (wave_grpc/registry/exchange.py): its URL,
  scopes and headers follow from it before any I/O.
* Transport, retries and timeouts: wave_grpc/registry/transport.py.
* Redirects are followed here, never by aiohttp, so ``Authorization`` is sent
  only to the registry's own origin (and to the token realm) and every hop is
  checked by the address policy (wave_grpc/registry/policy.py); a caller can
  also ask for the raw ``3xx`` to relay it.

Credentials and tokens stay inside this package: they never appear in an error
message, a log line, or a URL handed back to a caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict

from wave_grpc.addresses import ip_literal, public_unicast
from wave_grpc.config import Config, RegistryRoute
from wave_grpc.errors import ErrorKind, Errors, WaveError
from wave_grpc.flight import SingleFlight
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MANIFEST_MEDIA_TYPES, MediaType, manifest_media_type
from wave_grpc.metrics import Metrics
from wave_grpc.registry.auth import (
    AuthScheme,
    BearerTokens,
    Challenge,
    Secrets,
    basic_authorization,
    denied,
)
from wave_grpc.registry.exchange import UpstreamRequest, upstream_repository
from wave_grpc.registry.isolation import UpstreamLimits
from wave_grpc.registry.policy import contactable_url
from wave_grpc.registry.realm import fetch_bearer_token
from wave_grpc.registry.redirects import REDIRECT_STATUSES, follow_redirects
from wave_grpc.registry.site import PinnedContent
from wave_grpc.registry.transport import Transport

log = logging.getLogger(__name__)

# Manifests and configs are small; refuse to buffer anything bigger.
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 32 << 20

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ManifestBlob:
    data: bytes
    media_type: MediaType
    digest: Digest


class RegistryClient:
    """One per process: the transport, the learnt auth schemes and the token cache."""

    def __init__(
        self,
        config: Config,
        *,
        max_backoff: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = config
        self._tokens = BearerTokens(clock)
        self._secrets = Secrets(config, self._tokens)
        self._transport = Transport(
            config,
            max_backoff=max_backoff,
            scrub=self._secrets.scrub,
            metrics=metrics,
            limits=UpstreamLimits.of(config.upstream),
        )
        # registry -> its auth scheme, from the /v2/ challenge or the last 401.
        self._schemes: dict[str, AuthScheme] = {}
        # (registry, upstream repository) that answered 401 to a request without credentials.
        self._needs_auth: set[tuple[str, str]] = set()
        # Single-flight: concurrent pulls of one image share one ping and one token fetch.
        self._flight: SingleFlight[tuple[str, ...], Any] = SingleFlight()
        self._metrics = metrics
        # The site cache of routes with blobs = "cache" (installed by use_site_cache).
        self.site: PinnedContent | None = None

    def use_site_cache(self, site: PinnedContent) -> None:
        """Keep and find the pinned manifests and configs of ``blobs = "cache"`` routes in ``site``."""
        self.site = site

    def _site_for(self, registry: str) -> PinnedContent | None:
        return self.site if self.site is not None and self.route(registry).blobs == "cache" else None

    async def start(self) -> None:
        await self._transport.start()

    async def close(self) -> None:
        await self._transport.close()

    def scrub(self, text: str) -> str:
        """Text from an upstream with every credential and token we hold masked."""
        return self._secrets.scrub(text)

    def carries_secret(self, text: str) -> bool:
        return self._secrets.carried_by(text)

    def route(self, registry: str) -> RegistryRoute:
        route = self._config.route_for(registry)
        if route is None:
            raise WaveError(
                Errors.NOT_ROUTED,
                f"registry {registry} is not routed by this deployment ([upstream].default_route is deny); "
                f"ask the operator to add a [[registries]] entry named {registry!r}",
            )
        if not route.listed:
            # An address literal is judged now, for a clear answer without a connect; names
            # (and every redirect or realm) are judged on their resolved addresses at connect time.
            literal = ip_literal(urlsplit(route.endpoint).hostname or "")
            if literal is not None and not public_unicast(literal):
                raise self._transport.refused(route, f"registry {registry}")
        return route

    @staticmethod
    def upstream_repository(route: RegistryRoute, repository: str) -> str:
        """The repository name at the route's endpoint (a mirror may add a prefix)."""
        return upstream_repository(route, repository)

    async def _single(self, key: tuple[str, ...], make: Callable[[], Awaitable[_T]]) -> _T:
        """One exchange for concurrent askers of one key (a token, a challenge); see wave_grpc/flight.py."""
        return cast(_T, await self._flight.run(key, make))

    async def scheme(self, registry: str, *, label: str = "") -> AuthScheme:
        """The registry's auth scheme: from the cache, else from its ``/v2/`` challenge."""
        route = self.route(registry)
        known = self._schemes.get(route.name)
        if known is not None:
            return known
        return await self._single(("ping", route.name), lambda: self._ping(route, label or f"registry {route.name}"))

    async def _ping(self, route: RegistryRoute, label: str) -> AuthScheme:
        headers: CIMultiDict[str] = CIMultiDict({"Accept-Encoding": "identity"})
        what = f"registry {route.name} ({route.endpoint})"
        resp = await self._transport.send(route, "GET", f"{route.endpoint}/v2/", headers, label, what)
        try:
            found = AuthScheme.from_challenge(Challenge.parse(resp.headers.get("WWW-Authenticate", "")))
            # A 401 without a usable challenge, or a /v2/ that is not served (some
            # mirrors): go anonymous and learn from the first real 401.
            scheme = found if resp.status == 401 and found is not None else AuthScheme("none")
        finally:
            resp.release()
        self._schemes[route.name] = scheme
        log.debug("registry %s uses %s auth", route.name, scheme.kind)
        return scheme

    async def _token(self, route: RegistryRoute, scheme: AuthScheme, scopes: tuple[str, ...], label: str) -> str:
        key = (route.name, " ".join(scopes))
        cached = self._tokens.get(key)
        if cached is not None:
            return cached
        return await self._single(
            ("token", *key, scheme.realm), lambda: self._fetch_token(route, scheme, scopes, label, key)
        )

    async def _fetch_token(
        self, route: RegistryRoute, scheme: AuthScheme, scopes: tuple[str, ...], label: str, key: tuple[str, str]
    ) -> str:
        token, expires_in = await fetch_bearer_token(self._transport, route, scheme, scopes, label)
        self._tokens.put(key, token, expires_in)
        return token

    async def _authorization(
        self, route: RegistryRoute, scheme: AuthScheme, scopes: tuple[str, ...], label: str, *, fresh: bool
    ) -> str | None:
        if scheme.kind == "basic":
            return basic_authorization(route)
        if scheme.kind == "bearer":
            if fresh:
                self._tokens.drop((route.name, " ".join(scopes)))
            return "Bearer " + await self._token(route, scheme, scopes, label)
        return None

    async def _open(self, exchange: UpstreamRequest) -> aiohttp.ClientResponse:
        route, label = exchange.route, exchange.label
        scopes = exchange.scopes
        scheme = await self.scheme(route.name, label=label)
        retried = False
        while True:
            authorization = await self._authorization(route, scheme, scopes, label, fresh=retried)
            headers = exchange.headers_with(authorization)
            resp = await self._transport.send(
                route, exchange.method, exchange.target, headers, label, exchange.registry_what, exchange.body
            )
            if resp.status != 401:
                break
            challenge = Challenge.parse(resp.headers.get("WWW-Authenticate", ""))
            said = await self._transport.upstream_said(resp, route)
            resp.release()
            if authorization is None:
                self._needs_auth.add((route.name, exchange.upstream_repository))
            learnt = AuthScheme.from_challenge(challenge)
            if retried or learnt is None or (learnt.kind == "basic" and not route.has_credentials):
                raise denied(route, label, 401, said)
            self._schemes[route.name] = scheme = learnt
            if challenge is not None and challenge.params.get("scope") and challenge.params["scope"] not in scopes:
                # The registry says which scope it wants (Docker Hub does); ask for it too.
                scopes = (*scopes, challenge.params["scope"])
            retried = True
        if resp.status == 403:
            said = await self._transport.upstream_said(resp, route)
            resp.release()
            raise denied(route, label, 403, said)
        if resp.status == 404:
            said = await self._transport.upstream_said(resp, route)
            resp.release()
            raise WaveError(exchange.not_found, f"{label}: not found in registry {route.name}{said}")
        if resp.status in REDIRECT_STATUSES and exchange.follow_redirects:
            resp = await follow_redirects(self._transport, route, exchange.method, resp, headers, label)
        if resp.status >= 400 or (resp.status >= 300 and resp.status not in REDIRECT_STATUSES):
            said = await self._transport.upstream_said(resp, route)
            resp.release()
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: registry {route.name} answered HTTP {resp.status}{said}",
            )
        if authorization is None and resp.status < 400:
            self._needs_auth.discard((route.name, exchange.upstream_repository))
        if self._metrics is not None:
            self._metrics.note_rate_limit(route.name if route.listed else "unlisted", resp.headers)
        return resp

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
        actions: str = "pull",
        body: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        url: str | None = None,
        mount_from: str | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An authenticated request for ``/v2/<repository>/<path>`` (or ``url``
        on the registry's own origin, such as an upload location).

        Yields a 2xx response (or, with ``allow_redirects=False``, possibly a
        3xx to relay); anything else is raised as a WaveError that names the
        registry and image. Read the body with :meth:`iter_body`. The keywords
        are those of :class:`UpstreamRequest` (wave_grpc/registry/exchange.py).
        """
        exchange = UpstreamRequest(
            self.route(registry),
            repository,
            method,
            path,
            what or f"{registry}/{repository}",
            accept=accept,
            follow_redirects=allow_redirects,
            not_found=not_found,
            actions=actions,
            body=body,
            headers=UpstreamRequest.header_pairs(headers),
            url=url,
            mount_from=mount_from,
        )
        async with self.exchange(exchange) as resp:
            yield resp

    @asynccontextmanager
    async def exchange(self, exchange: UpstreamRequest) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response to ``exchange`` (as :meth:`request` describes), released on exit."""
        resp = await self._open(exchange)
        try:
            yield resp
        finally:
            resp.release()

    async def fetch(self, exchange: UpstreamRequest) -> tuple[bytes, str | None]:
        """The whole body of ``exchange`` (at most its ``body_limit``) and its Content-Type."""
        if not exchange.body_limit:
            raise ValueError(f"{exchange.label}: a body read whole needs a body_limit")
        async with self.exchange(exchange) as resp:
            data = await self._transport.read_limited(exchange.route, resp, exchange.body_limit, exchange.label)
            return data, resp.headers.get("Content-Type")

    async def iter_body(
        self,
        resp: aiohttp.ClientResponse,
        registry: str,
        label: str,
        *,
        what: str = "",
        chunk_size: int = 1 << 16,
    ) -> AsyncGenerator[bytes, None]:
        """The body in chunks; a stall or a cut connection is a WaveError naming the image."""
        async for chunk in self._transport.iter_body(
            resp, self.route(registry), label, what=what, chunk_size=chunk_size
        ):
            yield chunk

    async def get_manifest(self, registry: str, repository: str, reference: str) -> ManifestBlob:
        """Fetch a manifest by tag or digest; a digest reference is verified against the bytes.

        For a ``blobs = "cache"`` route the site cache answers first: a tag costs a ``HEAD``
        (which registries do not count against a pull budget) and a ``GET`` only when its
        digest is not stored; what is fetched is kept there.
        """
        sep = "@" if ":" in reference else ":"
        label = f"{registry}/{repository}{sep}{reference}"
        site = self._site_for(registry)
        if site is None:
            return await self._fetch_manifest(registry, repository, reference, label)
        digest = (
            Digest.parse(reference)
            if Digest.is_digest(reference)
            else await self._manifest_digest(registry, repository, reference, label)
        )
        if digest is not None:
            stored = await site.stored(digest, MAX_MANIFEST_BYTES)
            if stored is not None:
                return ManifestBlob(stored, manifest_media_type(stored, None, f"manifest {label}"), digest)
        manifest = await self._fetch_manifest(registry, repository, str(digest or reference), label)
        await site.keep(manifest.digest, manifest.data)
        return manifest

    async def _manifest_digest(self, registry: str, repository: str, tag: str, label: str) -> Digest | None:
        """What ``tag`` points at, from a ``HEAD`` (None when the registry does not say)."""
        exchange = UpstreamRequest(
            self.route(registry),
            repository,
            "HEAD",
            f"manifests/{tag}",
            label,
            accept=tuple(str(m) for m in MANIFEST_MEDIA_TYPES),
        )
        async with self.exchange(exchange) as resp:
            said = resp.headers.get("Docker-Content-Digest", "")
        return Digest.parse(said) if Digest.is_digest(said) else None

    async def _fetch_manifest(self, registry: str, repository: str, reference: str, label: str) -> ManifestBlob:
        data, content_type = await self.fetch(
            UpstreamRequest(
                self.route(registry),
                repository,
                "GET",
                f"manifests/{reference}",
                label,
                accept=tuple(str(m) for m in MANIFEST_MEDIA_TYPES),
                body_limit=MAX_MANIFEST_BYTES,
            )
        )
        digest = Digest.of(data)
        if Digest.is_digest(reference) and Digest.parse(reference) != digest:
            raise WaveError(Errors.DIGEST_INVALID, f"{label}: registry {registry} sent bytes with digest {digest}")
        return ManifestBlob(data, manifest_media_type(data, content_type, f"manifest {label}"), digest)

    async def get_blob(self, registry: str, repository: str, digest: Digest, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """Fetch a small blob (a config), following the registry's redirects, and verify it
        (from the site cache first for a ``blobs = "cache"`` route, and kept there)."""
        label = f"{registry}/{repository}@{digest}"
        site = self._site_for(registry)
        stored = await site.stored(digest, limit) if site is not None else None
        if stored is not None:
            return stored
        data, _ = await self.fetch(
            UpstreamRequest(
                self.route(registry),
                repository,
                "GET",
                f"blobs/{digest}",
                f"blob {label}",
                not_found=Errors.BLOB_UNKNOWN,
                body_limit=limit,
            )
        )
        if Digest.of(data) != digest:
            raise WaveError(Errors.DIGEST_INVALID, f"blob {label}: registry {registry} sent bytes of another digest")
        if site is not None:
            await site.keep(digest, data)
        return data

    def direct_blob_url(self, registry: str, repository: str, digest: Digest) -> str:
        route = self.route(registry)
        return f"{route.endpoint}/v2/{self.upstream_repository(route, repository)}/blobs/{digest}"

    async def anonymous_blob_url(self, registry: str, repository: str, digest: Digest) -> str | None:
        """The registry's own blob URL when a runtime can fetch it without credentials, else None.

        True for a route without credentials, in redirect mode, whose registry
        needs no auth at all (its ``/v2/`` answers without a challenge) and has
        not refused an anonymous request for this repository. A registry that
        wants even an anonymous Bearer token (Docker Hub, ghcr.io, quay.io) is
        not: a runtime sent there would meet a 401 for a token it cannot get
        through us.
        """
        route = self.route(registry)
        if route.has_credentials or route.blobs != "redirect":
            return None
        scheme = await self.scheme(registry, label=f"blob {registry}/{repository}@{digest}")
        if scheme.kind != "none" or (route.name, self.upstream_repository(route, repository)) in self._needs_auth:
            return None
        return self.direct_blob_url(registry, repository, digest)

    def relayable_location(self, resp: aiohttp.ClientResponse) -> str | None:
        """An upstream redirect's target as an absolute URL a runtime may be sent to.

        None when it cannot be: not http(s), link-local, or carrying one of our
        credentials or tokens (some registries put a token in the query); the
        caller then fetches the blob itself.
        """
        location = resp.headers.get("Location", "")
        if not location:
            return None
        target = urljoin(str(resp.url), location)
        parts = urlsplit(target)
        if not contactable_url(target):
            return None
        if parts.username or parts.password or self._secrets.carried_by(target):
            return None
        return target
