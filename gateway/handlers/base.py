"""``/v2/``: the API version check every client starts with."""

from __future__ import annotations

from aiohttp import web


async def api_version(request: web.Request) -> web.Response:
    return web.Response(body=b"{}", content_type="application/json")
