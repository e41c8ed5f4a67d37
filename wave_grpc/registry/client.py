"""The upstream registry client, shared by the service (resolve and pin at
creation) and the gateway (fetch pinned bytes, redirect or stream blobs).

It speaks the distribution API the way real registries need:

* Auth: the registry's scheme is learnt once from the ``/v2/`` challenge (and
  again from any later ``401``). ``Bearer`` tokens come from the challenge's
  realm with ``service`` and ``scope`` (anonymously, or with the route's
  credentials as Basic), cached per registry and scope until ``expires_in``
  (minus a margin); concurrent requests share one token fetch. ``Basic`` sends
  the credentials. A ``401`` is retried once with a fresh token, then it is an
  error that says which registry and image refused and what to configure.
* Failures: bounded retries with exponential backoff and jitter on ``429``
  (honouring ``Retry-After`` up to a cap) and ``5xx``, and on refused or reset
  connections. Timeouts are not retried: a stalled registry answers within the
  configured connect/read timeout, not a multiple of it.
* Redirects are followed here, never by aiohttp, so ``Authorization`` is sent
  only to the registry's own origin (and to the token realm) and every hop is
  checked; a caller can also ask for the raw ``3xx`` to relay it.
* One pooled session per process; no transparent decompression (digests are
  over the bytes as sent).

Credentials and tokens stay inside this module: they never appear in an error
message, a log line, or a URL handed back to a caller. Text that comes from the
upstream (its error messages) is scrubbed of them before it is quoted.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from wave_grpc import __version__
from wave_grpc.config import Config, RegistryRoute
from wave_grpc.errors import ErrorKind, Errors, WaveError, invalid_argument
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MANIFEST_MEDIA_TYPES, MediaType, manifest_media_type

log = logging.getLogger(__name__)

# Manifests and configs are small; refuse to buffer anything bigger.
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 32 << 20
MAX_TOKEN_BYTES = 1 << 20
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# A Retry-After longer than this is not waited out (Docker Hub may say hours):
# the caller gets TOOMANYREQUESTS at once, with the wait in the message.
MAX_RETRY_AFTER = 10.0
# Without expires_in the distribution token spec says 60 s.
DEFAULT_TOKEN_SECONDS = 60.0
MAX_CACHED_TOKENS = 4096
USER_AGENT = f"wave-grpc/{__version__}"
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header (the first challenge in it)."""

    scheme: str
    params: Mapping[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        scheme, _, rest = header.strip().partition(" ")
        if not scheme:
            return None
        params = {
            m.group(1).lower(): (m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3))
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        return cls(scheme.lower(), params)


@dataclass(frozen=True, slots=True)
class AuthScheme:
    """What a registry wants, learnt from its challenge: nothing, Basic, or Bearer at a realm."""

    kind: Literal["none", "basic", "bearer"]
    realm: str = ""
    service: str = ""

    @classmethod
    def from_challenge(cls, challenge: Challenge | None) -> AuthScheme | None:
        if challenge is None:
            return None
        if challenge.scheme == "bearer" and challenge.params.get("realm"):
            return cls("bearer", challenge.params["realm"], challenge.params.get("service", ""))
        if challenge.scheme == "basic":
            return cls("basic")
        return None


@dataclass(frozen=True, slots=True)
class ManifestBlob:
    data: bytes
    media_type: MediaType
    digest: Digest


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            return None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def _without_query(url: str) -> str:
    """For logs: a presigned CDN URL's query is a capability, so it is never logged."""
    return url.split("?", 1)[0]


def _forbidden_host(host: str) -> bool:
    """Addresses no route may reach even by redirect: link-local (cloud metadata
    endpoints live at 169.254.169.254 and fe80::), unspecified and multicast."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return address.is_link_local or address.is_unspecified or address.is_multicast


def _host_matches(pattern: str, host: str, port: int | None) -> bool:
    pattern_host, pattern_port = pattern, None
    if pattern.startswith("["):
        pattern_host, _, rest = pattern[1:].partition("]")
        pattern_port = int(rest[1:]) if rest.startswith(":") else None
    elif ":" in pattern:
        pattern_host, _, port_text = pattern.rpartition(":")
        pattern_port = int(port_text)
    if pattern_port is not None and pattern_port != port:
        return False
    if pattern_host.startswith("*."):
        return host.endswith(pattern_host[1:]) and len(host) > len(pattern_host) - 1
    return host == pattern_host


def check_layer_location(config: Config, url: str, field: str) -> None:
    """Refuse an http(s) layer location whose host is not in ``[upstream].layer_hosts``.

    Runtimes are redirected to these URLs, and nothing else may be: an unlisted
    host (an internal address, a metadata endpoint) is INVALID_ARGUMENT naming
    ``field``. Credentials in the URL are refused too: they would be handed to
    every runtime that pulls the image.
    """
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        raise invalid_argument(field, "has an invalid port") from None
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise invalid_argument(field, "must be an http(s) URL with a host")
    if parts.username or parts.password:
        raise invalid_argument(field, "must not carry credentials (user:password@); use a presigned URL or upload")
    if _forbidden_host(host) or not any(_host_matches(p, host, port) for p in config.upstream.layer_hosts):
        listed = ", ".join(config.upstream.layer_hosts) or "none"
        raise invalid_argument(
            field,
            f"host {host}{f':{parts.port}' if parts.port else ''} is not an allowed layer host (allowed: {listed}); "
            "upload the layer (data: or UploadLayer) or ask the operator to add it to [upstream].layer_hosts",
        )


class RegistryClient:
    """One per process: a pooled session, the learnt auth schemes and the token cache."""

    def __init__(
        self,
        config: Config,
        *,
        max_backoff: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._session: aiohttp.ClientSession | None = None
        self._max_backoff = max_backoff
        self._clock = clock
        # (registry, scope) -> (token, renew at); the scope names the repository.
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        # registry -> its auth scheme, from the /v2/ challenge or the last 401.
        self._schemes: dict[str, AuthScheme] = {}
        # (registry, upstream repository) that answered 401 to a request without credentials.
        self._needs_auth: set[tuple[str, str]] = set()
        # ca_file -> its verifying context, built once.
        self._tls_contexts: dict[str, ssl.SSLContext] = {}
        # Single-flight: concurrent pulls of one image share one ping and one token fetch.
        self._inflight: dict[tuple[str, ...], asyncio.Future[Any]] = {}

    def _tls(self, route: RegistryRoute) -> ssl.SSLContext | bool:
        """What aiohttp verifies the registry's certificate with (default: the system's CAs)."""
        if not route.tls_verify:
            return False
        if not route.ca_file:
            return True
        context = self._tls_contexts.get(route.ca_file)
        if context is None:
            context = ssl.create_default_context(cafile=route.ca_file)
            self._tls_contexts[route.ca_file] = context
        return context

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=64, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                headers={"User-Agent": USER_AGENT},
                # Blobs stream through: a larger read buffer means fewer, bigger socket reads.
                read_bufsize=1 << 20,
            )

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
                Errors.NOT_ROUTED,
                f"registry {registry} is not routed by this deployment ([upstream].default_route is deny); "
                f"ask the operator to add a [[registries]] entry named {registry!r}",
            )
        listed = any(r.name == route.name for r in self._config.registries)
        if not listed and _forbidden_host(urlsplit(route.endpoint).hostname or ""):
            raise WaveError(Errors.NOT_ROUTED, f"registry {registry} is a link-local address; it is never routed")
        return route

    @staticmethod
    def upstream_repository(route: RegistryRoute, repository: str) -> str:
        """The repository name at the route's endpoint (a mirror may add a prefix)."""
        return f"{route.repository_prefix}/{repository}" if route.repository_prefix else repository

    # -- secrets --------------------------------------------------------------

    def _secrets(self) -> list[str]:
        values = [token for token, _ in self._tokens.values()]
        for route in self._config.registries:
            if route.password is not None and route.password.value:
                values.append(route.password.value)
                values.append(base64.b64encode(f"{route.username}:{route.password.value}".encode()).decode())
        return values

    def scrub(self, text: str) -> str:
        """Text from an upstream with every credential and token we hold masked."""
        for secret in self._secrets():
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def carries_secret(self, text: str) -> bool:
        return any(len(s) >= 4 and s in text for s in self._secrets())

    # -- failures ---------------------------------------------------------------

    def _hint_credentials(self, route: RegistryRoute) -> str:
        return (
            f"configure credentials for {route.name}: username and password_env (or password, or docker_config) "
            f"in the [[registries]] entry named {route.name!r}"
        )

    def _denied(self, route: RegistryRoute, label: str, status: int, said: str, *, by: str = "") -> WaveError:
        where = by or f"registry {route.name}"
        if route.has_credentials:
            source = f" from {route.credentials_from}" if route.credentials_from else ""
            message = (
                f"{label}: {where} refused the credentials configured for it (user {route.username!r}{source}) "
                f"with HTTP {status}{said}; check them, and that this user may pull the image"
            )
        else:
            message = (
                f"{label}: {where} refused anonymous access with HTTP {status}{said}; the image is private or "
                f"does not exist (registries answer both with a 401). To pull private images, "
                + self._hint_credentials(route)
            )
        return WaveError(Errors.UPSTREAM_DENIED, message)

    def _timeout_error(self, route: RegistryRoute, label: str, exc: BaseException, what: str) -> WaveError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            detail = f"did not accept a connection within {route.connect_timeout.total_seconds():g}s (connect_timeout)"
        else:
            detail = f"stalled: no data within {route.read_timeout.total_seconds():g}s (read_timeout)"
        return WaveError(
            Errors.UPSTREAM_TIMEOUT,
            f"{label}: {what} {detail}; retry later, or raise the timeouts of [[registries]] {route.name!r} "
            "/ [upstream]",
        )

    def _unreachable(self, route: RegistryRoute, label: str, exc: BaseException, what: str, attempts: int) -> WaveError:
        reason = getattr(exc, "os_error", None) or exc
        text = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
        return WaveError(
            Errors.UPSTREAM_UNAVAILABLE,
            f"{label}: {what} is unreachable ({self.scrub(text)}) after {attempts} attempt(s); check that it is "
            f"running and that the endpoint of [[registries]] {route.name!r} is right",
        )

    async def _upstream_said(self, resp: aiohttp.ClientResponse) -> str:
        """The upstream's own error (``CODE: message``), short and scrubbed; '' if none."""
        if resp.method == "HEAD":
            return ""
        try:
            raw = await resp.content.read(4096)
        except (aiohttp.ClientError, TimeoutError):
            return ""
        text = raw.decode("utf-8", "replace").strip()
        try:
            doc = json.loads(text)
            first = doc["errors"][0]
            text = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            text = text.splitlines()[0] if text else ""
            if text.startswith("<"):  # an HTML error page says nothing useful
                text = ""
        text = self.scrub(text)[:200]
        return f' "{text}"' if text else ""

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self._max_backoff, 0.25 * 2.0 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not crypto

    # -- one HTTP exchange, with retries ------------------------------------------

    def _timeout(self, route: RegistryRoute) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None,
            sock_connect=route.connect_timeout.total_seconds(),
            sock_read=route.read_timeout.total_seconds(),
        )

    async def _send(
        self,
        route: RegistryRoute,
        method: str,
        url: str | URL,
        headers: CIMultiDict[str],
        label: str,
        what: str,
        body: Callable[[], Any] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send with retries on refused/reset connections, 429 and 5xx; answer any other response.

        ``body`` makes the request body afresh for every attempt (a retry must
        resend it from its first byte).

        Timeouts are final (no retry): a stalled registry must not cost the caller
        a multiple of the timeout it configured.
        """
        retries = self._config.upstream.retries
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self.session.request(
                    method,
                    url,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout(route),
                    data=body() if body is not None else None,
                    ssl=self._tls(route),
                )
            except TimeoutError as exc:
                raise self._timeout_error(route, label, exc, what) from None
            except aiohttp.ClientConnectorCertificateError:
                # Not worth a retry: the certificate will not change in a second.
                hint = (
                    f"check its ca_file ({route.ca_file})"
                    if route.ca_file
                    else f"if it uses a private CA, set ca_file in the [[registries]] entry named {route.name!r}"
                )
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE,
                    f"{label}: the TLS certificate of {what} could not be verified; {hint}",
                ) from None
            except aiohttp.ClientError as exc:
                if attempt <= retries:
                    log.debug("%s %s: %s; retrying", method, _without_query(str(url)), type(exc).__name__)
                    await asyncio.sleep(self._backoff(attempt, None))
                    continue
                raise self._unreachable(route, label, exc, what, attempt) from None
            log.debug("%s %s -> %d", method, _without_query(str(url)), resp.status)
            retryable = resp.status == 429 or (resp.status >= 500 and resp.status not in (501, 505))
            if not retryable:
                return resp
            wait = _retry_after(resp.headers.get("Retry-After"))
            if attempt <= retries and (wait is None or wait <= MAX_RETRY_AFTER):
                resp.release()
                await asyncio.sleep(self._backoff(attempt, wait))
                continue
            said = await self._upstream_said(resp)
            resp.release()
            if resp.status == 429:
                later = f"retry after {wait:.0f}s" if wait is not None else "retry later"
                raise WaveError(
                    Errors.TOO_MANY_REQUESTS,
                    f"{label}: {what} is rate-limiting us (HTTP 429{said}) after {attempt} attempt(s); {later}"
                    + ("" if route.has_credentials else f", or {self._hint_credentials(route)} for a higher limit"),
                )
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: {what} answered HTTP {resp.status}{said} after {attempt} attempt(s); retry later",
            )

    # -- auth -------------------------------------------------------------------

    async def _single(self, key: tuple[str, ...], make: Callable[[], Awaitable[_T]]) -> _T:
        pending: asyncio.Future[Any] | None = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(make())
            self._inflight[key] = pending
            pending.add_done_callback(lambda f: self._done(key, f))
        result: _T = await asyncio.shield(pending)
        return result

    def _done(self, key: tuple[str, ...], future: asyncio.Future[Any]) -> None:
        self._inflight.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here, so a fetch nobody waits for any more is not logged as lost

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
        resp = await self._send(route, "GET", f"{route.endpoint}/v2/", headers, label, what)
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

    def _basic(self, route: RegistryRoute) -> str | None:
        if route.password is None:
            return None
        raw = f"{route.username}:{route.password.value}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def _token(self, route: RegistryRoute, scheme: AuthScheme, scopes: tuple[str, ...], label: str) -> str:
        key = (route.name, " ".join(scopes))
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        return await self._single(
            ("token", *key, scheme.realm), lambda: self._fetch_token(route, scheme, scopes, label, key)
        )

    async def _fetch_token(
        self, route: RegistryRoute, scheme: AuthScheme, scopes: tuple[str, ...], label: str, key: tuple[str, str]
    ) -> str:
        realm = urlsplit(scheme.realm)
        what = f"the token service of registry {route.name} ({realm.scheme}://{realm.netloc})"
        if realm.scheme not in ("http", "https") or not realm.hostname or _forbidden_host(realm.hostname):
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE, f"{label}: registry {route.name} sent an unusable token realm; not fetched"
            )
        headers: CIMultiDict[str] = CIMultiDict({"Accept": "application/json", "Accept-Encoding": "identity"})
        basic = self._basic(route)
        if basic is not None:
            # Never downgrade credentials to plain http when the registry itself is https.
            if realm.scheme == "http" and route.endpoint.startswith("https://"):
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE,
                    f"{label}: registry {route.name} asks for credentials at a plain-http token realm; refused",
                )
            headers["Authorization"] = basic
        query = [("scope", scope) for scope in scopes]
        if scheme.service:
            query.insert(0, ("service", scheme.service))
        url = URL(scheme.realm).extend_query(query)
        resp = await self._send(route, "GET", url, headers, label, what)
        try:
            if resp.status in (401, 403):
                raise self._denied(route, label, resp.status, await self._upstream_said(resp), by=what)
            if resp.status != 200:
                said = await self._upstream_said(resp)
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE,
                    f"{label}: {what} answered HTTP {resp.status}{said}",
                )
            raw = await self._read_limited(route, resp, MAX_TOKEN_BYTES, label, what)
        finally:
            resp.release()
        try:
            body = json.loads(raw)
            token = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or DEFAULT_TOKEN_SECONDS)
        except (ValueError, AttributeError, TypeError):
            token, expires_in = None, 0.0
        if not isinstance(token, str) or not token:
            raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{label}: {what} answered without a token")
        # Renew a little early so a token never expires between the check and its use.
        renew_at = self._clock() + max(expires_in - 10.0, expires_in * 0.5)
        if len(self._tokens) >= MAX_CACHED_TOKENS:
            now = self._clock()
            for stale in [k for k, (_, at) in self._tokens.items() if at <= now] or list(self._tokens)[:1]:
                self._tokens.pop(stale, None)
        self._tokens[key] = (token, renew_at)
        return token

    async def _authorization(
        self, route: RegistryRoute, scheme: AuthScheme, scopes: tuple[str, ...], label: str, *, fresh: bool
    ) -> str | None:
        if scheme.kind == "basic":
            return self._basic(route)
        if scheme.kind == "bearer":
            if fresh:
                self._tokens.pop((route.name, " ".join(scopes)), None)
            return "Bearer " + await self._token(route, scheme, scopes, label)
        return None

    # -- requests ---------------------------------------------------------------

    async def _open(
        self,
        route: RegistryRoute,
        repository: str,
        method: str,
        path: str,
        accept: tuple[str, ...],
        follow: bool,
        not_found: ErrorKind,
        label: str,
        *,
        actions: str = "pull",
        body: Callable[[], Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        url: str | None = None,
    ) -> aiohttp.ClientResponse:
        upstream_repo = self.upstream_repository(route, repository)
        if url is None:
            url = f"{route.endpoint}/v2/{upstream_repo}/{path}"
        elif _origin(url) != _origin(route.endpoint):
            # An upload location on another host would receive our credentials.
            raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{label}: registry {route.name} sent a foreign upload URL")
        what = f"registry {route.name} ({route.endpoint})"
        scopes: tuple[str, ...] = (f"repository:{upstream_repo}:{actions}",)
        scheme = await self.scheme(route.name, label=label)
        retried = False
        while True:
            headers: CIMultiDict[str] = CIMultiDict({"Accept-Encoding": "identity"})
            for media_type in accept:  # one header each: distribution reads them as a list
                headers.add("Accept", media_type)
            headers.update(extra_headers or {})
            authorization = await self._authorization(route, scheme, scopes, label, fresh=retried)
            if authorization is not None:
                headers["Authorization"] = authorization
            resp = await self._send(route, method, url, headers, label, what, body)
            if resp.status != 401:
                break
            challenge = Challenge.parse(resp.headers.get("WWW-Authenticate", ""))
            said = await self._upstream_said(resp)
            resp.release()
            if authorization is None:
                self._needs_auth.add((route.name, upstream_repo))
            learnt = AuthScheme.from_challenge(challenge)
            if retried or learnt is None or (learnt.kind == "basic" and not route.has_credentials):
                raise self._denied(route, label, 401, said)
            self._schemes[route.name] = scheme = learnt
            if challenge is not None and challenge.params.get("scope") and challenge.params["scope"] not in scopes:
                # The registry says which scope it wants (Docker Hub does); ask for it too.
                scopes = (*scopes, challenge.params["scope"])
            retried = True
        if resp.status == 403:
            said = await self._upstream_said(resp)
            resp.release()
            raise self._denied(route, label, 403, said)
        if resp.status == 404:
            said = await self._upstream_said(resp)
            resp.release()
            raise WaveError(not_found, f"{label}: not found in registry {route.name}{said}")
        if resp.status in REDIRECT_STATUSES and follow:
            resp = await self._follow(route, method, resp, headers, label)
        if resp.status >= 400 or (resp.status >= 300 and resp.status not in REDIRECT_STATUSES):
            said = await self._upstream_said(resp)
            resp.release()
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: registry {route.name} answered HTTP {resp.status}{said}",
            )
        if authorization is None and resp.status < 400:
            self._needs_auth.discard((route.name, upstream_repo))
        return resp

    async def _follow(
        self,
        route: RegistryRoute,
        method: str,
        resp: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        label: str,
    ) -> aiohttp.ClientResponse:
        """Follow a registry's redirects (blob storage, a CDN). ``Authorization``
        goes only to the registry's own origin; every hop must be http(s) and not
        link-local."""
        registry_origin = _origin(route.endpoint)
        for _ in range(MAX_REDIRECTS):
            location = resp.headers.get("Location", "")
            base = str(resp.url)
            resp.release()
            target = urljoin(base, location) if location else ""
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname or _forbidden_host(parts.hostname):
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE,
                    f"{label}: registry {route.name} redirected to an unusable location; not followed",
                )
            hop_headers = CIMultiDict(headers)
            if _origin(target) != registry_origin:
                hop_headers.popall("Authorization", None)
            resp = await self._send(route, method, target, hop_headers, label, f"blob storage of {route.name}")
            if resp.status not in REDIRECT_STATUSES:
                return resp
        resp.release()
        raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{label}: registry {route.name} redirected too many times")

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
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """An authenticated request for ``/v2/<repository>/<path>`` (or ``url``
        on the registry's own origin, such as an upload location).

        Yields a 2xx response (or, with ``allow_redirects=False``, possibly a
        3xx to relay); anything else is raised as a WaveError that names the
        registry and image. Read the body with :meth:`iter_body`. ``actions``
        is the token scope's action list (``pull,push`` to write).
        """
        route = self.route(registry)
        resp = await self._open(
            route,
            repository,
            method,
            path,
            accept,
            allow_redirects,
            not_found,
            what or f"{registry}/{repository}",
            actions=actions,
            body=body,
            extra_headers=headers,
            url=url,
        )
        try:
            yield resp
        finally:
            resp.release()

    async def _read_limited(
        self, route: RegistryRoute, resp: aiohttp.ClientResponse, limit: int, label: str, what: str = ""
    ) -> bytes:
        length = resp.content_length
        if length is not None and length > limit:
            raise WaveError(Errors.MANIFEST_INVALID, f"{label} is {length} bytes, over the {limit} byte limit")
        data = bytearray()
        async for chunk in self.iter_body(resp, route.name, label, what=what):
            data += chunk
            if len(data) > limit:
                raise WaveError(Errors.MANIFEST_INVALID, f"{label} is over the {limit} byte limit")
        return bytes(data)

    async def iter_body(
        self,
        resp: aiohttp.ClientResponse,
        registry: str,
        label: str,
        *,
        what: str = "",
        chunk_size: int = 1 << 16,
    ) -> AsyncIterator[bytes]:
        """The body in chunks; a stall or a cut connection is a WaveError naming the image."""
        route = self.route(registry)
        what = what or f"registry {route.name}"
        iterator = resp.content.iter_chunked(chunk_size).__aiter__()
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise self._timeout_error(route, label, exc, what) from None
            except aiohttp.ClientError as exc:
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE, f"{label}: {what} cut the transfer ({type(exc).__name__})"
                ) from None
            yield chunk

    async def get_manifest(self, registry: str, repository: str, reference: str) -> ManifestBlob:
        """Fetch a manifest by tag or digest; a digest reference is verified against the bytes."""
        sep = "@" if ":" in reference else ":"
        label = f"{registry}/{repository}{sep}{reference}"
        route = self.route(registry)
        async with self.request(
            registry,
            repository,
            "GET",
            f"manifests/{reference}",
            accept=tuple(str(m) for m in MANIFEST_MEDIA_TYPES),
            what=label,
        ) as resp:
            data = await self._read_limited(route, resp, MAX_MANIFEST_BYTES, label)
            content_type = resp.headers.get("Content-Type")
        digest = Digest.of(data)
        if Digest.is_digest(reference) and Digest.parse(reference) != digest:
            raise WaveError(Errors.DIGEST_INVALID, f"{label}: registry {registry} sent bytes with digest {digest}")
        return ManifestBlob(data, manifest_media_type(data, content_type, f"manifest {label}"), digest)

    async def get_blob(self, registry: str, repository: str, digest: Digest, limit: int = MAX_CONFIG_BYTES) -> bytes:
        """Fetch a small blob (a config), following the registry's redirects, and verify it."""
        label = f"{registry}/{repository}@{digest}"
        route = self.route(registry)
        async with self.request(
            registry, repository, "GET", f"blobs/{digest}", not_found=Errors.BLOB_UNKNOWN, what=f"blob {label}"
        ) as resp:
            data = await self._read_limited(route, resp, limit, f"blob {label}")
        if Digest.of(data) != digest:
            raise WaveError(Errors.DIGEST_INVALID, f"blob {label}: registry {registry} sent bytes of another digest")
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
        if parts.scheme not in ("http", "https") or not parts.hostname or _forbidden_host(parts.hostname):
            return None
        if parts.username or parts.password or self.carries_secret(target):
            return None
        return target
