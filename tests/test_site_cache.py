"""The site cache (``blobs = "cache"``): the upstream's budget spent once, a wrong blob never kept.

A fault proxy with ``--record`` sits between wave-grpc and a real docker-registry,
so every request the upstream answered is counted by method and path.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.upstreams import FaultProxy, hello_layer, pull_and_check
from wave_grpc.image.digest import Digest
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.stores.cachestores import FileCacheStore

pytestmark = pytest.mark.components

ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]
_RECORDED = re.compile(r"^=== (GET|HEAD) (\S+) -> (\d+)$", re.MULTILINE)


@dataclass
class CachedStack(WaveStack):
    """A stack whose config also has a ``[cache]`` section."""

    cache: dict[str, Any] | None = None

    def write_config(self) -> Path:
        path = super().write_config()
        if self.cache:
            lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in self.cache.items())
            path.write_text(path.read_text() + "\n[cache]\n" + lines)
        return path


def upstream_requests(record: Path) -> Counter[tuple[str, str]]:
    """(method, path) -> how many times the upstream answered it."""
    text = record.read_text(errors="replace") if record.exists() else ""
    return Counter((m.group(1), m.group(2)) for m in _RECORDED.finditer(text))


def gets(record: Path, kind: str) -> Counter[str]:
    """GETs whose path contains ``kind``; the proxy records a response after its last byte went
    out, so the count is read again until it holds still."""
    counted: Counter[str] = Counter()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = upstream_requests(record).items()
        now = Counter({path: n for (method, path), n in found if method == "GET" and kind in path})
        if now and now == counted:
            break
        counted = now
        time.sleep(0.3)
    return counted


def pull_blobs(stack: WaveStack, target: str) -> dict[str, bytes]:
    """The augmented manifest's config and layers, each checked against its digest."""
    name = "/v2/" + target.split("/", 1)[1].rsplit(":", 1)[0]
    manifest = stack.http("GET", f"{name}/manifests/latest", ACCEPT)
    assert manifest.status == 200, manifest.body
    document = json.loads(manifest.body)
    blobs = {}
    for descriptor in [document["config"], *document["layers"]]:
        resp = stack.http("GET", f"{name}/blobs/{descriptor['digest']}")
        location = resp.header("Location")
        if resp.status == 307 and location is not None:  # an oci:// store's blob: the runtime goes there
            resp = components.http_request("GET", location)
        assert resp.status == 200, resp.body[:300]
        assert "sha256:" + hashlib.sha256(resp.body).hexdigest() == descriptor["digest"]
        blobs[descriptor["digest"]] = resp.body
    return blobs


@pytest.fixture
def upstream(tmp_path: Path, registry: components.Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url, tmp_path, record=tmp_path / "upstream.log") as proxy:
        yield proxy


def cached_stack(workdir: Path, proxy: FaultProxy, **cache: Any) -> CachedStack:
    return CachedStack(
        workdir,
        registries=[{"name": proxy.host, "endpoint": proxy.url, "blobs": "cache"}],
        upstream={"tag_cache_ttl": "off"},
        cache={"store": f"file://{workdir / 'cache'}", **cache},
    )


def test_six_creations_across_a_restart_spend_one_get_each_and_pull_with_the_upstream_stopped(
    tmp_path: Path, upstream: FaultProxy, base_images: components.BaseImages
) -> None:
    _, layer = hello_layer(tmp_path)
    image = f"{upstream.host}/{base_images.repository}:latest"
    config = pb.ContainerConfig(layers=[layer])
    record = tmp_path / "upstream.log"
    with cached_stack(tmp_path / "stack", upstream).start() as stack:
        targets = []
        for round_ in range(2):
            for _ in range(3):
                target = stack.create(image, container_config=config).target_image
                pull_blobs(stack, target)
                targets.append(target)
            if round_ == 0:
                stack.restart()
        manifests = gets(record, "/manifests/")
        assert manifests, upstream_requests(record)
        assert max(manifests.values()) == 1, manifests
        assert not any("/manifests/latest" in path for path in manifests), "tags are resolved by HEAD"
        blobs = gets(record, "/blobs/")
        assert blobs
        assert max(blobs.values()) == 1, blobs
        # Stopped upstream, restarted service: a token created earlier still pulls whole.
        upstream.stop()
        stack.restart()
        pull_and_check(targets[0], tmp_path / "offline")


