"""What the registry client asks of a site cache: verified content by digest.

A route with ``blobs = "cache"`` keeps its pinned manifests and configs in the
site cache (``[cache].store``, wave_grpc/stores/blobcache.py), so that after a
restart, on any replica, a token's pulls and a tag already resolved need no
upstream at all. The store lives above this package; the client only sees this
seam, installed by whoever opens both (the gateway app, the service, the CLI).
"""

from __future__ import annotations

from typing import Protocol

from wave_grpc.image.digest import Digest


class PinnedContent(Protocol):
    async def stored(self, digest: Digest, limit: int) -> bytes | None:
        """The stored bytes of ``digest`` (verified, at most ``limit`` of them), or None."""
        ...

    async def keep(self, digest: Digest, data: bytes) -> None:
        """Store ``data``, whose digest the caller has verified; a failure is logged, never raised."""
        ...
