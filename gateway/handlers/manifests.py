"""``/v2/wt/<token>/<name>/manifests/<reference>`` (GET and HEAD)."""

from __future__ import annotations

from aiohttp import web

from gateway.handlers.common import content_headers, token_image
from gateway.keys import CONFIG, LIMITER, METRICS
from wave_grpc.errors import Errors, WaveError, brief
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MediaType
from wave_grpc.record import TokenRecord

# Every index type MediaType knows, and the wildcards that cover them.
_INDEX_TYPES = frozenset({*(str(m) for m in MediaType if m.is_index), "*/*", "application/*"})


def accepts_index(request: web.Request) -> bool:
    """True when the client lists an index type (or a wildcard) in any Accept header.

    Clients send one Accept header per type, so read them all. With no Accept
    at all we answer the plain image manifest, which every client can read.
    """
    for header in request.headers.getall("Accept", []):
        for item in header.split(","):
            if item.split(";")[0].strip().lower() in _INDEX_TYPES:
                return True
    return False


async def _count_pull(request: web.Request, record: TokenRecord) -> None:
    """Manifest GETs count against the token's owner, as Seqera Wave counts pulls (blobs do not);
    against the token itself when the service did not name the owner (no gateway secret)."""
    limit = request.app[CONFIG].limits.pulls_per_minute
    if not limit or request.method != "GET":
        return
    wait = await request.app[LIMITER].hit(f"pull:{record.pull_key}", limit)
    if wait is not None:
        request.app[METRICS].rate_limited.labels("pull").inc()
        raise WaveError(
            Errors.TOO_MANY_REQUESTS,
            f"this token's owner is over {limit} pulls a minute ([limits].pulls_per_minute); retry in {wait:.0f}s",
            retry_after=wait,
        )


async def get_manifest(request: web.Request) -> web.StreamResponse:
    image = await token_image(request)
    await _count_pull(request, image.record)
    reference = request.match_info["reference"]
    if ":" in reference:
        blob = image.image.manifest_by_digest(Digest.parse(reference, field="reference"))
        if blob is None:
            raise WaveError(Errors.MANIFEST_UNKNOWN, f"manifest {reference} is not part of this augmented image")
    elif reference == image.tag:
        blob = image.image.top_level(accepts_index(request))
    else:
        raise WaveError(
            Errors.MANIFEST_UNKNOWN,
            f"tag {brief(reference)} is not served under this token; it serves {image.tag!r}",
        )
    headers = content_headers(blob.media_type, str(blob.digest), len(blob.data))
    if request.method == "HEAD":
        return web.Response(headers=headers)
    return web.Response(body=blob.data, headers=headers)