def big_image(registry: components.Registry, repository: str) -> tuple[str, bytes]:
    """An image whose one layer is 24 MiB of incompressible bytes; its layer's digest and bytes."""
    raw = os.urandom(24 << 20)
    data, diff_id = components.layer_tar_gz({"big.bin": raw})
    layer = gzip.compress(gzip.decompress(data), compresslevel=1, mtime=0)  # fast to pack; same diff_id
    digest = components.push_blob(registry.url, repository, layer)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    ).encode()
    config_digest = components.push_blob(registry.url, repository, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": len(layer)}],
    }
    body = json.dumps(manifest).encode()
    components.put_manifest(registry.url, repository, "latest", body, "application/vnd.oci.image.manifest.v1+json")
    return digest, layer


def blob_path(target: str, digest: str) -> str:
    return "/v2/" + target.split("/", 1)[1].rsplit(":", 1)[0] + f"/blobs/{digest}"


def test_six_concurrent_first_pulls_of_a_big_layer_make_one_upstream_get(
    tmp_path: Path, upstream: FaultProxy, registry: components.Registry
) -> None:
    digest, layer = big_image(registry, "cache/big")
    with cached_stack(tmp_path / "stack", upstream).start() as stack:
        target = stack.create(f"{upstream.host}/cache/big:latest").target_image
        path = blob_path(target, digest)
        with ThreadPoolExecutor(6) as pool:
            bodies = list(pool.map(lambda _: stack.http("GET", path), range(6)))
        assert [resp.status for resp in bodies] == [200] * 6
        assert all(resp.body == layer for resp in bodies)
        assert gets(tmp_path / "upstream.log", f"/blobs/{digest}") == Counter({f"/v2/cache/big/blobs/{digest}": 1})
        # The streams ended only once the blob was published.
        stored = tmp_path / "stack" / "cache" / "blobs" / "sha256" / digest.removeprefix("sha256:")
        assert stored.stat().st_size == len(layer)
        # Later pulls come from the store, ranges and all.
        ranged = stack.http("GET", path, [("Range", "bytes=10-19")])
        assert ranged.status == 206
        assert ranged.body == layer[10:20]


def cut_or_wrong(stack: WaveStack, path: str, layer: bytes) -> bool:
    """A GET that never hands over the right blob whole: cut, short, or refused."""
    try:
        resp = stack.http("GET", path)
    except (http.client.HTTPException, ConnectionError):
        return True
    return resp.status != 200 or len(resp.body) < len(layer)


@pytest.mark.parametrize("mode", ["corrupt", "truncate"])
def test_a_bit_flipping_or_truncating_upstream_publishes_nothing(
    tmp_path: Path, upstream: FaultProxy, registry: components.Registry, mode: str
) -> None:
    digest, layer = big_image(registry, f"cache/{mode}")
    with cached_stack(tmp_path / "stack", upstream).start() as stack:
        target = stack.create(f"{upstream.host}/cache/{mode}:latest").target_image
        path = blob_path(target, digest)
        upstream.set(mode, match=f"/blobs/{digest}")
        assert cut_or_wrong(stack, path, layer)
        time.sleep(0.5)
        store = FileCacheStore(tmp_path / "stack" / "cache")
        assert Digest.parse(digest) not in {entry.digest for entry in store.entries()}
        assert not list((tmp_path / "stack" / "cache" / "partial").glob("*.partial"))
        upstream.set("pass")
        resp = stack.http("GET", path)
        assert resp.status == 200
        assert resp.body == layer


