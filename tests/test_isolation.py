"""One upstream cannot degrade the service for the others (issue 18, the upstream part).

Against the hostile registry (tests/hostile.py, a subprocess on loopback) and a
real docker-registry: a dripping manifest ends at the exchange deadline and its
connection is closed, as is a cancelled fetch's; 200 dripping fetches leave a
healthy registry answering at once (its own connection pool); a registry that
keeps timing out trips its breaker, which names it and says when it is tried
again; the fat config, the deep manifest and the many-layer manifest are clear
errors with the service's memory bounded; an empty 200 for a blob is not relayed.
Time bounds are generous: they tell seconds from minutes, not tight timings.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from multidict import CIMultiDict

from tests import components
from tests.components.hostile import HostileRegistry
from tests.hostile import LAYER_BYTES
from tests.stack import WaveStack
from wave_grpc.config import Config, parse_config
from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.registry.blobs import registry_blob
from wave_grpc.registry.client import RegistryClient
from wave_grpc.registry.isolation import CircuitBreakers, UpstreamLimits
from wave_grpc.registry.transport import Transport

pytestmark = pytest.mark.components

DRIP_INTERVAL = 0.5  # s per byte: never a stall as far as read_timeout (2 s) can tell


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileRegistry]:
    with HostileRegistry(tmp_path_factory.mktemp("hostile"), drip_interval=DRIP_INTERVAL) as server:
        yield server


def _config(hostile: HostileRegistry, *others: components.Registry, **route: Any) -> Config:
    registries = [{"name": hostile.host, "endpoint": hostile.url, **route}]
    registries += [{"name": other.host, "endpoint": other.url} for other in others]
    return parse_config(
        {"upstream": {"retries": 1, "read_timeout": "2s", "connect_timeout": "2s"}, "registries": registries},
        "test.toml",
    )


@pytest.fixture
async def client(hostile: HostileRegistry, registry: components.Registry) -> AsyncIterator[RegistryClient]:
    upstreams = RegistryClient(_config(hostile, registry), max_backoff=0.05)
    await upstreams.start()
    try:
        yield upstreams
    finally:
        await upstreams.close()


async def _settled(hostile: HostileRegistry, open_at_most: int) -> dict[str, int]:
    """The hostile registry's counters once at most ``open_at_most`` answers are still open (5 s at most)."""
    deadline = time.monotonic() + 5.0
    while True:
        counters = await asyncio.to_thread(hostile.counters)
        if counters["open"] <= open_at_most or time.monotonic() > deadline:
            return counters
        await asyncio.sleep(0.1)


async def test_a_dripping_manifest_ends_at_the_exchange_deadline_and_its_connection_closes(
    hostile: HostileRegistry,
) -> None:
    config = _config(hostile)
    transport = Transport(config, max_backoff=0.05, scrub=str, limits=UpstreamLimits(exchange_deadline=2.0))
    await transport.start()
    route = config.route_for(hostile.host)
    assert route is not None
    before = await _settled(hostile, 0)
    started = time.monotonic()
    try:
        resp = await transport.send(
            route, "GET", f"{hostile.url}/v2/drip/img/manifests/latest", CIMultiDict(), "drip/img", "the registry"
        )
        with pytest.raises(WaveError) as caught:
            await transport.read_limited(route, resp, 4 << 20, "manifest drip/img", "the registry")
    finally:
        await transport.close()
    elapsed = time.monotonic() - started
    assert caught.value.kind is Errors.UPSTREAM_TIMEOUT
    assert "within 2s ([upstream].exchange_deadline" in caught.value.message
    assert elapsed < 6, elapsed
    after = await _settled(hostile, 0)
    assert after["open"] == 0, after
    assert after["disconnected"] > before["disconnected"], after


async def test_a_cancelled_fetch_closes_its_upstream_connection(
    hostile: HostileRegistry, client: RegistryClient
) -> None:
    before = await _settled(hostile, 0)
    fetch = asyncio.create_task(client.get_manifest(hostile.host, "drip/img", "latest"))
    await asyncio.sleep(1.5)
    assert (await asyncio.to_thread(hostile.counters))["open"] == before["open"] + 1
    fetch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fetch
    after = await _settled(hostile, 0)
    assert after["open"] == 0, after
    assert after["disconnected"] == before["disconnected"] + 1, after


