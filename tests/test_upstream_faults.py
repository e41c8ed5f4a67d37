"""Upstream faults: stopped, rate-limited, failing, stalled; then recovered.

A fault proxy (tests/faultproxy.py) sits between wave-grpc and a real
registry. The route streams base blobs (``blobs = "proxy"``), so pull-time
faults reach the gateway on every blob GET even after the manifests are cached.
Timeouts are small (connect 1s, read 2s); errors must come within a generous
bound of them (never a multiple from retrying a stall), say which registry and
image failed and why, and the next request after recovery must succeed.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack
from tests.upstreams import FaultProxy, hello_layer
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

READ_TIMEOUT = 2.0
BOUND = 3 * READ_TIMEOUT  # "within the configured timeout", generously
ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]
IMAGE_PATH = "library/busybox:latest"


@dataclass
class Faulty:
    proxy: FaultProxy
    stack: WaveStack
    layer: pb.ContainerLayer

    @property
    def image(self) -> str:
        return f"{self.proxy.host}/{IMAGE_PATH}"

    def create(self) -> pb.CreateContainerResponse:
        return self.stack.create(self.image, container_config=pb.ContainerConfig(layers=[self.layer]))

    def create_fails(self) -> tuple[grpc.StatusCode, str, float]:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            self.create()
        error: Any = caught.value
        return error.code(), error.details(), time.monotonic() - started

    def resolved_base_blob(self) -> str:
        """A fresh token, pulled once (manifest cached), and its first base layer's path."""
        target = self.create().target_image
        name = "/v2/" + target.split("/", 1)[1].rsplit(":", 1)[0]
        manifest = self.stack.http("GET", f"{name}/manifests/latest", ACCEPT)
        assert manifest.status == 200, manifest.body
        return f"{name}/blobs/{json.loads(manifest.body)['layers'][0]['digest']}"

    def get_fails(self, path: str) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        resp = self.stack.http("GET", path)
        elapsed = time.monotonic() - started
        assert resp.header("Content-Type") == "application/json", resp.body[:200]
        error: dict[str, Any] = json.loads(resp.body)["errors"][0]
        return resp.status, error, elapsed


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry, base_images: components.BaseImages
) -> Iterator[Faulty]:
    workdir = tmp_path_factory.mktemp("faults")
    _, layer = hello_layer(workdir)
    with FaultProxy(registry.url, workdir) as proxy:
        stack = WaveStack(
            workdir / "stack",
            registries=[{"name": proxy.host, "endpoint": proxy.url, "blobs": "proxy"}],
            # Resolutions are not reused here: every creation must meet the faulty upstream.
            upstream={"connect_timeout": "1s", "read_timeout": f"{READ_TIMEOUT:g}s", "retries": 2, "tag_cache_ttl": 0},
        )
        stack.start()
        try:
            yield Faulty(proxy, stack, layer)
        finally:
            stack.stop()


def names_image(faulty: Faulty, message: str) -> None:
    assert f"{faulty.proxy.host}/library/busybox" in message, message
    assert f"registry {faulty.proxy.host}" in message, message


def test_upstream_stopped_then_back(faulty: Faulty) -> None:
    blob = faulty.resolved_base_blob()
    faulty.proxy.stop()
    try:
        code, details, elapsed = faulty.create_fails()
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "unreachable" in details
        assert "after 3 attempt(s)" in details
        names_image(faulty, details)
        assert elapsed < BOUND

        status, error, elapsed = faulty.get_fails(blob)
        assert (status, error["code"]) == (502, "UNAVAILABLE")
        assert "unreachable" in error["message"]
        names_image(faulty, error["message"])
        assert elapsed < BOUND
    finally:
        faulty.proxy.start()  # same port: pooled connections to the old process are dead
    assert faulty.create().target_image
    assert faulty.stack.http("GET", blob).status == 200


def test_rate_limited_and_failing_then_recovered(faulty: Faulty) -> None:
    blob = faulty.resolved_base_blob()
    # Transient 503s are absorbed by the retries: the caller sees a success.
    before = faulty.proxy.stats()["faults"]
    faulty.proxy.set("status", status=503, count=2)
    assert faulty.create().target_image
    assert faulty.proxy.stats()["faults"] - before == 2

    faulty.proxy.set("status", status=429, retry_after="1")
    try:
        code, details, elapsed = faulty.create_fails()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "rate-limiting" in details
        assert "HTTP 429" in details
        names_image(faulty, details)
        assert elapsed < BOUND

        status, error, _ = faulty.get_fails(blob)
        assert (status, error["code"]) == (429, "TOOMANYREQUESTS")
        names_image(faulty, error["message"])

        faulty.proxy.set("status", status=503)
        code, details, _ = faulty.create_fails()
        assert code == grpc.StatusCode.UNAVAILABLE, details
        assert "HTTP 503" in details
        status, error, _ = faulty.get_fails(blob)
        assert (status, error["code"]) == (502, "UNAVAILABLE")
        assert "HTTP 503" in error["message"]
    finally:
        faulty.proxy.set("pass")
    assert faulty.create().target_image
    assert faulty.stack.http("GET", blob).status == 200


def test_stalled_upstream_times_out_then_recovers(faulty: Faulty) -> None:
    blob = faulty.resolved_base_blob()
    faulty.proxy.set("stall")
    try:
        code, details, elapsed = faulty.create_fails()
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
        assert f"no data within {READ_TIMEOUT:g}s (read_timeout)" in details
        names_image(faulty, details)
        assert READ_TIMEOUT * 0.9 < elapsed < BOUND

        status, error, elapsed = faulty.get_fails(blob)
        assert (status, error["code"]) == (504, "UNAVAILABLE")
        assert "read_timeout" in error["message"]
        names_image(faulty, error["message"])
        assert elapsed < BOUND
    finally:
        faulty.proxy.set("pass")
    assert faulty.create().target_image
    resp = faulty.stack.http("GET", blob)
    assert resp.status == 200
    assert blob.endswith(components.sha256_digest(resp.body))


@pytest.mark.parametrize("mode", ["corrupt", "truncate"])
def test_a_bit_flipping_or_truncating_upstream_is_never_relayed_whole(
    faulty: Faulty, registry: components.Registry, mode: str
) -> None:
    """Proxy mode relays as it reads: a flipped bit or a cut upstream body must reach the runtime
    as a cut connection, never as a complete 200 (the relay holds the last chunk until the digest
    matched). The next GET after the upstream recovers is the blob, byte for byte."""
    blob = faulty.resolved_base_blob()
    digest = blob.rsplit("/", 1)[1]
    expected = components.http_request("GET", f"{registry.url}/v2/library/busybox/blobs/{digest}").body
    assert components.sha256_digest(expected) == digest
    faulty.proxy.set(mode, match=f"/blobs/{digest}")
    try:
        try:
            resp = faulty.stack.http("GET", blob)
        except (http.client.HTTPException, ConnectionError):
            pass  # cut, as it must be
        else:
            assert resp.status != 200 or len(resp.body) < len(expected), f"{mode}: relayed whole ({resp.status})"
        assert faulty.proxy.stats()["faults"] >= 1
    finally:
        faulty.proxy.set("pass")
    recovered = faulty.stack.http("GET", blob)
    assert recovered.status == 200
    assert recovered.body == expected
