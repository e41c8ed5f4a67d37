"""A creation checks what costs nothing before anything else (issue 18's medium findings): a
114 MiB container_platform, 3 million env entries or a 100 MB env value used to block the
service's loop for 57, 14 and 6 s before the record-size limit refused them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    workdir: Path = tmp_path_factory.mktemp("cheap-checks")
    with WaveStack(workdir, registries=[registry_route(registry)]) as wave:
        yield wave.start()


def _refused(stack: WaveStack, request: pb.CreateContainerRequest) -> tuple[str, float]:
    with stack.stub() as stub:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateContainer(request, timeout=60)
        took = time.monotonic() - started
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert len(error.details()) < 400  # nothing of the input is echoed at length
    return str(error.details()), took


@pytest.mark.parametrize(
    ("request_", "names"),
    [
        (
            pb.CreateContainerRequest(container_image="busybox", container_platform="linux/amd64," * 500_000),
            "container_platform: is",
        ),
        (
            pb.CreateContainerRequest(
                container_image="busybox", container_config=pb.ContainerConfig(env=["A=b"] * 3_000_000)
            ),
            "([service].max_record_size)",
        ),
        (
            pb.CreateContainerRequest(
                container_image="busybox", container_config=pb.ContainerConfig(env=["A=" + "x" * (100 << 20)])
            ),
            "([service].max_record_size)",
        ),
        (
            pb.CreateContainerRequest(container_image="busybox", container_platform="linux/amd64," * 2000),
            "container_platform: is",
        ),
    ],
    ids=["6 MB platform list", "3M env entries", "100 MB env value", "24 KB duplicate platforms"],
)
def test_oversized_fields_are_refused_before_any_work(
    stack: WaveStack, request_: pb.CreateContainerRequest, names: str
) -> None:
    details, took = _refused(stack, request_)
    assert names in details
    # Generous: the point is seconds of blocked loop before, not a timing (the message itself
    # takes most of this, serialised and sent over loopback).
    assert took < 10, took
    # The service still answers at once afterwards.
    with stack.stub() as stub:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError):
            stub.CreateContainer(pb.CreateContainerRequest(container_image=""), timeout=10)
        assert time.monotonic() - started < 5