async def test_200_dripping_fetches_leave_a_healthy_registry_answering(
    hostile: HostileRegistry,
    registry: components.Registry,
    base_images: components.BaseImages,
    client: RegistryClient,
) -> None:
    drips = [asyncio.create_task(client.get_manifest(hostile.host, "drip/img", f"t{i}")) for i in range(200)]
    try:
        await asyncio.sleep(1.0)  # every drip holds a connection or waits for one
        started = time.monotonic()
        manifest = await client.get_manifest(registry.host, components.BASE_REPOSITORY, "latest")
        healthy = time.monotonic() - started
        assert manifest.data
        assert healthy < 5, healthy
        assert not any(drip.done() for drip in drips)  # still dripping: the bound above was met meanwhile
        assert (await asyncio.to_thread(hostile.counters))["open"] <= 64  # its own pool, nothing more
    finally:
        for drip in drips:
            drip.cancel()
        await asyncio.gather(*drips, return_exceptions=True)
    assert (await _settled(hostile, 0))["open"] == 0


async def test_a_registry_that_keeps_timing_out_trips_its_breaker_which_names_it(
    hostile: HostileRegistry, client: RegistryClient
) -> None:
    for _ in range(5):
        with pytest.raises(WaveError) as timed_out:
            await client.get_manifest(hostile.host, "hang/img", "latest")
        assert timed_out.value.kind is Errors.UPSTREAM_TIMEOUT
    started = time.monotonic()
    with pytest.raises(WaveError) as fast:
        await client.get_manifest(hostile.host, "hang/img", "latest")
    assert time.monotonic() - started < 0.5
    assert fast.value.kind is Errors.UPSTREAM_UNAVAILABLE
    message = fast.value.message
    assert f"registry {hostile.host} is not contacted until" in message, message
    assert "UTC (in 30s)" in message or "UTC (in 29s)" in message, message
    assert fast.value.retry_after is not None
    assert 0 < fast.value.retry_after <= 30
    assert (await _settled(hostile, 0))["open"] == 0


def test_the_breaker_closes_after_its_cool_down_and_reopens_on_the_next_failure() -> None:
    now = [1000.0]
    breakers = CircuitBreakers(
        UpstreamLimits(breaker_failures=3, breaker_window=10, breaker_cooldown=20), lambda: now[0]
    )
    for _ in range(2):
        breakers.failed("r.example")
    now[0] += 11  # out of the window: those two are forgotten
    breakers.failed("r.example")
    breakers.failed("r.example")
    assert not breakers.is_open("r.example")
    breakers.succeeded("r.example")  # a completed exchange forgets them too
    for _ in range(3):
        breakers.failed("r.example")
    assert breakers.is_open("r.example")
    with pytest.raises(WaveError, match=r"registry r\.example is not contacted until .* \(in 20s\)"):
        breakers.check("r.example", "image r.example/a")
    breakers.check("other.example", "image other.example/a")  # one registry's breaker only
    now[0] += 20
    breakers.check("r.example", "image r.example/a")  # tried again
    breakers.failed("r.example")  # ... and failed again: open at once
    assert breakers.is_open("r.example")


async def test_listed_registries_have_their_own_pools_and_unlisted_ones_share_a_smaller_one() -> None:
    config = parse_config(
        {
            "registries": [
                {"name": "a.example", "endpoint": "https://a.example"},
                {"name": "b.example", "endpoint": "https://b.example"},
            ]
        },
        "test.toml",
    )
    transport = Transport(config, max_backoff=0.05, scrub=str)
    await transport.start()
    try:
        routes = [config.route_for(name) for name in ("a.example", "b.example", "c.example", "d.example")]
        a, b, c, d = (transport.session(route) for route in routes if route is not None)
        assert a is not b
        assert c is d
        assert a is not c
        assert a.connector is not None
        assert c.connector is not None
        assert (a.connector.limit, a.connector.limit_per_host) == (64, 0)
        assert (c.connector.limit, c.connector.limit_per_host) == (32, 8)
    finally:
        await transport.close()


async def test_an_empty_200_for_a_non_empty_blob_is_not_relayed(hostile: HostileRegistry) -> None:
    upstreams = RegistryClient(_config(hostile, blobs="proxy"), max_backoff=0.05)
    await upstreams.start()
    try:
        with pytest.raises(WaveError) as caught:
            await registry_blob(upstreams, hostile.host, "empty-blob/img", Digest.of(LAYER_BYTES), "GET")
    finally:
        await upstreams.close()
    assert caught.value.kind is Errors.UPSTREAM_UNAVAILABLE
    assert "Content-Length 0 for a blob that is not empty; not relayed" in caught.value.message


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hostile: HostileRegistry) -> Iterator[WaveStack]:
    workdir: Path = tmp_path_factory.mktemp("isolation-stack")
    with WaveStack(workdir, registries=[{"name": hostile.host, "endpoint": hostile.url}]) as wave:
        wave.start()
        yield wave


