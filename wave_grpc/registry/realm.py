"""The Bearer token exchange with a registry's token service (its challenge's realm).

Asked with the challenge's ``service`` and the request's ``scope`` values,
anonymously or with the route's credentials as Basic. Caching and sharing one
fetch among concurrent requests are the client's (wave_grpc/registry/client.py).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from multidict import CIMultiDict
from yarl import URL

from wave_grpc.config import RegistryRoute
from wave_grpc.errors import Errors, WaveError
from wave_grpc.registry.auth import DEFAULT_TOKEN_SECONDS, AuthScheme, basic_authorization, denied
from wave_grpc.registry.policy import contactable_url
from wave_grpc.registry.transport import Transport

# A token answer is a small JSON document; refuse to buffer anything bigger.
MAX_TOKEN_BYTES = 1 << 20


async def fetch_bearer_token(
    transport: Transport, route: RegistryRoute, scheme: AuthScheme, scopes: tuple[str, ...], label: str
) -> tuple[str, float]:
    """A fresh token for ``scopes`` and its lifetime in seconds; refusals are errors naming the registry."""
    realm = urlsplit(scheme.realm)
    what = f"the token service of registry {route.name} ({realm.scheme}://{realm.netloc})"
    if not contactable_url(scheme.realm):
        raise WaveError(
            Errors.UPSTREAM_UNAVAILABLE, f"{label}: registry {route.name} sent an unusable token realm; not fetched"
        )
    headers: CIMultiDict[str] = CIMultiDict({"Accept": "application/json", "Accept-Encoding": "identity"})
    basic = basic_authorization(route)
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
    resp = await transport.send(route, "GET", url, headers, label, what)
    try:
        if resp.status in (401, 403):
            raise denied(route, label, resp.status, await transport.upstream_said(resp, route), by=what)
        if resp.status != 200:
            said = await transport.upstream_said(resp, route)
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: {what} answered HTTP {resp.status}{said}",
            )
        raw = await transport.read_limited(route, resp, MAX_TOKEN_BYTES, label, what)
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
    return token, expires_in
