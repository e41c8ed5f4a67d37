"""How a blob is served, as a value: a local file, a redirect, or a stream.

Every layer store and the base-layer path answer one of these; the gateway's
blob handler only renders it (sendfile, ``307``, or a streamed body). A new
store (``s3://`` say) answers ``Redirect`` to a presigned URL or ``Stream``,
and no handler changes.

A base layer is answered the cheapest way that needs no credential on the
runtime's side, and never hands ours out (:func:`registry_blob`):

1. ``Redirect`` to the registry's own blob URL, when that URL needs no auth at
   all: a route without credentials, in ``redirect`` mode, to a registry whose
   ``/v2/`` answers without a challenge. Nothing is sent upstream.
2. Otherwise the registry itself is asked (anonymous Bearer token, or the
   route's credentials), redirects off. A ``3xx`` (the registry sends blobs to
   a CDN or object store with a presigned URL: Docker Hub, ghcr.io, quay.io,
   ECR) is relayed as a ``Redirect`` with an absolute location. A ``200`` (the
   registry serves the bytes and wants a token for them) is a ``Stream``.
3. ``blobs = "proxy"`` always streams, following upstream redirects here.
4. ``blobs = "cache"``: the site cache installed on the client answers
   (wave_grpc/stores/blobcache.py): from its store, or from one upstream fetch
   (:func:`upstream_blob`, as in proxy mode) that it keeps once verified.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import aiohttp

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.registry.client import RegistryClient
from wave_grpc.registry.redirects import REDIRECT_STATUSES

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 19
# The one blob that may be answered with no bytes at all.
EMPTY_BLOB = Digest.of(b"")
_BYTE_RANGE = re.compile(r"^bytes=(?:\d+-\d*|-\d+)$")


@dataclass(frozen=True, slots=True)
class LocalFile:
    """A verified blob on local disk: served with sendfile, ranges and all."""

    path: Path


@dataclass(frozen=True, slots=True)
class Redirect:
    """Send the runtime elsewhere. ``relayed``: the location came from an upstream
    redirect (a CDN), so the client's next request for it goes elsewhere."""

    location: str
    relayed: bool = False


@dataclass(frozen=True, slots=True)
class Stream:
    """Bytes relayed from an upstream. ``partial`` is a ``206`` slice (``content_range`` set),
    which cannot be checked against the blob's digest; a whole blob is hashed on the way.
    ``close`` releases the upstream response, whatever happened to the body. ``verified``:
    the producer hashes the blob itself and ends ``chunks`` only once the digest matched
    (raising otherwise), so the relay need not hash it again (the site cache's fill)."""

    chunks: AsyncGenerator[bytes, None]
    close: Callable[[], Awaitable[None]]
    label: str
    length: int | None = None
    content_range: str | None = None
    verified: bool = False

    @property
    def partial(self) -> bool:
        return self.content_range is not None


BlobAnswer = LocalFile | Redirect | Stream


def honoured_range(method: str, range_header: str) -> str:
    """The one ``Range`` a blob answer honours: a single ``bytes=start-[end]`` or ``bytes=-suffix``
    on a GET (runtimes resume interrupted layer downloads this way), else "" for the whole blob.

    Several ranges, other units and malformed values are ignored, which HTTP allows
    (the whole blob is sent); ``bytes=-0`` asks for nothing and is RANGE_NOT_SATISFIABLE.
    """
    value = range_header.strip()
    if method != "GET" or not value:
        return ""
    if value.replace(" ", "") == "bytes=-0":
        raise WaveError(Errors.RANGE_NOT_SATISFIABLE, "Range bytes=-0 asks for no bytes; omit Range for the whole blob")
    return value if _BYTE_RANGE.match(value) else ""


@runtime_checkable
class BlobSite(Protocol):
    """A site cache that serves base blobs too (asked for by capability on ``client.site``)."""

    async def serve(
        self, client: RegistryClient, registry: str, repository: str, digest: Digest, method: str, range_header: str
    ) -> BlobAnswer: ...


