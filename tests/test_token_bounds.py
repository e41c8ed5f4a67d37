"""What one token's image may be is decided at creation (issue 18, "bound what a token can be"):
layers per platform, each served manifest's size, and no image a gateway would have to rebuild
on every pull. Each refusal names its config key, and nothing is stored for a refused request."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb


def _layers(count: int) -> list[pb.ContainerLayer]:
    layers = []
    for i in range(count):
        blob, _ = components.layer_tar_gz({f"opt/bounds/{i}.txt": f"{i}\n".encode()}, mode=0o644)
        layers.append(pb.ContainerLayer(location="data:" + base64.b64encode(blob).decode()))
    return layers


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    workdir: Path = tmp_path_factory.mktemp("bounds")
    service = {"max_image_layers": 4, "max_manifest_size": 4096}
    with WaveStack(workdir, registries=[registry_route(registry)], service=service) as wave:
        yield wave.start()


def _refused(stack: WaveStack, image: str, **kwargs: Any) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        stack.create(image, **kwargs)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return str(error.details())


def _stored_layers(stack: WaveStack) -> list[Path]:
    return [p for p in (stack.workdir / "data" / "layers").rglob("*") if p.is_file() and "sha256" in p.parts]


def test_layers_per_platform_are_counted_before_any_layer_is_stored(
    bounded: WaveStack, base_images: components.BaseImages
) -> None:
    image = base_images.ref("latest")
    before = _stored_layers(bounded)
    details = _refused(bounded, image, container_config=pb.ContainerConfig(layers=_layers(5)))
    assert "would have" in details
    assert "over the limit of 4 ([service].max_image_layers)" in details
    assert _stored_layers(bounded) == before
    # Within the bound, the same kind of request is a token.
    assert bounded.create(image, container_config=pb.ContainerConfig(layers=_layers(2))).container_token


def test_a_served_manifest_over_max_manifest_size_is_refused(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    env = [f"VAR{i}=" + "x" * 40 for i in range(5)]
    annotations_heavy = pb.ContainerConfig(env=env, layers=_layers(3))
    service = {"max_manifest_size": 4096}
    with WaveStack(tmp_path, registries=[registry_route(registry)], service=service) as wave:
        wave.start()
        many = pb.ContainerConfig(layers=_layers(30))
        details = _refused(wave, base_images.ref("latest"), container_config=many)
        assert "over the 4096-byte limit ([service].max_manifest_size)" in details
        assert wave.create(base_images.ref("latest"), container_config=annotations_heavy).container_token


def test_an_image_a_gateway_would_not_keep_is_refused_not_rebuilt_per_pull(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    # A quarter of 4 KiB: smaller than any manifest and config together.
    with WaveStack(tmp_path, registries=[registry_route(registry)], gateway={"content_cache_bytes": 4096}) as wave:
        wave.start()
        details = _refused(wave, base_images.ref("latest"))
    assert "a quarter of [gateway].content_cache_bytes" in details
