"""HTTP to registries: pooled sessions, TLS per route, retries with backoff, bounded reads.

* Isolation (wave_grpc/registry/isolation.py): one connection pool per listed
  registry and one smaller one for all unlisted registries, so a slow registry
  fills only its own; a total deadline on every exchange (headers and a
  buffered body) on top of the per-read timeout, and a minimum average rate
  for a streamed body, so a registry that drips a byte a second does not hold
  a connection forever; a circuit breaker per registry, so one that keeps
  timing out is not waited on by every request.

* Failures: bounded retries with exponential backoff and jitter on ``429``
  (honouring ``Retry-After`` up to a cap) and ``5xx``, and on refused or reset
  connections. Timeouts are not retried: a stalled registry answers within the
  configured connect/read timeout, not a multiple of it.
* Redirects are never followed here (``allow_redirects=False``): the client
  decides on every hop.
* No transparent decompression: digests are over the bytes as sent.

Text that comes from an upstream (its error messages) passes through ``scrub``
before it is quoted, so no credential or token we hold is echoed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from wave_grpc import __version__
from wave_grpc.config import Config, RegistryRoute
from wave_grpc.config.egress import EgressProxy
from wave_grpc.errors import Errors, WaveError
from wave_grpc.metrics import Metrics
from wave_grpc.registry.auth import hint_credentials
from wave_grpc.registry.egress import Egress, proxy_headers, proxy_refused, proxy_unreachable
from wave_grpc.registry.isolation import CircuitBreakers, UpstreamLimits
from wave_grpc.registry.policy import AddressRefused, Listeners, PolicyConnector
from wave_grpc.registry.quoting import quoted_error

log = logging.getLogger(__name__)

# A Retry-After longer than this is not waited out (Docker Hub may say hours):
# the caller gets TOOMANYREQUESTS at once, with the wait in the message.
MAX_RETRY_AFTER = 10.0
USER_AGENT = f"wave-grpc/{__version__}"


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


def _without_query(url: str) -> str:
    """For logs: a presigned CDN URL's query is a capability, so it is never logged."""
    return url.split("?", 1)[0]


