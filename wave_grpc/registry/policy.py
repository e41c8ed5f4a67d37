"""The address policy: the one place that decides whether a host or a URL may be contacted or handed out.

Every URL the service or the gateway meets on behalf of a caller goes through
here: a registry endpoint, a token realm a registry announces, a redirect hop,
an http(s) layer location a runtime will be sent to, an upstream redirect
relayed to a runtime.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult

from wave_grpc.addresses import as_ipv4, ip_literal, plain_host_name, public_unicast
from wave_grpc.config import Config
from wave_grpc.errors import invalid_argument


def forbidden_host(host: str) -> bool:
    """Addresses no route may reach even by redirect, in any spelling: link-local (cloud
    metadata endpoints live at 169.254.169.254 and fe80::), unspecified and multicast."""
    literal = ip_literal(host)
    if literal is None:
        return False
    address = as_ipv4(literal)
    return address.is_link_local or address.is_unspecified or address.is_multicast


class AddressRefused(OSError):
    """A connection the address policy refused (raised from name resolution, so before any connect)."""


class Listeners:
    """This deployment's own listening addresses: never a registry, whatever a route says."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self._pairs: set[tuple[str, int]] = set()
        self._any_ports: set[int] = set()
        for address in addresses:
            host, _, port_text = address.rpartition(":")
            if not port_text.isdigit() or int(port_text) == 0:
                continue
            host = host.strip("[]")
            if host in ("", "0.0.0.0", "::"):
                self._any_ports.add(int(port_text))
            else:
                self._pairs.add((host, int(port_text)))
        # Looked up once, here at startup: never a blocking lookup in the connect path.
        self._local: set[str] = set()
        if self._any_ports:
            with contextlib.suppress(OSError):
                self._local = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}

    def include(self, address: str, port: int) -> bool:
        if (address, port) in self._pairs:
            return True
        if port in self._any_ports:
            literal = ip_literal(address)
            return literal is not None and (literal.is_loopback or str(literal) in self._local)
        return False


class PolicyConnector(aiohttp.TCPConnector):
    """A connector that decides on the resolved address, at connect time, for every spelling.

    aiohttp skips the resolver for IP literals; the check sits after resolution
    so that literals, names and their results are judged alike. ``public_only``
    refuses every address that is not public unicast (for registries no
    ``[[registries]]`` entry lists, and everything reached on their behalf).
    """

    def __init__(
        self,
        *,
        public_only: bool,
        listeners: Listeners,
        proxies: frozenset[tuple[str, int]] = frozenset(),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._public_only = public_only
        self._listeners = listeners
        # The egress proxies (host, port) as configured: the operator's, connected to whatever their address.
        self._proxies = proxies

    def allowed(self, address: str, port: int) -> bool:
        if self._listeners.include(address, port):
            return False
        if not self._public_only:
            return True
        literal = ip_literal(address)
        return literal is not None and public_unicast(literal)

    async def _resolve_host(self, host: str, port: int, traces: Sequence[Any] | None = None) -> list[ResolveResult]:
        if (host, port) in self._proxies:
            return await super()._resolve_host(host, port, traces)
        return await self.judge(host, port, traces)

    async def judge(self, host: str, port: int, traces: Sequence[Any] | None = None) -> list[ResolveResult]:
        """The addresses of ``host`` this route may contact; AddressRefused when there are none.

        Called for every connection, and by the transport for a target it sends to an
        egress proxy (which would otherwise resolve it where the policy cannot see).
        """
        results = await super()._resolve_host(host, port, traces)
        allowed = [r for r in results if self.allowed(r["host"], r["port"])]
        if not allowed:
            raise AddressRefused(f"{host}:{port} is not an address this route may contact")
        return allowed


def contactable_url(url: str) -> bool:
    """May the service follow this URL (a redirect hop, a token realm, a relayed redirect)?

    It must be http(s) with a host, and the host must not be a forbidden address.
    """
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not forbidden_host(parts.hostname or "")


def host_matches(pattern: str, host: str, port: int | None) -> bool:
    """``host``, ``host:port``, ``[v6]:port`` or ``*.suffix`` against a URL's host and port."""
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
    if not plain_host_name(host):
        raise invalid_argument(
            field,
            f"host {host[:64]} is an address, not a host name; layer_hosts match host names only, so "
            "upload the layer (data: or UploadLayer) or use a URL on a host listed in [upstream].layer_hosts",
        )
    if parts.username or parts.password:
        raise invalid_argument(field, "must not carry credentials (user:password@); use a presigned URL or upload")
    if not any(host_matches(p, host, port) for p in config.upstream.layer_hosts):
        listed = ", ".join(config.upstream.layer_hosts) or "none"
        raise invalid_argument(
            field,
            f"host {host}{f':{parts.port}' if parts.port else ''} is not an allowed layer host (allowed: {listed}); "
            "upload the layer (data: or UploadLayer) or ask the operator to add it to [upstream].layer_hosts",
        )
