"""``/v2/wt/<token>/<name>/blobs/<digest>`` (GET and HEAD).

Only blobs the augmented manifest references are served: the rewritten config
(from memory), injected layers (from the layer store, or a redirect to their
http(s) location) and base layers (a redirect to the source registry, or a
stream when the route holds credentials or asks for ``proxy``).
"""

from __future__ import annotations

import hashlib
import logging

from aiohttp import web

from gateway.handlers.common import content_headers, token_image
from gateway.keys import LAYERS, UPSTREAM
from gateway.resolver import TokenImage
from wave_grpc.digest import Digest
from wave_grpc.errors import Errors, WaveError
from wave_grpc.layerstore import STORE_SCHEME

log = logging.getLogger("gateway")

OCTET_STREAM = "application/octet-stream"


def redirect(location: str, digest: Digest) -> web.Response:
    headers = {"Location": location, "Docker-Content-Digest": str(digest), "Content-Length": "0"}
    return web.Response(status=307, headers=headers)


async def get_blob(request: web.Request) -> web.StreamResponse:
    image = await token_image(request)
    digest = Digest.parse(request.match_info["digest"], field="digest")
    if digest == image.image.config.digest:
        config = image.image.config
        headers = content_headers(OCTET_STREAM, str(digest), len(config.data))
        return (
            web.Response(headers=headers)
            if request.method == "HEAD"
            else web.Response(body=config.data, headers=headers)
        )
    layer = image.injected.get(digest)
    if layer is not None:
        if layer.location.startswith(STORE_SCHEME):
            return await _stored_layer(request, digest)
        return redirect(layer.location, digest)
    if digest in image.image.base_layers:
        return await _base_layer(request, image, digest)
    raise WaveError(Errors.BLOB_UNKNOWN, f"blob {digest} is not part of this augmented image")


async def _stored_layer(request: web.Request, digest: Digest) -> web.StreamResponse:
    store = request.app[LAYERS]
    path = store.path(digest)
    size = await store.size(digest)
    if path is None or size is None:
        raise WaveError(Errors.BLOB_UNKNOWN, f"layer {digest} is missing from the layer store")
    headers = content_headers(OCTET_STREAM, str(digest), size)
    headers.pop("Content-Length")
    return web.FileResponse(path, headers=headers)


async def _base_layer(request: web.Request, image: TokenImage, digest: Digest) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    source = image.source
    route = upstream.route(source.registry)
    if route.blobs == "redirect" and not route.has_credentials:
        return redirect(upstream.direct_blob_url(source.registry, source.repository, digest), digest)
    return await stream_upstream_blob(request, image, digest)


async def stream_upstream_blob(request: web.Request, image: TokenImage, digest: Digest) -> web.StreamResponse:
    """Relay the blob with the route's credentials; they never reach the client.

    Bytes are hashed on the way through: on a mismatch the connection is cut
    before the response completes, so a client never accepts a wrong byte.
    """
    upstream = request.app[UPSTREAM]
    source = image.source
    async with upstream.request(
        source.registry,
        source.repository,
        request.method,
        f"blobs/{digest}",
        not_found=Errors.BLOB_UNKNOWN,
        what=f"blob {source.registry}/{source.repository}@{digest}",
    ) as resp:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": OCTET_STREAM, "Docker-Content-Digest": str(digest)}
        )
        if resp.content_length is not None:
            response.content_length = resp.content_length
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        hasher = hashlib.sha256()
        async for chunk in resp.content.iter_chunked(1 << 18):
            hasher.update(chunk)
            await response.write(chunk)
        if hasher.hexdigest() != digest.hex:
            log.error("upstream sent wrong bytes for %s; cutting the connection", digest)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
