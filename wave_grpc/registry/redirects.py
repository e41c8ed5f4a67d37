"""Following a registry's redirects (blob storage, a CDN) without leaking its credentials."""

from __future__ import annotations

from urllib.parse import urljoin

import aiohttp
from multidict import CIMultiDict

from wave_grpc.config import RegistryRoute
from wave_grpc.errors import Errors, WaveError
from wave_grpc.registry.exchange import origin
from wave_grpc.registry.policy import contactable_url
from wave_grpc.registry.transport import Transport

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def follow_redirects(
    transport: Transport,
    route: RegistryRoute,
    method: str,
    resp: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
    label: str,
) -> aiohttp.ClientResponse:
    """Follow a registry's redirects (blob storage, a CDN). ``Authorization``
    goes only to the registry's own origin; every hop must be http(s) and not
    link-local."""
    registry_origin = origin(route.endpoint)
    for _ in range(MAX_REDIRECTS):
        location = resp.headers.get("Location", "")
        base = str(resp.url)
        resp.release()
        target = urljoin(base, location) if location else ""
        if not contactable_url(target):
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: registry {route.name} redirected to an unusable location; not followed",
            )
        hop_headers = CIMultiDict(headers)
        if origin(target) != registry_origin:
            hop_headers.popall("Authorization", None)
        resp = await transport.send(route, method, target, hop_headers, label, f"blob storage of {route.name}")
        if resp.status not in REDIRECT_STATUSES:
            return resp
    resp.release()
    raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{label}: registry {route.name} redirected too many times")
