"""Pipelines (issue 21): one name for one request, and renewal, on both token stores.

A real ``wave-grpc serve`` (tests/stack.py) over SQLite and over a real redis-server;
creations over gRPC, the CLI and Wave's REST API. ``token_ttl`` is 1h and
``max_token_lifetime`` 2h, so a renewal has room to move and a maximum to reach.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_e2e_augment import cli
from tests.test_operate import ALICE, BOB, TOKENS
from tests.upstreams import hello_layer
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

HOUR = 3600


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Deployment:
    stack: WaveStack
    redis_url: str | None  # the token store, when it is Redis


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, registry: components.Registry
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp(f"pipelines-{request.param}")
    service: dict[str, Any] = {"tokens": TOKENS, "token_ttl": "1h", "max_token_lifetime": "2h"}
    store = components.start_redis(workdir / "redis") if request.param == "redis" else None
    if store is not None:
        service["store"] = store.url
    try:
        with WaveStack(workdir, registries=[registry_route(registry)], service=service) as wave:
            yield Deployment(wave.start(), store.url if store is not None else None)
    finally:
        if store is not None:
            store.stop()


def _create(stack: WaveStack, image: str, token: str | None, **kwargs: Any) -> pb.CreateContainerResponse:
    return stack.create(image, metadata=_bearer(token) if token else (), **kwargs)


def _listed(stack: WaveStack, token: str) -> list[pb.ContainerSummary]:
    with stack.stub() as stub:
        response = stub.ListContainers(pb.ListContainersRequest(page_size=1000), metadata=_bearer(token), timeout=30)
    return list(response.containers)


def _renew(stack: WaveStack, token: str, caller: str, seconds: int | None = None) -> pb.RenewContainerResponse:
    request = pb.RenewContainerRequest(container_token=token)
    if seconds is not None:
        request.duration.FromSeconds(seconds)
    with stack.stub() as stub:
        response: pb.RenewContainerResponse = stub.RenewContainer(request, metadata=_bearer(caller), timeout=30)
    return response


def _refused(stack: WaveStack, token: str, caller: str, seconds: int | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _renew(stack, token, caller, seconds)
    return caught.value


def test_identical_grpc_creations_answer_one_token_until_revoked(
    deployment: Deployment, base_images: components.BaseImages, tmp_path: Path
) -> None:
    stack = deployment.stack
    image = base_images.ref("latest")
    _, layer = hello_layer(tmp_path)
    config = pb.ContainerConfig(env=["PIPELINE=rnaseq"], layers=[layer])
    first = _create(stack, image, ALICE, container_config=config)
    records = len(_listed(stack, ALICE))
    second = _create(stack, image, ALICE, container_config=config)
    assert (first.cached, second.cached) == (False, True)
    assert (second.container_token, second.target_image) == (first.container_token, first.target_image)
    assert (second.request_id, second.target_digest) == (first.request_id, first.target_digest)
    assert len(_listed(stack, ALICE)) == records, "no new record for an identical request"

    # Any difference, or another caller, gets its own token.
    changed = pb.ContainerConfig(env=["PIPELINE=sarek"], layers=[layer])
    assert _create(stack, image, ALICE, container_config=changed).container_token != first.container_token
    fewer = pb.ContainerConfig(env=["PIPELINE=rnaseq"])
    assert _create(stack, image, ALICE, container_config=fewer).container_token != first.container_token
    platform = _create(stack, base_images.ref("multi"), ALICE, container_config=config, container_platform="arm64")
    assert platform.container_token != first.container_token
    others = {_create(stack, image, caller, container_config=config).container_token for caller in (BOB, None)}
    assert first.container_token not in others
    assert len(others) == 2

    # Revoking drops the index: the same request then gets a new token.
    with stack.stub() as stub:
        stub.RevokeContainer(
            pb.RevokeContainerRequest(container_token=first.container_token), metadata=_bearer(ALICE), timeout=30
        )
    again = _create(stack, image, ALICE, container_config=config)
    assert (again.cached, again.container_token != first.container_token) == (False, True)


def test_identical_cli_and_rest_creations_print_one_name(
    deployment: Deployment, base_images: components.BaseImages, tmp_path: Path
) -> None:
    stack = deployment.stack
    tools = tmp_path / "tools"
    (tools / "opt" / "tools").mkdir(parents=True)
    (tools / "opt" / "tools" / "run.sh").write_text("#!/bin/sh\necho run\n")

    def augment(*extra: str) -> str:
        args = ("augment", base_images.ref("latest"), "--layer", str(tools), "--server", stack.grpc_address)
        return cli(*args, "--token", ALICE, *extra).stdout.strip()

    name = augment("--config-env", "STEP=align")
    assert augment("--config-env", "STEP=align") == name
    assert augment("--config-env", "STEP=count") != name

    body = {"containerImage": base_images.ref("latest"), "containerConfig": {"env": ["REST=1"]}}
    first = stack.post_json("/v1alpha2/container", body)
    second = stack.post_json("/container-token", body)
    assert (first.status, second.status) == (200, 200), second.body
    assert "cached" not in first.json()
    assert second.json()["cached"] is True
    assert second.json()["targetImage"] == first.json()["targetImage"]
    changed = stack.post_json("/v1alpha2/container", {**body, "containerConfig": {"env": ["REST=2"]}})
    assert changed.json()["targetImage"] != first.json()["targetImage"]


def _expiry(stack: WaveStack, token: str) -> int:
    with stack.stub() as stub:
        response = stub.DescribeContainer(
            pb.DescribeContainerRequest(container_token=token), metadata=_bearer(ALICE), timeout=30
        )
    return int(response.container.expiration.seconds)


def _check_redis_ttls(url: str, record: pb.ContainerRecord, at_least: int) -> None:
    """Every key of the token (the record, its request id and fingerprint) expires with it."""
    client = redis.Redis.from_url(url)
    try:
        for key in (
            f"wave-grpc:token:{record.container_token}",
            f"wave-grpc:request:{record.request_id}",
            f"wave-grpc:fingerprint:{record.request_fingerprint}",
        ):
            assert int(client.ttl(key)) >= at_least, key
        score = client.zscore(f"wave-grpc:listing:{record.owner}", record.container_token)
        assert score is not None
        assert score >= time.time() + at_least
    finally:
        client.close()


def test_renewal_moves_the_expiry_up_to_the_maximum_for_the_owner_only(
    deployment: Deployment, base_images: components.BaseImages
) -> None:
    stack = deployment.stack
    image = base_images.ref("latest")
    config = pb.ContainerConfig(env=["RENEW=me"])
    created = _create(stack, image, ALICE, container_config=config)
    token = created.container_token
    before = _expiry(stack, token)
    assert before - time.time() <= HOUR

    renewed = _renew(stack, token, ALICE, 90 * 60)
    after = _expiry(stack, token)
    assert after == renewed.expiration.seconds
    assert after - time.time() > HOUR + 25 * 60
    assert renewed.max_expiration.seconds == created.expiration.seconds + HOUR  # creation + 2h
    # The expiry shows in inspect, list and Wave's status.
    shown = renewed.expiration.ToJsonString()
    assert f"expires      {shown}" in cli("inspect", token, "--server", stack.grpc_address, "--token", ALICE).stdout
    listed = json.loads(cli("list", "--server", stack.grpc_address, "--token", ALICE, "-o", "json").stdout)
    assert {item["containerToken"]: item["expiration"] for item in listed}[token] == shown
    status = stack.http("GET", f"/v1alpha2/container/{created.request_id}/status")
    assert status.json()["expiration"] == shown
    if deployment.redis_url is not None:
        with stack.stub() as stub:
            record = stub.DescribeContainer(
                pb.DescribeContainerRequest(container_token=token), metadata=_bearer(ALICE), timeout=30
            ).container
        _check_redis_ttls(deployment.redis_url, record, HOUR + 25 * 60)

    # The same request answers the renewed token, its expiry kept.
    again = _create(stack, image, ALICE, container_config=config)
    assert (again.container_token, again.expiration.seconds) == (token, after)

    # Another caller may not; past the maximum is refused, naming the key.
    denied = _refused(stack, token, BOB, 60)
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    past = _refused(stack, token, ALICE, 3 * HOUR)
    assert past.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_token_lifetime" in (past.details() or "")
    rest = components.http_request(
        "POST",
        f"{stack.gateway_url}/container-token/{token}/renew",
        headers=[("Authorization", f"Bearer {BOB}"), ("Content-Type", "application/json")],
        body=b'{"duration": "60s"}',
    )
    assert rest.status == 403, rest.body

    # The CLI and REST forms; a renewal without a duration never shortens the token.
    text = cli("renew", token, "--for", "100m", "--server", stack.grpc_address, "--token", ALICE).stdout
    assert text.startswith(f"renewed {token}: expires ")
    assert _expiry(stack, token) - time.time() > HOUR + 35 * 60
    rest = components.http_request(
        "POST",
        f"{stack.gateway_url}/container-token/{token}/renew",
        headers=[("Authorization", f"Bearer {ALICE}"), ("Content-Type", "application/json")],
        body=b'{"duration": "6000s"}',
    )
    assert rest.status == 200, rest.body
    assert rest.json()["maxExpiration"] == renewed.max_expiration.ToJsonString()
    kept = _expiry(stack, token)
    assert _renew(stack, token, ALICE).expiration.seconds == kept
    failed = cli("renew", token, "--for", "3h", "--server", stack.grpc_address, "--token", ALICE, check=False)
    assert failed.returncode == 1
    assert "max_token_lifetime" in failed.stderr
