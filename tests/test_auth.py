"""Caller authentication: the verifiers, their order, caching, and the [auth] config.

``FakePlatform`` is a real HTTP server on 127.0.0.1 that plays Seqera Platform's
``GET /user-info`` (tests/test_wave_api.py uses it against a running service too).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests import components
from tests.fakeplatform import BROKEN, BUSY, CAROL, WRONG, FakePlatform
from wave_grpc.config import ConfigError, StaticToken, parse_config
from wave_grpc.errors import Errors, WaveError
from wave_grpc.record import ANONYMOUS
from wave_grpc.service.auth import (
    Authenticator,
    Decline,
    StaticTokens,
    TowerUserInfo,
    Verifier,
    bearer_token,
)


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- tokens in metadata ---------------------------------------------------------


def test_bearer_token_from_metadata() -> None:
    assert bearer_token([("authorization", "Bearer abc ")]) == "abc"
    assert bearer_token([("authorization", "bearer abc")]) == "abc"
    assert bearer_token([("authorization", "Basic dTpw")]) == ""
    assert bearer_token([("authorization", "Bearer ")]) == ""
    assert bearer_token([("x-other", "Bearer abc")]) == ""
    assert bearer_token(None) == ""


# -- static tokens ----------------------------------------------------------------


async def test_static_tokens_map_hashes_to_users() -> None:
    static = StaticTokens([StaticToken("alice", _sha("a-secret")), StaticToken("bob", _sha("b-secret"))])
    assert await static.verify("a-secret", "") == "alice"
    assert await static.verify("b-secret", "https://ignored.example") == "bob"
    declined = await static.verify("nope", "")
    assert isinstance(declined, Decline)
    assert "nope" not in declined.reason


# -- the Seqera Platform verifier ------------------------------------------------------


async def test_tower_user_info_accepts_and_caches(platform: FakePlatform) -> None:
    now = [1000.0]
    tower = TowerUserInfo(platform.url, cache_ttl=30, clock=lambda: now[0])
    before = platform.count()
    assert await tower.verify(CAROL, "") == f"tower:{platform.host}/7"
    assert await tower.verify(CAROL, platform.url + "/") == f"tower:{platform.host}/7"
    assert platform.count() == before + 1, "a second check within cache_ttl must not call the platform"
    now[0] += 31
    assert await tower.verify(CAROL, "") == f"tower:{platform.host}/7"
    assert platform.count() == before + 2, "an expired cache entry is checked again"


async def test_tower_user_info_refusals_and_failures(platform: FakePlatform) -> None:
    tower = TowerUserInfo(platform.url)
    refused = await tower.verify(WRONG, "")
    assert isinstance(refused, Decline)
    assert "401" in refused.reason
    assert WRONG not in refused.reason
    with pytest.raises(WaveError) as busy:
        await tower.verify(BUSY, "")
    assert busy.value.kind is Errors.TOO_MANY_REQUESTS
    with pytest.raises(WaveError) as broken:
        await tower.verify(BROKEN, "")
    assert broken.value.kind is Errors.SERVICE_UNAVAILABLE
    assert "HTTP 500" in broken.value.message
    # Refusals are not cached: each check asks again.
    tower2 = TowerUserInfo(platform.url)
    assert isinstance(await tower2.verify(WRONG, ""), Decline)
    assert platform.count("/user-info", WRONG) == 2


async def test_tower_user_info_never_follows_redirects(platform: FakePlatform) -> None:
    before = platform.count()
    tower = TowerUserInfo(platform.url + "/redirect")
    with pytest.raises(WaveError) as caught:
        await tower.verify(CAROL, "")
    assert caught.value.kind is Errors.SERVICE_UNAVAILABLE
    assert "302" in caught.value.message
    assert platform.count() == before, "the token must not follow a redirect"


async def test_tower_unreachable_is_unavailable() -> None:
    tower = TowerUserInfo(f"http://127.0.0.1:{components.free_port()}", timeout=5)
    with pytest.raises(WaveError) as caught:
        await tower.verify(CAROL, "")
    assert caught.value.kind is Errors.SERVICE_UNAVAILABLE
    assert "cannot reach" in caught.value.message


async def test_tower_endpoint_from_the_request_only_when_allowed(platform: FakePlatform) -> None:
    tower = TowerUserInfo(platform.url, [platform.url + "/alt"])
    assert await tower.verify(CAROL, platform.url + "/alt") == f"tower:{platform.host}/7"
    assert platform.count("/alt/user-info") == 1
    elsewhere = f"http://127.0.0.1:{components.free_port()}"
    declined = await tower.verify(CAROL, elsewhere)
    assert isinstance(declined, Decline)
    assert elsewhere in declined.reason
    assert "allowed_endpoints" in declined.reason


# -- the authenticator -----------------------------------------------------------------


async def test_authenticator_policy(platform: FakePlatform) -> None:
    static = StaticTokens([StaticToken("alice", _sha("a-secret"))])
    down = TowerUserInfo(f"http://127.0.0.1:{components.free_port()}", timeout=5)

    open_door = Authenticator([], anonymous=True)
    assert await open_door.authenticate("") == ANONYMOUS
    # No verifier at all: a presented token is ignored (Nextflow sends one whenever it has one).
    assert await open_door.authenticate("whatever") == ANONYMOUS

    mixed = Authenticator([static, TowerUserInfo(platform.url)], anonymous=True)
    assert await mixed.authenticate("") == ANONYMOUS
    assert await mixed.authenticate("a-secret") == "alice"
    assert await mixed.authenticate(CAROL) == f"tower:{platform.host}/7"
    with pytest.raises(WaveError) as refused:
        await mixed.authenticate("bad-token")
    assert refused.value.kind is Errors.UNAUTHORIZED, "a bad token is refused, not downgraded to anonymous"
    assert "static: not a configured token" in refused.value.message
    assert "tower:" in refused.value.message
    assert "bad-token" not in refused.value.message

    # A verifier that cannot answer does not hide one that can, in either order.
    orders: list[list[Verifier]] = [[down, static], [static, down]]
    for verifiers in orders:
        auth = Authenticator(verifiers, anonymous=False)
        assert await auth.authenticate("a-secret") == "alice"
        with pytest.raises(WaveError) as unavailable:
            await auth.authenticate("bad-token")
        assert unavailable.value.kind is Errors.SERVICE_UNAVAILABLE, "the token might be good: retry, not 401"

    closed = Authenticator([static], anonymous=False)
    with pytest.raises(WaveError) as missing:
        await closed.authenticate("")
    assert missing.value.kind is Errors.UNAUTHORIZED
    assert "Bearer" in missing.value.message


# -- config ------------------------------------------------------------------------------


def test_auth_config_defaults_and_tower() -> None:
    assert parse_config({}, "x.toml").auth.verifiers == ()
    tokens = {"tokens": [{"user": "alice", "sha256": _sha("a")}]}
    assert parse_config({"service": tokens}, "x.toml").auth.verifiers == ("static",)
    config = parse_config(
        {
            "service": {"anonymous": False, **tokens},
            "auth": {
                "verifiers": ["tower", "static"],
                "tower": {
                    "endpoint": "https://platform.example.com/api/",
                    "allowed_endpoints": ["https://other.example.com/api"],
                    "cache_ttl": "5s",
                },
            },
        },
        "x.toml",
    )
    assert config.auth.verifiers == ("tower", "static")
    assert config.auth.tower.endpoint == "https://platform.example.com/api"
    assert config.auth.tower.allowed_endpoints == ("https://other.example.com/api",)
    assert config.auth.tower.cache_ttl.total_seconds() == 5
    names = [type(v).__name__ for v in Authenticator.from_config(config).verifiers]
    assert names == ["TowerUserInfo", "StaticTokens"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"auth": {"verifiers": ["ldap"]}}, r"\[auth\]\.verifiers\[0\]: 'ldap' is not one of static, tower"),
        ({"auth": {"verifiers": ["tower"]}}, r"\[auth\.tower\]\.endpoint: is required"),
        ({"auth": {"verifiers": ["static"]}}, r"\[auth\]\.verifiers: \"static\" needs \[service\]\.tokens"),
        ({"auth": {"tower": {"endpoint": "ftp://x"}}}, r"\[auth\.tower\]\.endpoint: 'ftp://x' must be an http"),
        ({"auth": {"tower": {"endpoint": "https://u:p@x"}}}, r"without credentials"),
        ({"auth": {"tower": {"endpoit": "https://x"}}}, r"\[auth\.tower\]\.endpoit: unknown key"),
        ({"auth": {"verifier": []}}, r"\[auth\]\.verifier: unknown key"),
        ({"service": {"anonymous": False}}, r"\[service\]\.anonymous: false needs a way to verify callers"),
        ({"service": {"max_layer_size": 0}}, r"\[service\]\.max_layer_size: must be positive"),
    ],
)
def test_auth_config_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data, "x.toml")
