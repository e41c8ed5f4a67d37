"""What every token route does first: find the token's image and check the name."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import RESOLVER
from gateway.resolver import TokenImage
from wave_grpc.record import unknown_token_name


async def token_image(request: web.Request) -> TokenImage:
    token = request.match_info["token"]
    name = request.match_info["name"]
    image = await request.app[RESOLVER].resolve(token)
    if name != image.source.repository:
        raise unknown_token_name()
    return image


def content_headers(media_type: str, digest: str, length: int) -> dict[str, str]:
    """The headers GET and HEAD share, byte for byte."""
    return {
        "Content-Type": media_type,
        "Docker-Content-Digest": digest,
        "Content-Length": str(length),
        "ETag": f'"{digest}"',
    }
