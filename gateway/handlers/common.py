"""What every token route does first: find the token's image and check the name."""

from __future__ import annotations

from aiohttp import web

from gateway.clients import GUESSES, client_address
from gateway.keys import RESOLVER
from gateway.resolver import TokenImage
from wave_grpc.errors import Errors, WaveError
from wave_grpc.record import unknown_token_name


async def token_image(request: web.Request) -> TokenImage:
    """The token's image, if the name is the one it was created for; unknown-token answers
    count against the client's address ([limits].token_misses_per_minute)."""
    token = request.match_info["token"]
    name = request.match_info["name"]
    guesses = request.app[GUESSES]
    # The client's address costs a header walk: a warm pull only needs it while someone is refused.
    if guesses.refusing:
        guesses.check(client_address(request))
    try:
        image = await request.app[RESOLVER].resolve(token)
        if name != image.source.repository:
            raise unknown_token_name()
    except WaveError as exc:
        if exc.kind is Errors.NAME_UNKNOWN:
            await guesses.missed(client_address(request))
        raise
    return image
