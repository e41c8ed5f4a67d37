"""Identity before address (issue 18), against real processes: a forwarded client address is
believed only from the gateway proving itself with its secret (and X-Forwarded-For only from
the gateway's trusted proxies); a token holder never learns who created it or from where; and
token guessing is refused past [limits].token_misses_per_minute."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from gateway.clients import forwarded_client
from gateway.resolver import TokenResolver
from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.addresses import Networks
from wave_grpc.channel import CLIENT_ADDRESS_METADATA, GATEWAY_PROOF_METADATA
from wave_grpc.config import ConfigError, parse_config
from wave_grpc.errors import Errors, WaveError
from wave_grpc.metrics import Metrics
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.serving import with_gateway_secret

ALICE = "alice-token-0123456789"
TOKENS = [{"user": "alice", "sha256": hashlib.sha256(ALICE.encode()).hexdigest()}]
PROOF_ENV = "WAVE_GRPC_TEST_GATEWAY_GATEWAY_KEY"
GATEWAY_KEY = "a-gateway-secret-for-tests-0123456789"
WARNING = "no [service].gateway_secret_env"


def _fresh_window(margin: float = 20.0) -> None:
    """Limits count in one-minute windows: start a counting test well inside one."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.5)


def _rest_create(stack: WaveStack, image: str, headers: Sequence[tuple[str, str]] = ()) -> components.HttpResponse:
    return components.http_request(
        "POST",
        f"{stack.gateway_url}/v1alpha2/container",
        headers=[("Content-Type", "application/json"), *headers],
        body=json.dumps({"containerImage": image}).encode(),
    )


def _exhausted(stack: WaveStack, image: str, metadata: Sequence[tuple[str, str]] = ()) -> bool:
    try:
        stack.create(image, metadata=tuple(metadata))
    except grpc.RpcError as exc:
        error: Any = exc
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert "[limits].creates_per_minute" in error.details()
        return True
    return False


def _record(stack: WaveStack, token: str, metadata: Sequence[tuple[str, str]] = ()) -> pb.ContainerRecord:
    with stack.stub() as stub:
        answer: pb.GetContainerResponse = stub.GetContainer(
            pb.GetContainerRequest(container_token=token), metadata=tuple(metadata), timeout=10
        )
    return answer.container


def _manifest_path(created: pb.CreateContainerResponse) -> str:
    return "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0] + "/manifests/latest"


