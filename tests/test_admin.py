"""The admin endpoints against real processes: metrics move, readiness follows the dependencies.

``/readyz`` answers 503 naming the dependency, its address and its config key
while that dependency is down (the AugmentService for a gateway, the Redis
token store for a service), and 200 again once it is back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb


def _admin(stack: WaveStack) -> str:
    return f"http://{stack.admin['listen']}"


def _get(url: str) -> components.HttpResponse:
    return components.http_request("GET", url, timeout=10)


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    with WaveStack(tmp_path_factory.mktemp("admin"), registries=[registry_route(registry)], admin=admin) as wave:
        yield wave.start()


def test_metrics_move_after_creations_and_pulls(
    stack: WaveStack, registry: components.Registry, base_images: components.BaseImages
) -> None:
    assert _get(f"{_admin(stack)}/healthz").status == 200
    assert _get(f"{_admin(stack)}/readyz").status == 200
    created = stack.create(base_images.ref("latest"))
    name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
    for _ in range(3):
        assert stack.http("GET", f"{name}/manifests/latest").status == 200
    assert stack.http("GET", f"{name}/manifests/nope").status == 404
    assert stack.http("PROPFIND", f"{name}/manifests/latest").status == 405
    text = _get(f"{_admin(stack)}/metrics").body.decode()
    # A client picks the method: only standard ones become label values.
    assert 'method="PROPFIND"' not in text
    assert samples(text, "wave_grpc_http_requests_total", method="other", status="405") >= 1
    manifests = "/v2/wt/{token}/{name}/manifests/{reference}"
    assert samples(text, "wave_grpc_http_requests_total", route=manifests, method="GET", status="200") >= 3
    assert samples(text, "wave_grpc_http_requests_total", route=manifests, status="404") >= 1
    assert samples(text, "wave_grpc_http_request_duration_seconds_count", route=manifests) >= 4
    assert samples(text, "wave_grpc_containers_created_total", outcome="created") >= 1
    assert samples(text, "wave_grpc_upstream_requests_total", registry=registry.host, status="200") >= 1
    assert samples(text, "wave_grpc_cache_requests_total", cache="record", result="hit") >= 1
    assert "wave_grpc_layer_store_bytes " in text
    assert created.container_token not in text  # routes are labelled by pattern, never by path
    # A request line the parser refuses is answered 400; the token in it reaches no log line.
    assert stack.http("FROBNICATE", f"{name}/manifests/latest").status == 400
    time.sleep(0.5)  # the access log writes in batches
    assert created.container_token not in stack.log_text()

    with pytest.raises(grpc.RpcError):
        stack.create("127.0.0.1:1/nothing/here:latest")
    text = _get(f"{_admin(stack)}/metrics").body.decode()
    assert samples(text, "wave_grpc_containers_created_total", outcome="denied") >= 1


def test_one_scrape_covers_every_gateway_worker(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    with WaveStack(
        tmp_path / "pool", registries=[registry_route(registry)], gateway={"workers": 2}, admin=admin
    ) as wave:
        wave.start()
        created = wave.create(base_images.ref("latest"))
        name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        for _ in range(20):  # a new connection each time, spread over both workers
            assert wave.http("GET", f"{name}/manifests/latest").status == 200
        text = _get(f"http://{admin['listen']}/metrics").body.decode()
        served = samples(
            text, "wave_grpc_http_requests_total", route="/v2/wt/{token}/{name}/manifests/{reference}", status="200"
        )
        assert served >= 20


def test_readyz_follows_the_augment_service(tmp_path: Path, registry: components.Registry) -> None:
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    with WaveStack(tmp_path / "service", registries=[registry_route(registry)]) as service:
        service.start(only="service")
        with WaveStack(
            tmp_path / "gateway",
            registries=[registry_route(registry)],
            gateway={"service": service.grpc_address},
            admin=admin,
        ) as gateway:
            gateway.start(only="gateway")
            ready = f"http://{admin['listen']}/readyz"
            assert _wait_for(lambda: _get(ready).status == 200)
            service.stop()
            down = _wait_for(lambda: (r := _get(ready)).status == 503 and r)
            assert down, "readyz stayed 200 with the AugmentService stopped"
            failing = down.json()["failing"][0]
            assert failing["dependency"] == "AugmentService"
            assert failing["address"] == service.grpc_address
            assert failing["key"] == "[gateway].service"
            # Readable: the gRPC status and what it means, not an exception repr cut mid-word.
            assert failing["problem"] == "UNAVAILABLE: connection refused", failing
            service.start(only="service")
            assert _wait_for(lambda: _get(ready).status == 200)


def test_readyz_and_creations_follow_the_redis_token_store(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    redis = components.start_redis(tmp_path / "redis")
    port = int(redis.url.rsplit(":", 1)[1].split("/")[0])
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    try:
        with WaveStack(
            tmp_path / "wave", registries=[registry_route(registry)], service={"store": redis.url}, admin=admin
        ) as wave:
            wave.start()
            ready = f"http://{admin['listen']}/readyz"
            assert _get(ready).status == 200
            redis.stop()
            down = _wait_for(lambda: (r := _get(ready)).status == 503 and r)
            assert down
            failing = down.json()["failing"][0]
            assert (failing["dependency"], failing["key"]) == ("token store", "[service].store")
            assert failing["address"] == f"redis://127.0.0.1:{port}/0"
            with pytest.raises(grpc.RpcError) as caught:
                wave.create(base_images.ref("latest"))
            error: Any = caught.value
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert "[service].store" in error.details()
            assert "Traceback" not in wave.log_text()
            redis = components.start_redis(tmp_path / "redis", port=port)
            assert _wait_for(lambda: _get(ready).status == 200)
            assert wave.create(base_images.ref("latest")).container_token
    finally:
        redis.stop()


def test_a_gateway_whose_service_is_down_says_where_it_looked(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    with WaveStack(tmp_path / "service", registries=[registry_route(registry)]) as service:
        service.start(only="service")
        created = service.create(base_images.ref("latest"))
        with WaveStack(
            tmp_path / "gateway", registries=[registry_route(registry)], gateway={"service": service.grpc_address}
        ) as gateway:
            gateway.start(only="gateway")
            service.stop()
            name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
            answer = gateway.http("GET", f"{name}/manifests/latest")
            assert answer.status == 503
            message = answer.json()["errors"][0]["message"]
            assert service.grpc_address in message
            assert "[gateway].service" in message
            assert answer.header("Retry-After") == "1"


def test_concurrent_creations_of_one_image_share_one_resolution(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    with WaveStack(tmp_path / "shared", registries=[registry_route(registry)], admin=admin) as wave:
        wave.start()
        metrics = f"http://{admin['listen']}/metrics"

        def upstream_requests() -> float:
            return samples(_get(metrics).body.decode(), "wave_grpc_upstream_requests_total", registry=registry.host)

        before = upstream_requests()
        with ThreadPoolExecutor(16) as pool:
            image = base_images.ref("latest")
            created = list(
                pool.map(lambda i: wave.create(image, container_config=pb.ContainerConfig(env=[f"N={i}"])), range(16))
            )
        assert len({c.container_token for c in created}) == 16
        # One resolution (the /v2/ ping, the manifest, the config): not sixteen.
        assert upstream_requests() - before <= 4


def test_metrics_in_multiprocess_mode_have_rpcs_and_process_series(stack: WaveStack) -> None:
    # The stack runs a gateway pool (workers default to the cores): prometheus-client's multiprocess mode.
    with stack.stub() as stub, pytest.raises(grpc.RpcError):
        stub.ListContainers(pb.ListContainersRequest(page_size=10), timeout=10)  # anonymous: refused
    text = _get(f"{_admin(stack)}/metrics").body.decode()
    method = "wave.augment.v1.AugmentService/ListContainers"
    assert samples(text, "wave_grpc_rpcs_total", method=method, code="PERMISSION_DENIED") >= 1
    assert samples(text, "wave_grpc_rpc_duration_seconds_count", method=method) >= 1
    assert samples(text, "process_open_fds") > 0
    assert samples(text, "process_start_time_seconds") > 0
