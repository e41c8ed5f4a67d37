"""``/v2/wt/<token>/<name>/manifests/<reference>`` (GET and HEAD)."""

from __future__ import annotations

from aiohttp import web

from gateway.answers import PreparedAnswer
from gateway.handlers.common import token_image
from gateway.keys import CONFIG, LIMITER, METRICS
from gateway.resolver import TokenImage
from wave_grpc.errors import Errors, WaveError, brief
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MediaType
from wave_grpc.image.rewrite import Blob
from wave_grpc.record import TokenRecord

# Every index type MediaType knows, and the wildcards that cover them.
_INDEX_TYPES = frozenset({*(str(m) for m in MediaType if m.is_index), "*/*", "application/*"})


# Accept header values -> whether they take an index: runtimes send the same few over and over.
# Bounded whatever clients send (emptied when full), as the access log's redacted paths are.
_ACCEPTS: dict[tuple[str, ...], bool] = {}
_ACCEPTS_KEPT = 256


def _takes_index(headers: tuple[str, ...]) -> bool:
    for header in headers:
        for item in header.split(","):
            if item.split(";")[0].strip().lower() in _INDEX_TYPES:
                return True
    return False


def accepts_index(request: web.Request) -> bool:
    """True when the client lists an index type (or a wildcard) in any Accept header.

    Clients send one Accept header per type, so read them all. With no Accept
    at all we answer the plain image manifest, which every client can read.
    """
    headers = tuple(request.headers.getall("Accept", ()))
    answer = _ACCEPTS.get(headers)
    if answer is None:
        answer = _takes_index(headers)
        if len(_ACCEPTS) >= _ACCEPTS_KEPT:
            _ACCEPTS.clear()
        _ACCEPTS[headers] = answer
    return answer


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


def _manifest(image: TokenImage, reference: str, takes_index: bool) -> Blob:
    """The manifest ``reference`` names under this token, or MANIFEST_UNKNOWN."""
    if ":" in reference:
        blob = image.image.manifest_by_digest(Digest.parse(reference, field="reference"))
        if blob is None:
            raise WaveError(Errors.MANIFEST_UNKNOWN, f"manifest {reference} is not part of this augmented image")
        return blob
    if reference == image.tag:
        return image.image.top_level(takes_index)
    raise WaveError(
        Errors.MANIFEST_UNKNOWN,
        f"tag {brief(reference)} is not served under this token; it serves {image.tag!r}",
    )


async def get_manifest(request: web.Request) -> web.StreamResponse:
    image = await token_image(request)
    await _count_pull(request, image.record)
    key = (request.match_info["reference"], accepts_index(request))
    answer = image.answers.get(key)
    if answer is None:
        # Only references the image has get here (others raise): at most two answers per manifest.
        answer = image.answers[key] = PreparedAnswer.of(_manifest(image, *key))
    return answer.response(request.method)
