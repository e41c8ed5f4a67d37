"""``/v2/wt/<token>/<name>/referrers/<digest>`` (GET and HEAD): the OCI distribution-spec 1.1 referrers API.

A referrer is a manifest pushed with a ``subject`` naming another manifest (a
signature, an SBOM). Nothing can push to an ephemeral name, because the gateway is
read-only, so every list is empty. It is still answered with ``200`` and an empty
image index rather than ``404``: the spec forbids a ``404`` from a registry that
supports the API, and a client that gets one falls back to the referrers tag
schema, which costs it another request that can only fail here.
"""

from __future__ import annotations

import json

from aiohttp import web

from gateway.handlers.common import token_image
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MediaType

ARTIFACT_TYPE_FILTER = "artifactType"
EMPTY_REFERRERS = json.dumps(
    {"schemaVersion": 2, "mediaType": str(MediaType.OCI_INDEX), "manifests": []}, separators=(",", ":")
).encode()


async def list_referrers(request: web.Request) -> web.Response:
    # The token and name first, as on the manifests route: an unknown token answers
    # alike whatever else the path holds.
    await token_image(request)
    # Any well-formed digest, not only this image's manifests: the spec lets a
    # referrer name a subject the repository does not hold (it is pushed later).
    Digest.parse(request.match_info["digest"], field="digest")
    headers = {"Content-Type": str(MediaType.OCI_INDEX), "Content-Length": str(len(EMPTY_REFERRERS))}
    # Filtering an empty list leaves it empty, so the filter is always applied; the
    # header tells the client it need not filter again. An empty value names no type.
    if any(request.query.getall(ARTIFACT_TYPE_FILTER, [])):
        headers["OCI-Filters-Applied"] = ARTIFACT_TYPE_FILTER
    if request.method == "HEAD":
        return web.Response(headers=headers)
    return web.Response(body=EMPTY_REFERRERS, headers=headers)
