"""Answers prepared once: a manifest's body and headers, ready for every GET and HEAD of it.

A warm pull is the same few bytes over and over. Building the headers (the digest
as text, the length, the ETag) and choosing the blob per request cost more than
the lookup that replaces them: a token's image keeps its prepared answers
(gateway/resolver.py ``TokenImage.answers``), so a hit is a dictionary lookup and
a write.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from wave_grpc.image.rewrite import Blob


def content_headers(media_type: str, digest: str, length: int) -> dict[str, str]:
    """The headers GET and HEAD share, byte for byte."""
    return {
        "Content-Type": media_type,
        "Docker-Content-Digest": digest,
        "Content-Length": str(length),
        "ETag": f'"{digest}"',
    }


@dataclass(frozen=True, slots=True)
class PreparedAnswer:
    """A blob as its response: the body and the headers GET and HEAD share."""

    body: bytes
    headers: CIMultiDictProxy[str]

    @classmethod
    def of(cls, blob: Blob) -> PreparedAnswer:
        headers = content_headers(blob.media_type, str(blob.digest), len(blob.data))
        return cls(blob.data, CIMultiDictProxy(CIMultiDict(headers)))

    def response(self, method: str) -> web.Response:
        if method == "HEAD":
            return web.Response(headers=self.headers)
        return web.Response(body=self.body, headers=self.headers)