class Transport:
    """One per process: the pooled session and the TLS contexts."""

    def __init__(
        self,
        config: Config,
        *,
        max_backoff: float,
        scrub: Callable[[str], str],
        metrics: Metrics | None = None,
        limits: UpstreamLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self.limits = limits or UpstreamLimits()
        self.breakers = CircuitBreakers(self.limits, clock)
        # One pool per listed registry (it, its realm and its redirects may be anywhere),
        # made on first use; one pool for every unlisted registry, public addresses only.
        self._listed: dict[str, aiohttp.ClientSession] = {}
        self._unlisted: aiohttp.ClientSession | None = None
        self._started = False
        # A response -> the loop time its exchange must end by (headers and buffered body).
        self._deadlines: weakref.WeakKeyDictionary[aiohttp.ClientResponse, float] = weakref.WeakKeyDictionary()
        self._listeners = Listeners((config.service.listen, config.gateway.listen, config.admin.listen))
        self._max_backoff = max_backoff
        self._scrub = scrub
        # ca_file -> its verifying context, built once.
        self._tls_contexts: dict[str, ssl.SSLContext] = {}
        self.egress = Egress(config)

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

    def _new_session(self, *, public_only: bool) -> aiohttp.ClientSession:
        limits = self.limits
        if public_only:
            limit, per_host = limits.unlisted_connections, limits.unlisted_connections_per_host
        else:
            limit, per_host = limits.registry_connections, 0
        connector = PolicyConnector(
            public_only=public_only,
            listeners=self._listeners,
            proxies=self.egress.endpoints,
            limit=limit,
            limit_per_host=per_host,
            ttl_dns_cache=300,
            # Behind a proxy no connection is kept: proxies close them after an answer without
            # saying so (tinyproxy), and a body streamed onto a closed one cannot be sent again.
            force_close=bool(self.egress.proxies),
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT},
            # Blobs stream through: a larger read buffer means fewer, bigger socket reads.
            read_bufsize=1 << 20,
        )

    async def start(self) -> None:
        if not self._started:
            self._started = True
            self._unlisted = self._new_session(public_only=True)

    async def close(self) -> None:
        sessions = [*self._listed.values(), *([self._unlisted] if self._unlisted is not None else [])]
        self._listed, self._unlisted, self._started = {}, None, False
        for session in sessions:
            await session.close()

    def session(self, route: RegistryRoute) -> aiohttp.ClientSession:
        """The pool of ``route``: its own when listed, the shared unlisted one otherwise."""
        if not self._started:
            raise RuntimeError("Transport.start() was not called")
        if not route.listed:
            assert self._unlisted is not None
            return self._unlisted
        session = self._listed.get(route.name)
        if session is None:
            session = self._listed[route.name] = self._new_session(public_only=False)
        return session

    def refused(self, route: RegistryRoute, label: str) -> WaveError:
        return WaveError(
            Errors.NOT_ROUTED,
            f"{label}: registry {route.name} has no [[registries]] entry, so it (and any token service or "
            "redirect it names) may be contacted only at public addresses, and it led to a loopback, private, "
            "link-local or otherwise internal address; if this registry is meant to be reached, ask the "
            f"operator to add a [[registries]] entry with name = {route.name!r}",
        )

    def timeout_error(self, route: RegistryRoute, label: str, exc: BaseException, what: str) -> WaveError:
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            detail = f"did not accept a connection within {route.connect_timeout.total_seconds():g}s (connect_timeout)"
            limit = self.limits.registry_connections if route.listed else self.limits.unlisted_connections_per_host
            detail += (
                f", or all {limit} connections kept for it stayed busy for {self.limits.pool_wait:g}s "
                "([upstream].pool_wait: earlier requests to it are answered slowly)"
            )
        else:
            detail = f"stalled: no data within {route.read_timeout.total_seconds():g}s (read_timeout)"
        return WaveError(
            Errors.UPSTREAM_TIMEOUT,
            f"{label}: {what} {detail}; retry later, or raise the timeouts of [[registries]] {route.name!r} "
            "/ [upstream]",
        )

    def unreachable(self, route: RegistryRoute, label: str, exc: BaseException, what: str, attempts: int) -> WaveError:
        reason = getattr(exc, "os_error", None) or exc
        text = getattr(reason, "strerror", None) or str(reason) or type(exc).__name__
        return WaveError(
            Errors.UPSTREAM_UNAVAILABLE,
            f"{label}: {what} is unreachable ({self._scrub(text)}) after {attempts} attempt(s); check that it is "
            f"running and that the endpoint of [[registries]] {route.name!r} is right",
        )

    async def upstream_said(self, resp: aiohttp.ClientResponse, route: RegistryRoute) -> str:
        """The upstream's own error (``CODE: message``), short and scrubbed; '' if none (registry/quoting.py)."""
        if resp.method == "HEAD":
            return ""
        deadline = self._deadlines.get(resp, asyncio.get_running_loop().time() + self.limits.exchange_deadline)
        try:
            async with asyncio.timeout_at(deadline):
                raw = await resp.content.read(4096)
        except (aiohttp.ClientError, TimeoutError):
            return ""
        except BaseException:
            resp.close()  # cancelled: the connection must not wait for the caller's release
            raise
        return quoted_error(raw, listed=route.listed, scrub=self._scrub)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self._max_backoff, 0.25 * 2.0 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not crypto

    def _timeout(self, route: RegistryRoute) -> aiohttp.ClientTimeout:
        # The total is the exchange deadline (send, read_limited); ``connect`` bounds
        # the wait for a free connection of the route's pool plus the connect itself.
        return aiohttp.ClientTimeout(
            total=None,
            connect=self.limits.pool_wait + route.connect_timeout.total_seconds(),
            sock_connect=route.connect_timeout.total_seconds(),
            sock_read=route.read_timeout.total_seconds(),
        )

    async def _counted(
        self,
        route: RegistryRoute,
        method: str,
        url: str | URL,
        headers: CIMultiDict[str],
        body: Callable[[], Any] | None,
        proxy: EgressProxy | None,
    ) -> aiohttp.ClientResponse:
        """One HTTP exchange (through ``proxy`` when given), counted in wave_grpc_upstream_requests_total."""
        registry = route.name if route.listed else "unlisted"
        try:
            resp = await self.session(route).request(
                method,
                url,
                headers=headers if proxy is None else proxy_headers(headers, url, proxy),
                allow_redirects=False,
                timeout=self._timeout(route),
                data=body() if body is not None else None,
                ssl=self._tls(route),
                proxy=proxy.url if proxy is not None else None,
                proxy_headers=proxy.authorization if proxy is not None else None,
            )
        except BaseException:
            if self._metrics is not None:
                self._metrics.upstream_requests.labels(registry, "error").inc()
            raise
        if self._metrics is not None:
            self._metrics.upstream_requests.labels(registry, str(resp.status)).inc()
        return resp

    def deadline_error(self, route: RegistryRoute, label: str, what: str) -> WaveError:
        self.breakers.failed(route.name)
        return WaveError(
            Errors.UPSTREAM_TIMEOUT,
            f"{label}: {what} did not finish answering within {self.limits.exchange_deadline:g}s "
            "([upstream].exchange_deadline: headers and body together), although it kept sending; "
            "it is answering too slowly, retry later",
        )

    async def send(
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
        a multiple of the timeout it configured. The whole of it, retries included,
        ends by the exchange deadline, which :meth:`read_limited` then holds the
        body to; a registry whose breaker is open is not contacted at all.
        """
        self.breakers.check(route.name, label)
        deadline = asyncio.get_running_loop().time() + self.limits.exchange_deadline
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self._send_with_retries(route, method, url, headers, label, what, body)
        except TimeoutError:
            raise self.deadline_error(route, label, what) from None
        self._deadlines[resp] = deadline
        return resp

    async def _send_with_retries(
        self,
        route: RegistryRoute,
        method: str,
        url: str | URL,
        headers: CIMultiDict[str],
        label: str,
        what: str,
        body: Callable[[], Any] | None,
    ) -> aiohttp.ClientResponse:
        retries = self._config.upstream.retries
        try:
            proxy = await self.egress.judged(route, url, self.session(route).connector)
        except AddressRefused:
            raise self.refused(route, label) from None
        except OSError as exc:  # the target's name does not resolve here
            raise self.unreachable(route, label, exc, what, 1) from None
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._counted(route, method, url, headers, body, proxy)
            except aiohttp.ClientHttpProxyError as exc:
                # The proxy's own answer to CONNECT: its credentials or its rules, not worth a retry.
                assert proxy is not None  # only a request through a proxy meets one
                raise proxy_refused(proxy, label, exc.status, what) from None
            except TimeoutError as exc:
                self.breakers.failed(route.name)
                raise self.timeout_error(route, label, exc, what) from None
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
                if isinstance(getattr(exc, "os_error", None), AddressRefused):
                    # The policy's answer, not a failure: retrying would change nothing.
                    raise self.refused(route, label) from None
                if attempt <= retries:
                    log.debug("%s %s: %s; retrying", method, _without_query(str(url)), type(exc).__name__)
                    await asyncio.sleep(self._backoff(attempt, None))
                    continue
                self.breakers.failed(route.name)
                if proxy is not None and isinstance(exc, aiohttp.ClientProxyConnectionError):
                    raise proxy_unreachable(proxy, label, self._scrub(str(exc.os_error)), attempt) from None
                raise self.unreachable(route, label, exc, what, attempt) from None
            log.debug("%s %s -> %d", method, _without_query(str(url)), resp.status)
            if resp.status == 407 and proxy is not None:  # a plain-http target: the proxy answers itself
                resp.release()
                raise proxy_refused(proxy, label, 407, what)
            retryable = resp.status == 429 or (resp.status >= 500 and resp.status not in (501, 505))
            if not retryable:
                return resp
            wait = _retry_after(resp.headers.get("Retry-After"))
            if attempt <= retries and (wait is None or wait <= MAX_RETRY_AFTER):
                resp.release()
                await asyncio.sleep(self._backoff(attempt, wait))
                continue
            said = await self.upstream_said(resp, route)
            resp.release()
            if resp.status == 429:
                later = f"retry after {wait:.0f}s" if wait is not None else "retry later"
                raise WaveError(
                    Errors.TOO_MANY_REQUESTS,
                    f"{label}: {what} is rate-limiting us (HTTP 429{said}) after {attempt} attempt(s); {later}"
                    + ("" if route.has_credentials else f", or {hint_credentials(route)} for a higher limit"),
                )
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: {what} answered HTTP {resp.status}{said} after {attempt} attempt(s); retry later",
            )

    async def read_limited(
        self, route: RegistryRoute, resp: aiohttp.ClientResponse, limit: int, label: str, what: str = ""
    ) -> bytes:
        """The whole body, at most ``limit`` bytes, by the exchange's deadline."""
        length = resp.content_length
        if length is not None and length > limit:
            raise WaveError(Errors.MANIFEST_INVALID, f"{label} is {length} bytes, over the {limit} byte limit")
        deadline = self._deadlines.get(resp, asyncio.get_running_loop().time() + self.limits.exchange_deadline)
        data = bytearray()
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in self.iter_body(resp, route, label, what=what):
                    data += chunk
                    if len(data) > limit:
                        raise WaveError(Errors.MANIFEST_INVALID, f"{label} is over the {limit} byte limit")
        except TimeoutError:
            resp.close()
            raise self.deadline_error(route, label, what or f"registry {route.name}") from None
        except BaseException:
            resp.close()  # cancelled or refused mid-body: the connection is not reused
            raise
        return bytes(data)

    async def iter_body(
        self,
        resp: aiohttp.ClientResponse,
        route: RegistryRoute,
        label: str,
        *,
        what: str = "",
        chunk_size: int = 1 << 16,
    ) -> AsyncIterator[bytes]:
        """The body in chunks; a stall, a cut connection or a crawl is a WaveError naming the image.

        A crawl: once the stream is older than the exchange deadline, it must have
        averaged ``min_stream_rate`` bytes a second (a drip never trips read_timeout).
        """
        what = what or f"registry {route.name}"
        iterator = resp.content.iter_chunked(chunk_size).__aiter__()
        started, received = time.monotonic(), 0
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                self.breakers.succeeded(route.name)
                return
            except TimeoutError as exc:
                self.breakers.failed(route.name)
                raise self.timeout_error(route, label, exc, what) from None
            except aiohttp.ClientError as exc:
                self.breakers.failed(route.name)
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE, f"{label}: {what} cut the transfer ({type(exc).__name__})"
                ) from None
            received += len(chunk)
            self._check_rate(route, label, what, started, received)
            yield chunk

    def _check_rate(self, route: RegistryRoute, label: str, what: str, started: float, received: int) -> None:
        elapsed = time.monotonic() - started
        rate = self.limits.min_stream_rate
        if elapsed > self.limits.exchange_deadline and received < rate * elapsed:
            self.breakers.failed(route.name)
            raise WaveError(
                Errors.UPSTREAM_TIMEOUT,
                f"{label}: {what} sent {received} bytes in {elapsed:.0f}s, under {rate} bytes/s "
                "([upstream].min_stream_rate); the transfer was cut, retry later",
            )
