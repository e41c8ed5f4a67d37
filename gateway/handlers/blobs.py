"""``/v2/wt/<token>/<name>/blobs/<digest>`` (GET and HEAD).

Only blobs the augmented manifest references are served: the rewritten config
(from memory), injected layers (the layer store's answer, or a redirect to
their http(s) location on an allowed host) and base layers (the source
registry's answer, wave_grpc/registry/blobs.py). The handler knows no store
class: it renders the answer it is given.

Streams are hashed on the way through with flat memory; on a mismatch or an
upstream failure after the headers went out, the connection is cut so a client
never accepts a wrong or short blob (the last chunk waits for the digest check,
so the cut comes before the blob's last byte).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from aiohttp import web

from gateway.answers import content_headers
from gateway.errors import API_VERSION_HEADER
from gateway.handlers.common import token_image
from gateway.keys import CONFIG, LAYERS, UPSTREAM
from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.ref import ImageRef
from wave_grpc.registry.blobs import BlobAnswer, LocalFile, Redirect, Stream, honoured_range, registry_blob
from wave_grpc.registry.policy import check_layer_location
from wave_grpc.stores.layers import STORE_SCHEME

log = logging.getLogger("gateway")

OCTET_STREAM = "application/octet-stream"


async def get_blob(request: web.Request) -> web.StreamResponse:
    image = await token_image(request)
    digest = Digest.parse(request.match_info["digest"], field="digest")
    range_header = honoured_range(request.method, request.headers.get("Range", ""))
    config = image.image.config_by_digest(digest)
    if config is not None:
        return _in_memory(request, config.data, digest, range_header)
    layer = image.injected.get(digest)
    answer: BlobAnswer
    if layer is not None:
        if layer.location.startswith(STORE_SCHEME):
            answer = await request.app[LAYERS].answer(digest, request.method, range_header)
        else:
            answer = _injected_location(request, layer.location, digest)
    elif digest in image.image.base_layers:
        source = image.source
        answer = await registry_blob(
            request.app[UPSTREAM], source.registry, source.repository, digest, request.method, range_header
        )
    elif digest in image.image.included:
        # A layer of an included image: served from that image's registry, under the same rules.
        included = ImageRef.parse(image.image.included[digest])
        answer = await registry_blob(
            request.app[UPSTREAM], included.registry, included.repository, digest, request.method, range_header
        )
    else:
        raise WaveError(Errors.BLOB_UNKNOWN, f"blob {digest} is not part of this augmented image")
    return await render(request, answer, digest)


def _in_memory(request: web.Request, data: bytes, digest: Digest, range_header: str) -> web.Response:
    """A blob held in memory (the rewritten config), whole or the one byte range asked for,
    answered as a stored layer's file is: ``206`` with ``Content-Range``, or ``416``."""
    size = len(data)
    headers = content_headers(OCTET_STREAM, str(digest), size)
    if not range_header:
        return web.Response(headers=headers) if request.method == "HEAD" else web.Response(body=data, headers=headers)
    try:
        # aiohttp's parse of the one range honoured_range let through: a slice, or ValueError.
        wanted = request.http_range
    except ValueError:
        wanted = slice(size, size)
    start, stop, _ = wanted.indices(size)
    if start >= stop:
        raise WaveError(
            Errors.RANGE_NOT_SATISFIABLE,
            f"{range_header} selects none of the blob's {size} bytes; omit Range for the whole blob",
            blob_size=size,
        )
    headers["Content-Length"] = str(stop - start)
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    return web.Response(status=206, body=data[start:stop], headers=headers)


def _injected_location(request: web.Request, location: str, digest: Digest) -> Redirect:
    """Re-check the allow-list at pull time: a host removed from ``layer_hosts``
    after a token was created is not redirected to any more."""
    try:
        check_layer_location(request.app[CONFIG], location, "location")
    except WaveError as exc:
        raise WaveError(
            Errors.NOT_ROUTED,
            f"layer {digest}: its http(s) location is no longer allowed by this deployment ({exc.message})",
        ) from None
    return Redirect(location)


async def render(request: web.Request, answer: BlobAnswer, digest: Digest) -> web.StreamResponse:
    """The answer as an HTTP response; a stream's upstream response is released whatever happens."""
    if isinstance(answer, LocalFile):
        # FileResponse stats the file itself for Content-Length (and ranges).
        headers = content_headers(OCTET_STREAM, str(digest), 0)
        headers.pop("Content-Length")
        response = web.FileResponse(answer.path, headers=headers)
        if "Range" in request.headers and not honoured_range(request.method, request.headers["Range"]):
            # A Range we ignore (several ranges, a malformed one): FileResponse would answer
            # 416; HTTP says serve the whole blob. It reads the Range of the request it is
            # prepared with, so it is prepared here with one that has none.
            response.headers.update(API_VERSION_HEADER)
            headers_without_range = request.headers.copy()
            del headers_without_range["Range"]
            await response.prepare(request.clone(headers=headers_without_range))
        return response
    if isinstance(answer, Redirect):
        return redirect(answer, digest)
    try:
        return await _stream(request, answer, digest)
    finally:
        await answer.close()


