"""Site cache eviction keeps what a token needed until ``[layers] gc_grace`` after it expired.

An expired token is gone from the token store, so the file:// cache remembers, between
collections, until when a token needed each blob (wave_grpc/stores/cachestores.py).
These run on the stores themselves: SQLite tokens, a file:// cache, no servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from wave_grpc.config import Config
from wave_grpc.config.tree import parse_config
from wave_grpc.image.digest import Digest
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import set_expiry
from wave_grpc.stores.blobcache import SiteCache
from wave_grpc.stores.cachestores import REFERENCED_FILE, FileCacheStore
from wave_grpc.stores.gc import evict_cache
from wave_grpc.stores.sqlite import SqliteTokenStore

CACHED = "cache.example"
GRACE_SECONDS = 2.0


def cache_config(root: Path) -> Config:
    return parse_config(
        {
            "registries": [{"name": CACHED, "endpoint": f"https://{CACHED}", "blobs": "cache"}],
            # 1 byte: every collection would evict all it may.
            "cache": {"store": f"file://{root}", "max_size": 1},
            "layers": {"gc_grace": f"{GRACE_SECONDS:g}s"},
        },
        "test config",
    )


async def stored_image(store: FileCacheStore, name: str) -> tuple[Digest, set[Digest]]:
    """A pinned manifest with its config and one layer, all in the cache: (manifest, all three)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "name": name}).encode()
    layer = os.urandom(2000)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(Digest.of(config)),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": str(Digest.of(layer)),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    for data in (config, layer, manifest):
        await store.put_bytes(Digest.of(data), data)
    return Digest.of(manifest), {Digest.of(config), Digest.of(layer), Digest.of(manifest)}


def token_record(token: str, manifest: Digest, expires_at: float) -> pb.ContainerRecord:
    record = pb.ContainerRecord(
        container_token=token,
        container_image=f"{CACHED}/library/base:1",
        container_platform="linux/amd64",
        source_digest=str(manifest),
        source_manifest_digest=str(manifest),
        target_manifest_digest=str(manifest),
    )
    set_expiry(record, expires_at)
    return record


def stored(store: FileCacheStore) -> set[Digest]:
    return {entry.digest for entry in store.entries()}


def test_eviction_keeps_an_expired_tokens_blobs_for_gc_grace_then_lets_them_go(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = cache_config(tmp_path / "cache")
        store = FileCacheStore(tmp_path / "cache")
        site = SiteCache(store, tmp_path / "cache" / "partial")
        tokens = SqliteTokenStore(tmp_path / "tokens.db")
        live_manifest, live_blobs = await stored_image(store, "live")
        expiring_manifest, expiring_blobs = await stored_image(store, "expiring")
        unreferenced = os.urandom(3000)
        await store.put_bytes(Digest.of(unreferenced), unreferenced)
        now = time.time()
        expires = now + 1.0
        assert await tokens.put(token_record("liveliveliv1", live_manifest, now + 3600))
        assert await tokens.put(token_record("expiringtok1", expiring_manifest, expires))
        try:
            # Both tokens live: only the blob nobody references goes.
            first = await evict_cache(tokens, config, site)
            assert first is not None
            assert {digest for digest, _ in first.removed} == {Digest.of(unreferenced)}
            assert stored(store) == live_blobs | expiring_blobs

            # A dry run remembers nothing and removes nothing.
            marks = (tmp_path / "cache" / REFERENCED_FILE).read_text()
            await asyncio.sleep(max(0.0, expires - time.time()) + 0.2)
            dry = await evict_cache(tokens, config, site, dry_run=True)
            assert dry is not None
            assert dry.removed == ()
            assert (tmp_path / "cache" / REFERENCED_FILE).read_text() == marks

            # Expired less than gc_grace ago: its manifest, config and layer stay.
            kept = await evict_cache(tokens, config, site)
            assert kept is not None
            assert kept.removed == ()
            assert stored(store) == live_blobs | expiring_blobs

            # Expired more than gc_grace ago: they go; the live token's stay.
            await asyncio.sleep(max(0.0, expires + GRACE_SECONDS - time.time()) + 0.2)
            last = await evict_cache(tokens, config, site)
            assert last is not None
            assert {digest for digest, _ in last.removed} == expiring_blobs
            assert stored(store) == live_blobs
            remembered = json.loads((tmp_path / "cache" / REFERENCED_FILE).read_text())
            assert set(remembered) == {str(digest) for digest in live_blobs}
        finally:
            await tokens.close()

    asyncio.run(scenario())


def test_an_unreadable_record_of_references_only_shortens_the_grace(tmp_path: Path) -> None:
    store = FileCacheStore(tmp_path)
    live = Digest.of(b"live")
    until = time.time() + 60
    (tmp_path / REFERENCED_FILE).write_text("{not json")
    assert asyncio.run(store.protect({live: until}, GRACE_SECONDS)) == {live}
    assert json.loads((tmp_path / REFERENCED_FILE).read_text()) == {str(live): until}