@pytest.mark.parametrize(
    ("repository", "names"),
    [
        (
            "fat-config/img",
            "has more than 200000 JSON values",
        ),
        ("deep-json/img", "more than 64 deep; refused before parsing ([upstream].max_json_depth)"),
        ("many-layers/img", "lists 20000 layers, more than the 1000 wave-grpc augments ([upstream].max_layers)"),
    ],
)
def test_cheap_bytes_for_dear_objects_are_refused_with_the_memory_bounded(
    stack: WaveStack, hostile: HostileRegistry, repository: str, names: str
) -> None:
    assert stack.process is not None
    before = components.vm_hwm_kib(stack.process.pid)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stack.create(f"{hostile.host}/{repository}:latest")
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert names in error.details()
    assert f"{hostile.host}/{repository}" in error.details()
    assert time.monotonic() - started < 20
    grown = components.vm_hwm_kib(stack.process.pid) - before
    # json.loads of the fat config took 3.1 GiB; the bytes themselves are 31 MiB.
    assert grown < 256 << 10, f"peak RSS grew {grown / 1024:.0f} MiB"


@pytest.fixture(scope="module")
def mixed_stack(
    tmp_path_factory: pytest.TempPathFactory, hostile: HostileRegistry, registry: components.Registry
) -> Iterator[WaveStack]:
    workdir: Path = tmp_path_factory.mktemp("isolation-mixed")
    registries = [{"name": hostile.host, "endpoint": hostile.url}, {"name": registry.host, "endpoint": registry.url}]
    with WaveStack(workdir, registries=registries, upstream={"read_timeout": "5s"}) as wave:
        wave.start()
        yield wave


async def test_dripping_creations_whose_callers_left_do_not_hold_up_a_healthy_one(
    mixed_stack: WaveStack, hostile: HostileRegistry, base_images: components.BaseImages
) -> None:
    """The finding: 300 creations against a dripping registry, each caller giving up after 5 s,
    kept their fetches running and starved a healthy registry's creations for 30 s and more."""
    async with grpc.aio.insecure_channel(mixed_stack.grpc_address) as channel:
        stub = pb_grpc.AugmentServiceStub(channel)

        async def create(image: str, deadline: float) -> Any:
            return await stub.CreateContainer(pb.CreateContainerRequest(container_image=image), timeout=deadline)

        drips = [asyncio.create_task(create(f"{hostile.host}/drip/img:t{i}", deadline=3.0)) for i in range(150)]
        results = await asyncio.gather(*drips, return_exceptions=True)
        assert all(isinstance(r, grpc.aio.AioRpcError) for r in results)
        # The callers are gone: so is the work they started (no fetch left dripping for nobody).
        assert (await _settled(hostile, 0))["open"] == 0
        started = time.monotonic()
        healthy = await create(base_images.ref("latest"), deadline=30.0)
        took = time.monotonic() - started
    assert healthy.container_token
    assert took < 5, f"a healthy creation took {took:.1f}s after the dripping callers left"
    name = healthy.target_image.split("/", 1)[1].rsplit(":", 1)[0]
    pulled = mixed_stack.http(
        "GET",
        f"/v2/{name}/manifests/{healthy.target_image.rsplit(':', 1)[1]}",
        headers=[("Accept", t) for t in components.ALL_MANIFEST_TYPES],
    )
    assert pulled.status == 200


def test_a_manifest_nested_200000_deep_is_a_clear_error_to_inspect_over_grpc_and_rest(
    stack: WaveStack, hostile: HostileRegistry
) -> None:
    image = f"{hostile.host}/deep-json/img:latest"
    names = "more than 64 deep; refused before parsing ([upstream].max_json_depth)"
    with stack.stub() as stub, pytest.raises(grpc.RpcError) as caught:
        stub.InspectImage(pb.InspectImageRequest(container_image=image), timeout=30)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert names in error.details()
    answer = stack.post_json("/v1alpha1/inspect", {"containerImage": image})
    assert answer.status == 400, answer.body
    assert names in answer.json()["message"], answer.body
