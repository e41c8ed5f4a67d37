"""``/v2/wt/<token>/<name>/manifests/<reference>`` (GET and HEAD)."""

from __future__ import annotations

from aiohttp import web

from gateway.handlers.common import content_headers, token_image
from wave_grpc.errors import Errors, WaveError, brief
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MediaType

_INDEX_TYPES = {str(MediaType.OCI_INDEX), str(MediaType.DOCKER_LIST), "*/*", "application/*"}


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


async def get_manifest(request: web.Request) -> web.StreamResponse:
    image = await token_image(request)
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