def test_an_oci_cache_shared_by_two_replicas_fills_once(
    tmp_path: Path, upstream: FaultProxy, registry: components.Registry, base_images: components.BaseImages
) -> None:
    image = f"{upstream.host}/{base_images.repository}:latest"
    cache = {"store": f"oci://{registry.host}/site-cache/blobs", "staging": str(tmp_path / "staging")}
    routes = [{"name": upstream.host, "endpoint": upstream.url, "blobs": "cache"}, registry_route(registry)]
    one = CachedStack(tmp_path / "one", registries=routes, cache=cache)
    two = CachedStack(tmp_path / "two", registries=routes, cache=cache)
    with one.start(), two.start():
        first = pull_blobs(one, one.create(image).target_image)
        second = pull_blobs(two, two.create(image).target_image)
    assert set(first) == set(second)
    blobs = gets(tmp_path / "upstream.log", "/blobs/")
    assert blobs
    assert max(blobs.values()) == 1, blobs
    manifests = gets(tmp_path / "upstream.log", "/manifests/")
    assert max(manifests.values()) == 1, manifests


def scrape(address: str) -> str:
    return components.http_request("GET", f"http://{address}/metrics", timeout=10).body.decode()


def test_an_upstream_429_names_the_registry_and_the_wait_while_a_stored_token_still_pulls(
    tmp_path: Path, upstream: FaultProxy, base_images: components.BaseImages
) -> None:
    image = f"{upstream.host}/{base_images.repository}:latest"
    admin = f"127.0.0.1:{components.free_port()}"
    stack = cached_stack(tmp_path / "stack", upstream)
    stack.admin = {"listen": admin}
    # Docker Hub's form: the count, then the window in seconds.
    upstream.set("headers", headers={"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "97;w=21600"})
    with stack.start():
        target = stack.create(image).target_image
        pulled = pull_blobs(stack, target)
        metrics = scrape(admin)
        assert f'wave_grpc_upstream_ratelimit_limit{{registry="{upstream.host}"}} 100.0' in metrics
        assert f'wave_grpc_upstream_ratelimit_remaining{{registry="{upstream.host}"}} 97.0' in metrics
        stored = FileCacheStore(tmp_path / "stack" / "cache").stored_bytes
        assert stored >= sum(len(blob) for blob in pulled.values())
        gauge = re.search(r"^wave_grpc_blob_cache_stored_bytes (\S+)$", metrics, re.MULTILINE)
        assert gauge is not None, metrics
        assert float(gauge.group(1)) == stored

        upstream.set("status", status=429, retry_after="3600", headers={"ratelimit-remaining": "0;w=21600"})
        stack.restart()  # nothing of the token in memory: what the pull needs comes from the store
        with pytest.raises(grpc.RpcError) as refused:
            stack.create(image, container_config=pb.ContainerConfig(env=["A=1"]))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = refused.value.details() or ""
        assert upstream.host in message, message
        assert "retry after 3600s" in message, message
        assert pull_blobs(stack, target) == pulled
        assert upstream.stats()["faults"] >= 1


def test_eviction_keeps_the_store_under_max_size_and_live_blobs(tmp_path: Path) -> None:
    import asyncio

    store = FileCacheStore(tmp_path)
    blobs = [os.urandom(1000) for _ in range(10)]
    digests = [Digest.of(blob) for blob in blobs]
    for i, (digest, blob) in enumerate(zip(digests, blobs, strict=True)):
        asyncio.run(store.put_bytes(digest, blob))
        os.utime(tmp_path / "blobs" / "sha256" / digest.hex, (1000 + i, 1000 + i))
    keep = {digests[0], digests[1]}  # the two least recently used, referenced by a live token
    evicted = asyncio.run(store.evict(4500, keep))
    left = {entry.digest for entry in store.entries()}
    assert keep <= left
    assert store.stored_bytes <= 4500
    assert {d for d, _ in evicted.removed} == set(digests[2:8])
    assert left == {*keep, *digests[8:]}
