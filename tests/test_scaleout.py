"""Replicas sharing one Redis: tokens, caches and revocation cross replicas."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.image.layers import pack_directory
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with components.start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


def _layer() -> pb.ContainerLayer:
    out = io.BytesIO()
    digests = pack_directory(Path(__file__).parent / "data" / "layer", out)
    return pb.ContainerLayer(
        location="data:" + base64.b64encode(out.getvalue()).decode(),
        gzip_digest=str(digests.gzip_digest),
        gzip_size=digests.gzip_size,
        tar_digest=str(digests.tar_digest),
    )


def _name(target: str) -> tuple[str, str]:
    path = target.split("/", 1)[1]
    name, tag = path.rsplit(":", 1)
    return name, tag


def test_two_services_two_gateways_one_redis(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages, redis_url: str
) -> None:
    # No shared disk: tokens and caches in Redis, injected layers in a registry repository.
    def replica(name: str, **extra: Any) -> WaveStack:
        return WaveStack(
            tmp_path / name,
            registries=[registry_route(registry)],
            service={"store": redis_url},
            layers={"store": f"oci://{registry.host}/wave-grpc/layers", "staging": str(tmp_path / name / "staging")},
            **extra,
        )

    a = replica("a", gateway={"workers": 2})
    b = replica("b")
    a.start()
    b.start()
    try:
        layer = _layer()
        created = a.create(
            base_images.ref("multi"),
            container_config=pb.ContainerConfig(env=["FOO=bar"], layers=[layer]),
        )
        name, tag = _name(created.target_image)
        # Same token through both gateways: identical bytes.
        via_a = a.http("GET", f"/v2/{name}/manifests/{tag}", ACCEPT)
        via_b = b.http("GET", f"/v2/{name}/manifests/{tag}", ACCEPT)
        assert via_a.status == via_b.status == 200
        assert via_a.body == via_b.body
        pinned = via_a.header("Docker-Content-Digest")
        layout = tmp_path / "oci"
        components.skopeo_copy_to_oci(f"{b.gateway_host}/{name}:{tag}", layout, "b")
        rootfs, _ = components.umoci_unpack(layout, "b", tmp_path / "bundle")
        assert (rootfs / "opt" / "wave-grpc-test" / "hello.txt").read_text() == "hello from a layer\n"

        # Revoke on service B: gateway A answers 404 within a second.
        second = a.create(base_images.ref("latest"))
        second_name, second_tag = _name(second.target_image)
        assert a.http("GET", f"/v2/{second_name}/manifests/{second_tag}", ACCEPT).status == 200
        with b.stub() as stub:
            stub.RevokeContainer(pb.RevokeContainerRequest(container_token=second.container_token))
        revoked_at = time.monotonic()
        status = 200
        while time.monotonic() - revoked_at < 1.5:
            status = a.http("GET", f"/v2/{second_name}/manifests/{second_tag}", ACCEPT).status
            if status == 404:
                break
            time.sleep(0.05)
        assert status == 404

        # Gateway (and service) A goes away mid-test: B keeps serving.
        a.stop()
        components.skopeo_copy_to_oci(f"{b.gateway_host}/{name}@{pinned}", tmp_path / "oci2", "x")

        # Restart everything: the token and pull by digest still work.
        b.restart()
        a.start()
        after = a.http("GET", f"/v2/{name}/manifests/{pinned}", ACCEPT)
        assert after.status == 200
        assert after.body == via_a.body
        manifest = json.loads(b.http("GET", f"/v2/{name}/manifests/{tag}", ACCEPT).body)
        assert len(manifest["manifests"]) == 1

        # Every key in Redis carries an expiry: nothing grows without bound.
        with redis.Redis.from_url(redis_url) as client:
            keys = list(client.scan_iter("wave-grpc:*"))
            assert any(k.startswith(b"wave-grpc:token:") for k in keys)
            assert any(k.startswith(b"wave-grpc:cache:augmented:") for k in keys)
            assert any(k.startswith(b"wave-grpc:cache:upstream:") for k in keys)
            assert all(client.ttl(k) > 0 for k in keys), [(k, client.ttl(k)) for k in keys]
    finally:
        a.stop()
        b.stop()


def test_registry_layer_store_verifies_dedups_and_serves(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    layers_repo = "wave-grpc/upload-test"
    wave = WaveStack(
        tmp_path / "w",
        registries=[registry_route(registry)],
        layers={"store": f"oci://{registry.host}/{layers_repo}", "staging": str(tmp_path / "staging")},
    )
    wave.start()
    try:
        layer = _layer()
        data = base64.b64decode(layer.location[len("data:") :])

        def upload() -> pb.UploadLayerResponse:
            with wave.stub() as stub:
                chunks = [pb.UploadLayerRequest(gzip_digest=layer.gzip_digest, tar_digest=layer.tar_digest)]
                chunks += [pb.UploadLayerRequest(chunk=data[i : i + 100]) for i in range(0, len(data), 100)]
                response: pb.UploadLayerResponse = stub.UploadLayer(iter(chunks), timeout=60)
                return response

        first, second = upload(), upload()
        assert first.created
        assert not second.created
        assert first.layer == second.layer
        # The blob is in the registry under its digest, and its record keeps the tar digest.
        assert components.get_blob(registry.url, layers_repo, layer.gzip_digest) == data
        tag = layer.gzip_digest.replace(":", "-")
        record, _, _ = components.get_manifest(registry.url, layers_repo, tag)
        assert json.loads(record)["annotations"]["dev.wave-grpc.layer.tar-digest"] == layer.tar_digest
        # Nothing is left in staging once the registry holds the layer.
        assert not any(p.is_file() for p in (tmp_path / "staging" / "blobs").rglob("*"))

        created = wave.create(base_images.ref("latest"), container_config=pb.ContainerConfig(layers=[first.layer]))
        name, tag = _name(created.target_image)
        blob = wave.http("GET", f"/v2/{name}/blobs/{layer.gzip_digest}")
        assert blob.status == 307
        assert blob.header("Location") == f"{registry.url}/v2/{layers_repo}/blobs/{layer.gzip_digest}"
        components.skopeo_copy_to_oci(created.target_image, tmp_path / "oci", "x")
        rootfs, _ = components.umoci_unpack(tmp_path / "oci", "x", tmp_path / "bundle")
        assert (rootfs / "opt" / "wave-grpc-test" / "hello.txt").exists()

        # A corrupted upload stores nothing in the registry.
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0xFF
        with pytest.raises(grpc.RpcError) as caught, wave.stub() as stub:
            stub.UploadLayer(iter([pb.UploadLayerRequest(gzip_digest=layer.gzip_digest, chunk=bytes(bad))]), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad_digest = components.sha256_digest(bytes(bad))
        assert components.http_request("HEAD", f"{registry.url}/v2/{layers_repo}/blobs/{bad_digest}").status == 404
    finally:
        wave.stop()
