"""``[cache]``: the site cache of routes with ``blobs = "cache"``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from wave_grpc.config.keys import Validated, setting, store_url
from wave_grpc.store_urls import StoreRole, StoreUrl


@dataclass(frozen=True)
class CacheConfig(Validated):
    """``[cache]``: the site cache of routes with ``blobs = "cache"`` (wave_grpc/stores/blobcache.py)."""

    # file://<dir> (one machine; served with sendfile) or oci://<registry>/<repository>
    # (shared by replicas; runtimes are redirected there as for the oci:// layer store).
    store: str = setting("file://.wave-grpc/cache", read=store_url(StoreRole.BLOB_CACHE))
    # Past this, the least recently used blobs are evicted by each garbage collection
    # ([layers].gc_interval and `wave-grpc gc`), never one a live token references or one
    # of a token expired less than [layers].gc_grace ago; 0: never evicted.
    max_size: int = setting(50 << 30, unit="bytes", at_least=0, zero_means="no limit")
    # Where a blob being fetched is written (and verified) before it is published; for a
    # file:// store, a directory under it (same file system, so publishing is a rename).
    staging: str = setting("")

    @cached_property
    def store_url(self) -> StoreUrl:
        return StoreUrl.parse(self.store, StoreRole.BLOB_CACHE)

    @property
    def file_root(self) -> Path:
        return Path(self.store_url.path).expanduser()

    @property
    def staging_dir(self) -> Path:
        if self.staging:
            return Path(self.staging).expanduser()
        if self.store_url.scheme == "file":
            return self.file_root / "partial"
        return Path(".wave-grpc/cache-staging")
