"""Which egress proxy an upstream request goes through, and what its refusals mean.

The proxy is configured once (``[upstream].proxy``, or a ``[[registries]]`` entry's
own); every exchange the transport makes (resolution, token services, blobs,
pushes, the oci:// layer store) asks :meth:`Egress.proxy_for`. The address policy
still judges the target: for a registry no entry lists, the transport resolves the
target's name itself and refuses an internal address before the proxy is asked
(the proxy would reach it). A listed registry is the operator's trust, and its
name is left to the proxy to resolve (behind a corporate proxy, outside names
often do not resolve locally).
"""

from __future__ import annotations

from multidict import CIMultiDict
from yarl import URL

from wave_grpc.config import Config, RegistryRoute
from wave_grpc.config.egress import EgressProxy, egress_proxy
from wave_grpc.errors import Errors, WaveError
from wave_grpc.registry.policy import PolicyConnector


class Egress:
    """The proxy of every route: a listed registry's own, else ``[upstream].proxy``; ``no_proxy`` bypasses."""

    def __init__(self, config: Config) -> None:
        self._default = config.upstream.egress_proxy
        # Listed registries with a proxy setting of their own ("direct" is None here).
        self._own: dict[str, EgressProxy | None] = {
            route.name: egress_proxy(
                route.proxy, route.proxy_password_env, config.upstream.no_proxy, where=f"[[registries]] {route.name!r}"
            )
            for route in config.registries
            if route.proxy
        }

    @property
    def proxies(self) -> tuple[EgressProxy, ...]:
        return tuple(p for p in (self._default, *self._own.values()) if p is not None)

    @property
    def endpoints(self) -> frozenset[tuple[str, int]]:
        """The proxies' (host, port): the operator's, so the address policy lets the transport connect there."""
        return frozenset((p.host, p.port) for p in self.proxies)

    def proxy_for(self, route: RegistryRoute, url: str | URL) -> EgressProxy | None:
        proxy = self._own[route.name] if route.listed and route.name in self._own else self._default
        if proxy is None or proxy.bypassed_by(URL(url).host or ""):
            return None
        return proxy

    async def judged(self, route: RegistryRoute, url: str | URL, connector: object) -> EgressProxy | None:
        """The proxy of a request; for an unlisted registry, its target judged first by the address
        policy (``connector``'s): AddressRefused for an internal address, OSError when it does not resolve."""
        proxy = self.proxy_for(route, url)
        if proxy is not None and not route.listed:
            assert isinstance(connector, PolicyConnector)
            target = URL(url)
            await connector.judge(target.host or "", target.port or 443)
        return proxy


def proxy_headers(headers: CIMultiDict[str], url: str | URL, proxy: EgressProxy) -> CIMultiDict[str]:
    """The headers of a request a proxy forwards (a plain-http target; an https one is tunnelled,
    and the proxy's credentials go on its CONNECT: ``proxy_headers=proxy.authorization``).

    Repeated headers become one comma-joined line (RFC 9110 makes them equal): some proxies
    (tinyproxy) keep only the last of a repeated header, and a registry then sees one Accept.
    """
    if URL(url).scheme != "http":
        return headers
    folded: CIMultiDict[str] = CIMultiDict()
    for name in dict.fromkeys(k.lower() for k in headers):
        folded[name] = ", ".join(headers.getall(name))
    folded.update(proxy.authorization)
    return folded


def proxy_refused(proxy: EgressProxy, label: str, status: int, target: str) -> WaveError:
    """The proxy answered instead of the registry: 407 (our credentials; tinyproxy says 401), or it
    would not connect."""
    if status in (401, 407):
        fix = (
            f"check the user in {proxy.setting_key} ({proxy.username!r}) and the password from {proxy.credentials_from}"
            if proxy.password
            else f"it wants credentials: name the user in {proxy.setting_key} (http://user@host:port) and set "
            "proxy_password_env"
        )
        return WaveError(
            Errors.UPSTREAM_UNAVAILABLE,
            f"{label}: the egress proxy {proxy.url} refused our credentials (HTTP {status}) on the way to "
            f"{target}; {fix}",
        )
    return WaveError(
        Errors.UPSTREAM_UNAVAILABLE,
        f"{label}: the egress proxy {proxy.url} ({proxy.setting_key}) would not connect to {target} (HTTP {status}); "
        "ask its operator to allow it, or list the host in [upstream].no_proxy if it is reached directly",
    )


def proxy_unreachable(proxy: EgressProxy, label: str, text: str, attempts: int) -> WaveError:
    return WaveError(
        Errors.UPSTREAM_UNAVAILABLE,
        f"{label}: the egress proxy {proxy.url} is unreachable ({text}) after {attempts} attempt(s); check "
        f"{proxy.setting_key} and that the proxy is running",
    )
