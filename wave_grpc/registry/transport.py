"""HTTP to registries: one pooled session, TLS per route, retries with backoff, bounded reads.

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
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from wave_grpc import __version__
from wave_grpc.config import Config, RegistryRoute
from wave_grpc.errors import Errors, WaveError
from wave_grpc.metrics import Metrics
from wave_grpc.registry.auth import hint_credentials
from wave_grpc.registry.policy import AddressRefused, Listeners, PolicyConnector

log = logging.getLogger(__name__)

# A Retry-After longer than this is not waited out (Docker Hub may say hours):
# the caller gets TOOMANYREQUESTS at once, with the wait in the message.
MAX_RETRY_AFTER = 10.0
USER_AGENT = f"wave-grpc/{__version__}"
_ERROR_CODE = re.compile(r"^[A-Z_]{1,40}$")


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
        self, config: Config, *, max_backoff: float, scrub: Callable[[str], str], metrics: Metrics | None = None
    ) -> None:
        self._config = config
        self._metrics = metrics
        # Two pools: one for the registries the operator listed (they, their realms and
        # redirects may be anywhere), one that reaches public addresses only.
        self._listed: aiohttp.ClientSession | None = None
        self._unlisted: aiohttp.ClientSession | None = None
        self._listeners = Listeners((config.service.listen, config.gateway.listen, config.admin.listen))
        self._max_backoff = max_backoff
        self._scrub = scrub
        # ca_file -> its verifying context, built once.
        self._tls_contexts: dict[str, ssl.SSLContext] = {}

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
        connector = PolicyConnector(
            public_only=public_only, listeners=self._listeners, limit=256, limit_per_host=64, ttl_dns_cache=300
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT},
            # Blobs stream through: a larger read buffer means fewer, bigger socket reads.
            read_bufsize=1 << 20,
        )

    async def start(self) -> None:
        if self._listed is None:
            self._listed = self._new_session(public_only=False)
            self._unlisted = self._new_session(public_only=True)

    async def close(self) -> None:
        for session in (self._listed, self._unlisted):
            if session is not None:
                await session.close()
        self._listed = self._unlisted = None

    def session(self, route: RegistryRoute) -> aiohttp.ClientSession:
        session = self._listed if route.listed else self._unlisted
        if session is None:
            raise RuntimeError("Transport.start() was not called")
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
        """The upstream's own error (``CODE: message``), short and scrubbed; '' if none.

        For a registry no ``[[registries]]`` entry lists, at most its error code:
        a host an anonymous caller pointed us at may not speak through our errors.
        """
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
            code = str(first.get("code", ""))
            if not route.listed:
                code = code if _ERROR_CODE.match(code) else ""
                return f" ({code})" if code else ""
            text = f"{code}: {first.get('message', '')}".strip(": ")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            if not route.listed:
                return ""
            text = text.splitlines()[0] if text else ""
            if text.startswith("<"):  # an HTML error page says nothing useful
                text = ""
        text = self._scrub(text)[:200]
        return f' "{text}"' if text else ""

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        base = min(self._max_backoff, 0.25 * 2.0 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not crypto

    def _timeout(self, route: RegistryRoute) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=None,
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
    ) -> aiohttp.ClientResponse:
        """One HTTP exchange, counted in wave_grpc_upstream_requests_total."""
        registry = route.name if route.listed else "unlisted"
        try:
            resp = await self.session(route).request(
                method,
                url,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout(route),
                data=body() if body is not None else None,
                ssl=self._tls(route),
            )
        except BaseException:
            if self._metrics is not None:
                self._metrics.upstream_requests.labels(registry, "error").inc()
            raise
        if self._metrics is not None:
            self._metrics.upstream_requests.labels(registry, str(resp.status)).inc()
        return resp

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
        a multiple of the timeout it configured.
        """
        retries = self._config.upstream.retries
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = await self._counted(route, method, url, headers, body)
            except TimeoutError as exc:
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
                raise self.unreachable(route, label, exc, what, attempt) from None
            log.debug("%s %s -> %d", method, _without_query(str(url)), resp.status)
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
        length = resp.content_length
        if length is not None and length > limit:
            raise WaveError(Errors.MANIFEST_INVALID, f"{label} is {length} bytes, over the {limit} byte limit")
        data = bytearray()
        async for chunk in self.iter_body(resp, route, label, what=what):
            data += chunk
            if len(data) > limit:
                raise WaveError(Errors.MANIFEST_INVALID, f"{label} is over the {limit} byte limit")
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
        """The body in chunks; a stall or a cut connection is a WaveError naming the image."""
        what = what or f"registry {route.name}"
        iterator = resp.content.iter_chunked(chunk_size).__aiter__()
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise self.timeout_error(route, label, exc, what) from None
            except aiohttp.ClientError as exc:
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE, f"{label}: {what} cut the transfer ({type(exc).__name__})"
                ) from None
            yield chunk
