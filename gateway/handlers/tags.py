"""``/v2/wt/<token>/<name>/tags/list``: the token's one tag (skopeo inspect calls it)."""

from __future__ import annotations

import json

from aiohttp import web

from gateway.handlers.common import token_image


async def list_tags(request: web.Request) -> web.Response:
    image = await token_image(request)
    tags = [image.tag]
    last = request.query.get("last")
    if last is not None:
        tags = [t for t in tags if t > last]
    if request.query.get("n", "").isdigit():
        tags = tags[: int(request.query["n"])]
    # The repository name as the client addressed it, token prefix included.
    name = f"wt/{request.match_info['token']}/{request.match_info['name']}"
    body = json.dumps({"name": name, "tags": tags}).encode()
    return web.Response(body=body, content_type="application/json")
