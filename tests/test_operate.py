"""Operating it, against real processes: listing, per-caller limits (shared through Redis), and
CLI errors that say what to change with exit codes that tell usage (2) from failed requests (1)."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_e2e_augment import cli
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
TOKENS = [{"user": u, "sha256": hashlib.sha256(t.encode()).hexdigest()} for u, t in (("alice", ALICE), ("bob", BOB))]


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _fresh_window(margin: float = 15.0) -> None:
    """Limits count in one-minute windows: start a counting test well inside one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.5)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, registry: components.Registry
) -> Iterator[WaveStack]:
    workdir = tmp_path_factory.mktemp(f"operate-{request.param}")
    service: dict[str, Any] = {"tokens": TOKENS}
    redis = components.start_redis(workdir / "redis") if request.param == "redis" else None
    if redis is not None:
        service["store"] = redis.url
    try:
        with WaveStack(workdir, registries=[registry_route(registry)], service=service) as wave:
            yield wave.start()
    finally:
        if redis is not None:
            redis.stop()


def test_list_shows_the_callers_live_tokens(stack: WaveStack, base_images: components.BaseImages) -> None:
    image = base_images.ref("latest")
    # Two different requests: an identical one would answer the same token (same request, same name).
    mine = [
        stack.create(
            image, metadata=_bearer(ALICE), container_config=pb.ContainerConfig(env=[f"RUN={i}"])
        ).container_token
        for i in range(2)
    ]
    theirs = stack.create(image, metadata=_bearer(BOB)).container_token
    anonymous = stack.create(image).container_token

    listed = cli("list", "--server", stack.grpc_address, "--token", ALICE, "-o", "json")
    tokens = {item["containerToken"] for item in json.loads(listed.stdout)}
    assert set(mine) <= tokens
    assert theirs not in tokens
    assert anonymous not in tokens
    text = cli("list", "--server", stack.grpc_address, "--token", ALICE).stdout
    assert text.splitlines()[0].split() == ["TOKEN", "STATUS", "EXPIRES", "SOURCE", "TARGET"]
    assert all(token in text for token in mine)
    # An address is no identity (a NAT, a login node, a proxy shares it): an anonymous caller
    # lists nothing, and is told how to get a caller token. Two anonymous callers at one
    # address (two processes here) see none of each other's tokens.
    other_anonymous = stack.create(image).container_token
    for _ in range(2):
        refused = cli("list", "--server", stack.grpc_address, "-o", "json", check=False)
        assert refused.returncode == 1
        assert anonymous not in refused.stdout
        assert other_anonymous not in refused.stdout
        assert json.loads(refused.stdout)["code"] == "PERMISSION_DENIED"
        assert "listing tokens needs a caller token" in refused.stderr
        assert "[service].tokens" in refused.stderr

    cli("revoke", mine[0], "--server", stack.grpc_address, "--token", ALICE)
    after = {item["containerToken"] for item in json.loads(listed_again(stack).stdout)}
    assert mine[0] not in after
    assert mine[1] in after


def listed_again(stack: WaveStack) -> Any:
    return cli("list", "--server", stack.grpc_address, "--token", ALICE, "-o", "json")