def redirect(answer: Redirect, digest: Digest) -> web.Response:
    """Always ``307``: a ``301``/``308`` would let a client remember a presigned,
    short-lived URL as the permanent home of this token's path, and ``302``/``303``
    may turn a HEAD into a GET. A relayed upstream redirect closes the connection,
    because the runtime's next request for this blob goes to the CDN; like Seqera
    Wave, the gateway does not keep an idle connection per relayed layer."""
    headers = {"Location": answer.location, "Docker-Content-Digest": str(digest), "Content-Length": "0"}
    response = web.Response(status=307, headers=headers)
    if answer.relayed:
        response.force_close()
    return response


async def _stream(request: web.Request, answer: Stream, digest: Digest) -> web.StreamResponse:
    headers = {"Content-Type": OCTET_STREAM, "Docker-Content-Digest": str(digest)}
    if answer.content_range is not None:
        headers["Content-Range"] = answer.content_range
    response = web.StreamResponse(status=206 if answer.partial else 200, headers=headers)
    if answer.length is not None:
        response.content_length = answer.length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    # A slice cannot be checked against the blob's digest; the runtime checks the whole.
    # A verified stream ends only once its producer matched the digest (no second hash).
    hasher = None if answer.partial or answer.verified else hashlib.sha256()
    send_timeout = request.app[CONFIG].gateway.send_timeout.total_seconds()
    # A client that stops reading would hold this connection and the upstream one forever.
    watch = _SendWatch(send_timeout)
    # Each chunk goes out once the next one has arrived: the last is held back until the
    # whole blob is hashed, so that with a Content-Length a wrong blob never arrives whole
    # (cutting after the last byte would come too late for a client counting bytes).
    held: bytes = b""
    try:
        async for chunk in answer.chunks:
            if held:
                await watch.write(response, held)
            if hasher is not None:
                # On the loop, not a worker thread: measured interleaved on 256 MiB proxy streams
                # here, hashing on a thread cost 1.71 and 2.01 CPU s per GB against 1.29 inline
                # and gained no MB/s: the client and the registry keep the other core busy, and
                # the thread waits up to the GIL's 5 ms switch interval to hand back each chunk.
                hasher.update(chunk)
            held = chunk
        if hasher is not None and hasher.hexdigest() != digest.hex:
            log.error("%s: upstream sent bytes of another digest; cutting the connection", answer.label)
            _cut(request)
            return response
        if held:
            await watch.write(response, held)
    except asyncio.CancelledError:
        if not watch.ours():
            raise
        log.info("%s: the client took nothing for %gs ([gateway].send_timeout); closing", answer.label, send_timeout)
        _cut(request)
        return response
    except WaveError as exc:
        # The status line is out: the only honest signal left is a cut connection.
        log.warning("%s; cutting the connection to the client", exc.message)
        _cut(request)
        return response
    except ConnectionResetError:
        log.info("%s: the client went away mid-transfer", answer.label)
        return response
    finally:
        watch.close()
    await response.write_eof()
    return response


class _SendWatch:
    """``[gateway].send_timeout`` for each write of a stream, with one timer for the whole stream.

    ``asyncio.timeout`` around every chunk's write made and cancelled a timer per
    chunk: about 6 % of the event loop's time in a proxy-mode stream (py-spy).
    Here a write only records when it started; the timer, fired at most once per
    ``send_timeout``, cancels the task if the write under way has waited that long.
    """

    def __init__(self, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._timeout = timeout
        self._started: float | None = None
        self._fired = False
        self._handle = self._loop.call_later(timeout, self._check)

    async def write(self, response: web.StreamResponse, data: bytes) -> None:
        self._started = self._loop.time()
        await response.write(data)
        self._started = None

    def _check(self) -> None:
        now, started = self._loop.time(), self._started
        if started is None:
            self._handle = self._loop.call_at(now + self._timeout, self._check)
        elif now - started < self._timeout:
            self._handle = self._loop.call_at(started + self._timeout, self._check)
        else:
            self._fired = True
            self._task.cancel()

    def ours(self) -> bool:
        """Called on a CancelledError: was it this watch's (and no one else's)? Then it is taken back."""
        return self._fired and self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        self._handle.cancel()


def _cut(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
