"""``/v2/wt/<token>/<name>/blobs/<digest>`` (GET and HEAD).

Only blobs the augmented manifest references are served: the rewritten config
(from memory), injected layers (from the layer store, or a redirect to their
http(s) location on an allowed host) and base layers.

A base layer is served the cheapest way that needs no credential on the
runtime's side, and never hands ours out:

1. ``307`` to the registry's own blob URL, when that URL needs no auth at all:
   a route without credentials, in ``redirect`` mode, to a registry whose
   ``/v2/`` answers without a challenge. The gateway sends nothing upstream.
2. Otherwise the gateway asks the registry itself (anonymous Bearer token, or
   the route's credentials), redirects off. A ``3xx`` (the registry sends blobs
   to a CDN or object store with a presigned URL: Docker Hub, ghcr.io, quay.io,
   ECR) is relayed as a ``307`` with an absolute ``Location``. A ``200`` (the
   registry serves the bytes and wants a token for them) is streamed.
3. ``blobs = "proxy"`` always streams, following upstream redirects here.

Streams are hashed on the way through with flat memory; on a mismatch or an
upstream failure after the headers went out, the connection is cut so a client
never accepts a wrong or short blob.
"""

from __future__ import annotations

import hashlib
import logging
import re

import aiohttp
from aiohttp import web

from gateway.handlers.common import content_headers, token_image
from gateway.keys import CONFIG, LAYERS, UPSTREAM
from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.registry.client import REDIRECT_STATUSES, RegistryClient, check_layer_location
from wave_grpc.stores.layers import STORE_SCHEME
from wave_grpc.stores.oci import RegistryLayerStore

log = logging.getLogger("gateway")

OCTET_STREAM = "application/octet-stream"
STREAM_CHUNK = 1 << 18


def redirect(location: str, digest: Digest) -> web.Response:
    headers = {"Location": location, "Docker-Content-Digest": str(digest), "Content-Length": "0"}
    return web.Response(status=307, headers=headers)


def relay(location: str, digest: Digest) -> web.Response:
    """An upstream redirect passed on to the runtime.

    Always ``307``: a ``301``/``308`` would let a client remember a presigned,
    short-lived URL as the permanent home of this token's path, and ``302``/``303``
    may turn a HEAD into a GET. ``Connection: close`` because the runtime's next
    request for this blob goes to the CDN; like Seqera Wave, the gateway does not
    keep an idle connection per relayed layer.
    """
    response = redirect(location, digest)
    response.force_close()
    return response


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
        return _injected_redirect(request, layer.location, digest)
    if digest in image.image.base_layers:
        return await _registry_blob(request, image.source.registry, image.source.repository, digest)
    raise WaveError(Errors.BLOB_UNKNOWN, f"blob {digest} is not part of this augmented image")


def _injected_redirect(request: web.Request, location: str, digest: Digest) -> web.Response:
    """Re-check the allow-list at pull time: a host removed from ``layer_hosts``
    after a token was created is not redirected to any more."""
    try:
        check_layer_location(request.app[CONFIG], location, "location")
    except WaveError as exc:
        raise WaveError(
            Errors.NOT_ROUTED,
            f"layer {digest}: its http(s) location is no longer allowed by this deployment ({exc.message})",
        ) from None
    return redirect(location, digest)


async def _stored_layer(request: web.Request, digest: Digest) -> web.StreamResponse:
    store = request.app[LAYERS]
    if isinstance(store, RegistryLayerStore):
        # The layer lives in a registry repository: served like a base layer from there.
        return await _registry_blob(request, store.registry, store.repository, digest)
    path = store.path(digest)
    if path is None:
        raise WaveError(Errors.BLOB_UNKNOWN, f"layer {digest} is missing from the layer store")
    # FileResponse stats the file itself for Content-Length (and ranges).
    headers = content_headers(OCTET_STREAM, str(digest), 0)
    headers.pop("Content-Length")
    return web.FileResponse(path, headers=headers)


async def _registry_blob(request: web.Request, registry: str, repository: str, digest: Digest) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    direct = await upstream.anonymous_blob_url(registry, repository, digest)
    if direct is not None:
        return redirect(direct, digest)
    label = f"blob {registry}/{repository}@{digest}"
    proxy = upstream.route(registry).blobs == "proxy"
    ranged = single_range(request)
    async with upstream.request(
        registry,
        repository,
        request.method,
        f"blobs/{digest}",
        allow_redirects=proxy,
        not_found=Errors.BLOB_UNKNOWN,
        what=label,
        headers=ranged,
    ) as resp:
        if resp.status not in REDIRECT_STATUSES:
            return await _stream(request, upstream, registry, label, resp, digest)
        location = upstream.relayable_location(resp)
        if location is not None:
            return relay(location, digest)
    # A redirect we must not hand out (it carries a credential, or points
    # somewhere no runtime should go): fetch through it ourselves.
    log.info("%s: upstream redirect not relayable; streaming instead", label)
    async with upstream.request(
        registry,
        repository,
        request.method,
        f"blobs/{digest}",
        not_found=Errors.BLOB_UNKNOWN,
        what=label,
        headers=ranged,
    ) as resp:
        return await _stream(request, upstream, registry, label, resp, digest)


_BYTE_RANGE = re.compile(r"^bytes=\d+-\d*$")


def single_range(request: web.Request) -> dict[str, str] | None:
    """A single ``bytes=start-[end]`` range to forward upstream (runtimes resume
    interrupted layer downloads this way); anything else is served whole, which
    HTTP allows."""
    value = request.headers.get("Range", "").strip()
    return {"Range": value} if request.method == "GET" and _BYTE_RANGE.match(value) else None


async def _stream(
    request: web.Request,
    upstream: RegistryClient,
    registry: str,
    label: str,
    resp: aiohttp.ClientResponse,
    digest: Digest,
) -> web.StreamResponse:
    partial = resp.status == 206 and "Content-Range" in resp.headers
    headers = {"Content-Type": OCTET_STREAM, "Docker-Content-Digest": str(digest)}
    if partial:
        headers["Content-Range"] = resp.headers["Content-Range"]
    response = web.StreamResponse(status=206 if partial else 200, headers=headers)
    if resp.content_length is not None:
        response.content_length = resp.content_length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    # A slice cannot be checked against the blob's digest; the runtime checks the whole.
    hasher = None if partial else hashlib.sha256()
    try:
        async for chunk in upstream.iter_body(resp, registry, label, chunk_size=STREAM_CHUNK):
            if hasher is not None:
                hasher.update(chunk)
            await response.write(chunk)
    except WaveError as exc:
        # The status line is out: the only honest signal left is a cut connection.
        log.warning("%s; cutting the connection to the client", exc.message)
        _cut(request)
        return response
    except ConnectionResetError:
        log.info("%s: the client went away mid-transfer", label)
        return response
    if hasher is not None and hasher.hexdigest() != digest.hex:
        log.error("%s: upstream sent bytes of another digest; cutting the connection", label)
        _cut(request)
        return response
    await response.write_eof()
    return response


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