def test_forged_forwarded_addresses_buy_no_extra_creations(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    # The gateway trusts one proxy that is not us: our X-Forwarded-For comes from an untrusted peer.
    with WaveStack(
        tmp_path,
        registries=[registry_route(registry)],
        gateway={"trusted_proxies": ["192.0.2.1"]},
        limits={"creates_per_minute": 2},
    ) as stack:
        stack.start()
        _fresh_window()
        image = base_images.ref("latest")
        # Each claims another address in the gateway's metadata (one with a wrong secret): all are 127.0.0.1.
        forged = [
            ((CLIENT_ADDRESS_METADATA, "203.0.113.1"),),
            ((CLIENT_ADDRESS_METADATA, "203.0.113.2"), (GATEWAY_PROOF_METADATA, "not-the-gateway-secret-0123")),
            ((CLIENT_ADDRESS_METADATA, "203.0.113.3"),),
        ]
        assert [_exhausted(stack, image, metadata) for metadata in forged] == [False, False, True]
        untrusted = _rest_create(stack, image, [("X-Forwarded-For", "198.51.100.7")])
        assert untrusted.status == 429, untrusted.body
        assert "[limits].creates_per_minute" in untrusted.json()["message"]
        assert "127.0.0.1" in untrusted.json()["message"]


@pytest.mark.parametrize("workers", [1, 2])  # 2: the workers get serve's own secret too
def test_a_trusted_proxys_forwarded_address_is_what_counts(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages, workers: int
) -> None:
    with WaveStack(
        tmp_path,
        registries=[registry_route(registry)],
        gateway={"trusted_proxies": ["127.0.0.0/8"], "workers": workers},
        limits={"creates_per_minute": 1},
    ) as stack:
        stack.start()
        _fresh_window()
        image = base_images.ref("latest")
        assert not _exhausted(stack, image)
        assert _exhausted(stack, image)  # 127.0.0.1 has had its one
        # Behind the trusted proxy: the rightmost address not a proxy is the client (the left is the client's word).
        chain = [("X-Forwarded-For", "203.0.113.50, 198.51.100.7, 127.0.0.2")]
        assert _rest_create(stack, image, chain).status == 200
        again = _rest_create(stack, image, chain)
        assert again.status == 429
        assert "198.51.100.7" in again.json()["message"]
        assert _rest_create(stack, image, [("X-Forwarded-For", "198.51.100.8")]).status == 200


def test_a_token_holder_sees_no_owner_and_the_gateway_proves_itself_across_processes(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    """A split deployment with a secret from the environment: the gateway gets the owner (pulls are
    counted per owner), its forwarded address is believed; nobody else sees owner or address."""
    env = {PROOF_ENV: GATEWAY_KEY}
    common: dict[str, Any] = {"registries": [registry_route(registry)], "env": env, "limits": {"pulls_per_minute": 2}}
    service = {"tokens": TOKENS, "gateway_secret_env": PROOF_ENV}
    with (
        WaveStack(tmp_path / "service", service=service, **common) as svc,
        WaveStack(
            tmp_path / "gateway", service=service, grpc_port=svc.grpc_port, http_port=svc.http_port, **common
        ) as gw,
    ):
        svc.start(only="service")
        gw.start(only="gateway")
        image = base_images.ref("latest")
        mine = svc.create(image, metadata=(("authorization", f"Bearer {ALICE}"),))
        anonymous = svc.create(image)

        held = _record(svc, mine.container_token)
        assert (held.owner, held.creator_address) == ("", "")
        assert held.container_token == mine.container_token
        wrong = _record(svc, mine.container_token, [(GATEWAY_PROOF_METADATA, "x" * len(GATEWAY_KEY))])
        assert (wrong.owner, wrong.creator_address) == ("", "")
        proven = _record(svc, mine.container_token, [(GATEWAY_PROOF_METADATA, GATEWAY_KEY)])
        assert (proven.owner, proven.creator_address) == ("alice", "127.0.0.1")
        # A token created anonymously is described to whoever holds it, without the creator's address.
        with svc.stub() as stub:
            described = stub.DescribeContainer(
                pb.DescribeContainerRequest(container_token=anonymous.container_token), timeout=10
            ).container
        assert (described.owner, described.creator_address) == ("anonymous", "")

        # With the secret, a forwarded address is believed.
        proof = ((GATEWAY_PROOF_METADATA, GATEWAY_KEY),)
        forwarded = svc.create(image, metadata=((CLIENT_ADDRESS_METADATA, "203.0.113.9"), *proof))
        assert _record(svc, forwarded.container_token, proof).creator_address == ("203.0.113.9")

        # The gateway knows the owner: two anonymous tokens of one address share one pull count.
        _fresh_window()
        second = svc.create(image, container_config=pb.ContainerConfig(env=["RUN=2"]))
        assert second.container_token != anonymous.container_token
        assert gw.http("GET", _manifest_path(anonymous)).status == 200
        assert gw.http("GET", _manifest_path(second)).status == 200
        assert gw.http("GET", _manifest_path(anonymous)).status == 429
        assert WARNING not in gw.log_text()


def test_a_split_deployment_without_a_secret_warns_and_counts_pulls_per_token(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    common: dict[str, Any] = {"registries": [registry_route(registry)], "limits": {"pulls_per_minute": 1}}
    with (
        WaveStack(tmp_path / "service", **common) as svc,
        WaveStack(tmp_path / "gateway", grpc_port=svc.grpc_port, http_port=svc.http_port, **common) as gw,
    ):
        svc.start(only="service")
        gw.start(only="gateway")
        assert gw.log_text().count(WARNING) == 1
        image = base_images.ref("latest")
        _fresh_window()
        # Two requests that differ (identical ones would answer one token: same request, same name).
        first = svc.create(image)
        second = svc.create(image, container_config=pb.ContainerConfig(env=["RUN=2"]))
        assert gw.http("GET", _manifest_path(first)).status == 200
        assert gw.http("GET", _manifest_path(second)).status == 200  # its own count
        assert gw.http("GET", _manifest_path(first)).status == 429


def test_token_guessing_is_refused_past_the_limit(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    with WaveStack(tmp_path, registries=[registry_route(registry)], limits={"token_misses_per_minute": 4}) as stack:
        stack.start()
        _fresh_window()
        live = stack.create(base_images.ref("latest"))
        assert stack.http("GET", _manifest_path(live)).status == 200
        token = live.container_token
        guesses = [_manifest_path(live).replace(token, f"{'a' * 11}{i}") for i in range(3)]
        wrong_path = _manifest_path(live).replace(f"/wt/{token}/", f"/wt/{token}/not-its-name/")
        answers = [stack.http("GET", path) for path in [*guesses, wrong_path]]
        assert [a.status for a in answers] == [404] * 4
        assert {a.json()["errors"][0]["code"] for a in answers} == {"NAME_UNKNOWN"}

        over = stack.http("GET", guesses[0])
        assert over.status == 429
        assert over.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert "[limits].token_misses_per_minute" in over.json()["errors"][0]["message"]
        assert int(over.header("Retry-After") or "0") >= 1
        # From then on a live token answers the same: a refused guess tells nothing.
        assert stack.http("GET", _manifest_path(live)).status == 429


# -- the pieces, without processes ------------------------------------------------------


def test_the_client_behind_trusted_proxies_is_the_rightmost_address_not_a_proxy() -> None:
    proxies = Networks.parse(["127.0.0.1", "192.0.2.0/24"])
    assert forwarded_client("198.51.100.1", ["203.0.113.9"], proxies) == "198.51.100.1"  # not a proxy: its own
    assert forwarded_client("127.0.0.1", [], proxies) == "127.0.0.1"
    assert forwarded_client("127.0.0.1", ["203.0.113.9, 198.51.100.7"], proxies) == "198.51.100.7"
    assert forwarded_client("127.0.0.1", ["203.0.113.9", "198.51.100.7, 192.0.2.4"], proxies) == "198.51.100.7"
    assert forwarded_client("127.0.0.1", ["192.0.2.5, 192.0.2.4"], proxies) == "192.0.2.5"  # all proxies
    assert forwarded_client("127.0.0.1", ["unknown, 192.0.2.4"], proxies) == "192.0.2.4"  # a bad hop stops the walk
    assert forwarded_client("127.0.0.1", ["203.0.113.9"], Networks()) == "127.0.0.1"  # no proxies: none believed


def test_trusted_proxies_take_addresses_and_cidrs_and_name_a_bad_entry() -> None:
    config = parse_config({"gateway": {"trusted_proxies": ["10.0.0.0/8", "::1"]}}, "c.toml")
    assert "10.1.2.3" in config.gateway.trusted_proxies
    assert "::ffff:10.1.2.3" in config.gateway.trusted_proxies
    assert "::1" in config.gateway.trusted_proxies
    assert "127.0.0.1" not in config.gateway.trusted_proxies
    assert not parse_config({}, "c.toml").service.trusted_proxies
    with pytest.raises(ConfigError, match=r"\[gateway\]\.trusted_proxies\[1\]: 'proxy\.internal' is not an IP"):
        parse_config({"gateway": {"trusted_proxies": ["::1", "proxy.internal"]}}, "c.toml")


def test_gateway_secret_env_names_a_set_variable_of_sixteen_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROOF_ENV, raising=False)
    with pytest.raises(ConfigError, match=rf"\[service\]\.gateway_secret_env: environment variable {PROOF_ENV} is not"):
        parse_config({"service": {"gateway_secret_env": PROOF_ENV}}, "c.toml")
    monkeypatch.setenv(PROOF_ENV, "short")
    with pytest.raises(ConfigError, match="holds 5 characters"):
        parse_config({"service": {"gateway_secret_env": PROOF_ENV}}, "c.toml")
    monkeypatch.setenv(PROOF_ENV, GATEWAY_KEY)
    service = parse_config({"service": {"gateway_secret_env": PROOF_ENV}}, "c.toml").service
    assert service.gateway_secret is not None
    assert service.gateway_secret.value == GATEWAY_KEY
    assert GATEWAY_KEY not in repr(service)


def test_serve_makes_a_secret_for_both_faces_only_when_it_runs_both() -> None:
    config = parse_config({}, "c.toml")
    both = with_gateway_secret(config, None)
    assert both.service.gateway_secret is not None
    assert len(both.service.gateway_secret.value) >= 32
    assert with_gateway_secret(config, None).service.gateway_secret != both.service.gateway_secret
    assert with_gateway_secret(config, "service").service.gateway_secret is None
    assert with_gateway_secret(both, None) is both


class _UnknownTokens:
    """An AugmentService stub that knows no token, counting the lookups it is asked."""

    def __init__(self) -> None:
        self.lookups = 0

    async def GetContainer(self, request: pb.GetContainerRequest, **_: Any) -> pb.GetContainerResponse:
        self.lookups += 1
        raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "unknown", "")


def test_an_unknown_token_is_answered_from_memory_on_repeats() -> None:
    stub = _UnknownTokens()
    resolver = TokenResolver(
        cast(Any, stub),
        cast(Any, None),
        cast(Any, None),
        record_ttl=60.0,
        max_entries=8,
        max_bytes=1 << 20,
        metrics=Metrics(),
    )

    async def twice() -> None:
        for _ in range(2):
            with pytest.raises(WaveError) as caught:
                await resolver.resolve("abcdefabcdef")
            assert caught.value.kind is Errors.NAME_UNKNOWN

    asyncio.run(twice())
    assert stub.lookups == 1