def test_inspect_takes_a_target_image_name_and_prints_text(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    created = stack.create(base_images.ref("latest"), metadata=_bearer(ALICE))
    text = cli("inspect", created.target_image, "--server", stack.grpc_address, "--token", ALICE).stdout
    assert text.splitlines()[0].split() == ["token", created.container_token]
    assert f"image        {created.target_image}" in text
    as_json = json.loads(
        cli("inspect", created.target_image, "--server", stack.grpc_address, "--token", ALICE, "-o", "json").stdout
    )
    assert as_json["containerToken"] == created.container_token


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[components.RedisServer]:
    with components.start_redis(tmp_path_factory.mktemp("limits-redis")) as server:
        yield server


def test_creation_and_pull_limits_over_grpc_rest_and_v2_shared_by_two_services(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages, redis_server: Any
) -> None:
    limits = {"creates_per_minute": 3, "pulls_per_minute": 4}
    service = {"store": redis_server.url}
    with (
        WaveStack(tmp_path / "a", registries=[registry_route(registry)], service=service, limits=limits) as a,
        WaveStack(tmp_path / "b", registries=[registry_route(registry)], service=service, limits=limits) as b,
    ):
        a.start()
        b.start()
        _fresh_window()
        image = base_images.ref("latest")
        first = a.create(image)
        b.create(image)
        a.create(image)  # three creations by one anonymous caller (127.0.0.1), across two services
        with pytest.raises(grpc.RpcError) as caught:
            b.create(image)
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "[limits].creates_per_minute" in error.details()
        assert "retry in" in error.details()
        rest = components.http_request(
            "POST",
            f"{a.gateway_url}/v1alpha2/container",
            headers=[("Content-Type", "application/json")],
            body=json.dumps({"containerImage": image}).encode(),
        )
        assert rest.status == 429
        assert "[limits].creates_per_minute" in rest.json()["message"]

        name = "/v2/" + first.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        for gateway in (a, b, a, b):  # pulls of one owner's token, on both gateways
            assert gateway.http("GET", f"{name}/manifests/latest").status == 200
        blob = a.http("HEAD", f"{name}/manifests/latest")
        assert blob.status == 200  # HEAD is not a pull
        over = a.http("GET", f"{name}/manifests/latest")
        assert over.status == 429
        assert json.loads(over.body)["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert int(over.header("Retry-After") or "0") >= 1


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    down = components.free_port()
    routes = [registry_route(registry), {"name": f"127.0.0.1:{down}", "endpoint": f"http://127.0.0.1:{down}"}]
    with WaveStack(tmp_path_factory.mktemp("cli-errors"), registries=routes) as wave:
        yield wave.start()


def test_cli_errors_say_what_to_change(plain: WaveStack, tmp_path: Path, base_images: components.BaseImages) -> None:
    image = base_images.ref("latest")
    http_port = cli("augment", image, "--server", plain.gateway_host, check=False)
    assert http_port.returncode == 1
    assert "--server takes the AugmentService's address" in http_port.stderr
    assert "Traceback" not in http_port.stderr

    nobody = cli("augment", image, "--server", f"127.0.0.1:{components.free_port()}", check=False)
    assert nobody.returncode == 1
    assert "cannot reach the AugmentService" in nobody.stderr

    # A source registry that is down is the registry's failure, not the service's.
    unreachable = f"127.0.0.1:{plain.registries[1]['endpoint'].rsplit(':', 1)[1]}/library/busybox:latest"
    upstream = cli("augment", unreachable, "--server", plain.grpc_address, check=False)
    assert upstream.returncode == 1
    assert "cannot reach the AugmentService" not in upstream.stderr
    assert "is unreachable" in upstream.stderr

    not_gzip = tmp_path / "layer.tar.gz"
    not_gzip.write_bytes(b"this is not gzip at all")
    bad = cli("augment", image, "--layer", str(not_gzip), "--server", plain.grpc_address, check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"wave-grpc: --layer {not_gzip}: not a gzip stream")
    assert "Traceback" not in bad.stderr
    not_tar = tmp_path / "text.tar.gz"
    not_tar.write_bytes(gzip.compress(b"plain text, not a tar\n" * 40))
    bad = cli("augment", image, "--layer", str(not_tar), "--server", plain.grpc_address, check=False)
    assert bad.returncode == 2
    assert "is not a tar archive" in bad.stderr

    # A typo in the image is found before any layer is packed or uploaded.
    tools = tmp_path / "tools"
    (tools / "opt").mkdir(parents=True)
    (tools / "opt" / "big.bin").write_bytes(bytes(2 << 20))
    typo = cli(
        "augment",
        image.replace("busybox", "busybx"),
        "--layer",
        str(tools),
        "--server",
        plain.grpc_address,
        check=False,
    )
    assert typo.returncode == 1
    assert "container_image" in typo.stderr
    assert "stored layer" not in plain.log_text()

    as_json = cli("inspect", "aaaaaaaaaaaa", "--server", plain.grpc_address, "-o", "json", check=False)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["code"] == "NOT_FOUND"

    usage = cli("--help").stdout
    assert "gateway-worker" not in usage
    assert "127.0.0.1:50051" in cli("augment", "--help").stdout
