"""The route table: every path the gateway serves, as data."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.handlers import base, blobs, manifests, tags

_NAME = r"{name:[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*}"
_TOKEN_PARAM = "{token:[a-z0-9]+}"  # noqa: S105 - a path pattern, not a secret


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]


# GET routes answer HEAD too, with the same headers (aiohttp's add_get).
ROUTES: tuple[Route, ...] = (
    Route("base", "/v2/", base.api_version),
    Route("manifest", f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/manifests/{{reference}}", manifests.get_manifest),
    Route("blob", f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/blobs/{{digest}}", blobs.get_blob),
    Route("tags", f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/tags/list", tags.list_tags),
)


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_get(route.path, route.handler, name=route.name)

    # Writes are not part of this registry: answer them with UNSUPPORTED, not 404.
    async def read_only(request: web.Request) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPNotFound()
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])

    app.router.add_route("*", "/v2/{tail:.*}", read_only)