async def registry_blob(
    client: RegistryClient, registry: str, repository: str, digest: Digest, method: str, range_header: str = ""
) -> BlobAnswer:
    """A blob of ``registry/repository``, answered as the module docstring says."""
    site = client.site
    if isinstance(site, BlobSite) and client.route(registry).blobs == "cache":
        return await site.serve(client, registry, repository, digest, method, range_header)
    return await upstream_blob(client, registry, repository, digest, method, range_header)


async def upstream_blob(
    client: RegistryClient, registry: str, repository: str, digest: Digest, method: str, range_header: str = ""
) -> BlobAnswer:
    """A blob as the registry answers it (cases 1 to 3 of the module docstring; cache routes stream)."""
    direct = await client.anonymous_blob_url(registry, repository, digest)
    if direct is not None:
        return Redirect(direct)
    label = f"blob {registry}/{repository}@{digest}"
    proxy = client.route(registry).blobs in ("proxy", "cache")
    honoured = honoured_range(method, range_header)
    ranged = {"Range": honoured} if honoured else None
    stack = AsyncExitStack()

    async def send(follow: bool) -> aiohttp.ClientResponse:
        return await stack.enter_async_context(
            client.request(
                registry,
                repository,
                method,
                f"blobs/{digest}",
                allow_redirects=follow,
                not_found=Errors.BLOB_UNKNOWN,
                what=label,
                headers=ranged,
            )
        )

    try:
        resp = await send(follow=proxy)
        if resp.status in REDIRECT_STATUSES:
            location = client.relayable_location(resp)
            await stack.aclose()
            if location is not None:
                return Redirect(location, relayed=True)
            # A redirect we must not hand out (it carries a credential, or points
            # somewhere no runtime should go): fetch through it ourselves.
            log.info("%s: upstream redirect not relayable; streaming instead", label)
            resp = await send(follow=True)
        partial = resp.status == 206 and "Content-Range" in resp.headers
        if not partial and resp.content_length == 0 and digest != EMPTY_BLOB:
            # Relayed, it would arrive as a complete (empty) blob before any hash could
            # disagree: the Content-Length is the whole answer. Refused before a byte goes out.
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: registry {registry} answered HTTP {resp.status} with Content-Length 0 for a blob that "
                "is not empty; not relayed, retry later or check the registry's storage",
            )
    except BaseException:
        await stack.aclose()
        raise
    restore = _bigger_reads(resp)
    chunks = client.iter_body(resp, registry, label, chunk_size=STREAM_CHUNK)

    async def close() -> None:
        # The body iterator first (it may be suspended mid-transfer), then the response.
        await chunks.aclose()
        restore()
        await stack.aclose()

    return Stream(
        chunks=chunks,
        close=close,
        label=label,
        length=resp.content_length,
        content_range=resp.headers["Content-Range"] if partial else None,
    )


def _bigger_reads(resp: aiohttp.ClientResponse) -> Callable[[], None]:
    """Read the upstream socket ``STREAM_CHUNK`` bytes at a time while a blob streams; answer the undo.

    asyncio's plain-TCP transport reads 256 KiB per ``recv`` (its ``max_size``, a class
    attribute with no public setter), and each read costs a callback, a parse and a
    chunk through the event loop. Half as many of them, measured interleaved on a
    1 GiB proxy-mode stream against the 256 KiB reads: 1.58 against 1.77 CPU seconds
    per GB in the gateway. 1 MiB reads cost the same CPU and more memory (peak RSS per
    concurrent stream: 0.6 MB with 256 KiB, 1.6 MB with 512 KiB, 2.3 MB with 1 MiB).
    The pooled connection gets its default back when the stream is closed (a request
    that takes it from the pool before that only reads in bigger pieces). A transport
    without the attribute (TLS, uvloop) is left as it is. The natural home of this is
    the transport's session; it is here because only a streamed blob gains from it.
    """
    transport = resp.connection.transport if resp.connection is not None else None
    before = getattr(transport, "max_size", None)
    if transport is None or not isinstance(before, int) or before >= STREAM_CHUNK:
        return lambda: None
    setattr(transport, "max_size", STREAM_CHUNK)  # noqa: B010 - not a declared attribute of asyncio.Transport

    def restore() -> None:
        setattr(transport, "max_size", before)  # noqa: B010

    return restore
