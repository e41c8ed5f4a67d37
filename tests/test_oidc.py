"""OIDC callers against a real issuer on loopback (tests/oidcissuer.py: discovery + JWKS from
an aiohttp app, keys made with cryptography, tokens signed with PyJWT).

In-process: each refusal names its check (expired, wrong audience, unknown issuer, bad
signature, alg none, HS256, ...); a rotated key is fetched once; a flood of made-up key
ids costs the issuer one fetch per refresh interval; an issuer's bad answers are never
quoted. Against a real ``wave-grpc serve``: a valid token creates and lists only its
own tokens, another subject cannot revoke them, an expired token is UNAUTHENTICATED,
and a key rotated in after start works after one refresh.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest

from tests import components
from tests.egressproxy import start_forward_proxy
from tests.oidcissuer import HUGE_PATH, NOT_JSON_PATH, NOT_JSON_TEXT, OidcIssuer, SigningKeyPair
from tests.stack import WaveStack, registry_route
from wave_grpc.config import ConfigError, parse_config
from wave_grpc.config.egress import EgressProxy
from wave_grpc.config.oidc import OidcIssuerConfig
from wave_grpc.errors import Errors, WaveError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.service.auth import Authenticator, OidcTokens
from wave_grpc.service.oidc import OidcIssuers, Refusal

PROXY_PASSWORD = "proxy-secret-1"  # noqa: S105 - the test proxy's


@pytest.fixture(scope="module")
def issuer() -> Iterator[OidcIssuer]:
    server = OidcIssuer().start()
    try:
        yield server
    finally:
        server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _entry(issuer: OidcIssuer, **overrides: Any) -> OidcIssuerConfig:
    data = {"issuer": issuer.url, "audience": issuer.audience, **overrides}
    return parse_config({"auth": {"oidc": [data]}}, "t.toml").auth.oidc[0]


def _issuers(issuer: OidcIssuer, clock: Clock | None = None, **overrides: Any) -> OidcIssuers:
    return OidcIssuers.from_entries((_entry(issuer, **overrides),), clock=clock or Clock())


def _b64(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def _refused(result: str | Refusal) -> str:
    assert isinstance(result, Refusal), f"accepted as {result!r}"
    return result.reason


# -- accepted ------------------------------------------------------------------------------


async def test_rs256_and_es256_tokens_name_the_caller_with_the_issuer_prefix(issuer: OidcIssuer) -> None:
    es_key = SigningKeyPair("es-key", "ES256")
    issuer.keys = [*issuer.keys, es_key]
    try:
        issuers = _issuers(issuer)
        host = issuer.url.removeprefix("http://")
        assert await issuers.caller(issuer.token("alice")) == f"oidc:{host}/alice"
        assert await issuers.caller(issuer.token("bob", key=es_key)) == f"oidc:{host}/bob"
        custom = _issuers(issuer, claim="email", prefix="")
        assert await custom.caller(issuer.token("x", email="carol@example.com")) == "carol@example.com"
        assert "'email' claim" in _refused(await custom.caller(issuer.token("x")))
    finally:
        issuer.keys.remove(es_key)


# -- refused, naming which check ------------------------------------------------------------------


async def test_each_refusal_names_what_failed(issuer: OidcIssuer) -> None:
    issuers = _issuers(issuer)
    now = int(time.time())
    expired = _refused(await issuers.caller(issuer.token("alice", exp=now - 3600, iat=now - 7200)))
    assert expired.startswith("expired at ")
    assert f"(leeway 60s): get a fresh token from {issuer.url}" in expired
    # Within the leeway an expired token still passes: clocks differ.
    assert isinstance(await issuers.caller(issuer.token("alice", exp=now - 30)), str)

    audience = _refused(await issuers.caller(issuer.token("alice", aud="someone-else")))
    assert audience == (
        f"wrong audience: the token is for 'someone-else'; tokens of {issuer.url} must be for 'wave-grpc' "
        "([[auth.oidc]] audience)"
    )

    stranger = "https://issuer.elsewhere.example"
    unknown = _refused(await issuers.caller(issuer.token("alice", iss=stranger)))
    assert unknown == f"unknown issuer {stranger!r}: this service accepts tokens of {issuer.url} ([[auth.oidc]] issuer)"

    impostor = SigningKeyPair("key-1")  # the published key id, another key
    forged = _refused(await issuers.caller(issuer.token("alice", key=impostor)))
    assert forged.startswith("bad signature")

    claims = {"iss": issuer.url, "aud": issuer.audience, "sub": "a", "exp": now + 60}
    unsigned = ".".join((_b64({"alg": "none", "typ": "JWT"}), _b64(claims), ""))  # what PyJWT itself will not make
    assert _refused(await issuers.caller(unsigned)).startswith("alg 'none' is not accepted")
    shared = jwt.encode(claims, "x" * 32, "HS256")
    assert _refused(await issuers.caller(shared)).startswith("alg 'HS256' is not accepted")

    assert _refused(await issuers.caller("not-a-jwt")).startswith("not a JWT")
    no_exp = jwt.encode({"iss": issuer.url, "aud": issuer.audience, "sub": "a"}, issuer.keys[0].private, "RS256")
    assert "no 'exp' claim" in _refused(await issuers.caller(no_exp))
    assert "no 'sub' claim" in _refused(await issuers.caller(issuer.token("", sub=None)))


async def test_the_authenticator_answers_unauthenticated_naming_the_check(issuer: OidcIssuer) -> None:
    auth = Authenticator([OidcTokens(_issuers(issuer))], anonymous=False)
    token = issuer.token("alice", aud="other")
    with pytest.raises(WaveError) as caught:
        await auth.authenticate(token)
    assert caught.value.kind is Errors.UNAUTHORIZED
    assert caught.value.kind.grpc_status is grpc.StatusCode.UNAUTHENTICATED
    assert "oidc: wrong audience" in caught.value.message
    assert token not in caught.value.message


# -- keys: rotation, the refresh bound, bad issuers -------------------------------------------------


async def test_a_rotated_key_is_fetched_once_and_then_works(issuer: OidcIssuer) -> None:
    clock = Clock()
    issuers = _issuers(issuer, clock)
    before = issuer.jwks_fetches()
    assert isinstance(await issuers.caller(issuer.token("alice")), str)
    assert issuer.jwks_fetches() == before + 1
    rotated = issuer.rotate("key-rotated")
    try:
        # Fetched moments ago: the rate bound holds the refresh back, and the refusal says when.
        held = _refused(await issuers.caller(issuer.token("alice", key=rotated)))
        assert held.startswith("unknown key id 'key-rotated'")
        assert "the next refetch may happen in 30s" in held
        clock.now += 31
        assert isinstance(await issuers.caller(issuer.token("alice", key=rotated)), str)
        assert isinstance(await issuers.caller(issuer.token("bob", key=rotated)), str)
        assert issuer.jwks_fetches() == before + 2, "one refresh for the rotated key, then it is known"
    finally:
        issuer.keys.remove(rotated)


async def test_a_flood_of_made_up_key_ids_costs_one_fetch_per_interval(issuer: OidcIssuer) -> None:
    clock = Clock()
    issuers = _issuers(issuer, clock)
    assert isinstance(await issuers.caller(issuer.token("alice")), str)
    clock.now += 31
    before = issuer.jwks_fetches()
    impostor = SigningKeyPair("key-1")
    flood = []
    for i in range(50):
        impostor.kid = f"made-up-{i}"
        flood.append(issuer.token("mallory", key=impostor))
    results = await asyncio.gather(*(issuers.caller(t) for t in flood))
    assert all(isinstance(r, Refusal) and r.reason.startswith("unknown key id") for r in results)
    assert issuer.jwks_fetches() == before + 1, "concurrent refreshes share one fetch"
    for token in flood[:10]:
        await issuers.caller(token)
    assert issuer.jwks_fetches() == before + 1, "no refresh within min_refresh_interval"
    clock.now += 31
    await issuers.caller(flood[0])
    assert issuer.jwks_fetches() == before + 2
    assert issuers.keys_of(issuer.url).fetches == 3


@pytest.mark.parametrize(
    ("jwks_path", "problem"),
    [
        (NOT_JSON_PATH, "is not JSON"),
        (HUGE_PATH, "is over 262144 bytes"),
        ("/missing", "answered HTTP 404"),
    ],
)
async def test_an_issuers_bad_answer_is_unavailable_and_never_quoted(
    issuer: OidcIssuer, jwks_path: str, problem: str
) -> None:
    issuers = _issuers(issuer, jwks_url=issuer.url + jwks_path)
    with pytest.raises(WaveError) as caught:
        await issuers.caller(issuer.token("alice"))
    assert caught.value.kind is Errors.SERVICE_UNAVAILABLE
    assert caught.value.message.startswith(f"cannot fetch the signing keys of OIDC issuer {issuer.url}: ")
    assert problem in caught.value.message
    assert NOT_JSON_TEXT not in caught.value.message


async def test_an_unreachable_issuer_is_unavailable() -> None:
    down = OidcIssuer()  # never started: nothing listens on its port
    issuers = OidcIssuers.from_entries(
        (OidcIssuerConfig(issuer=down.url, audience=("wave-grpc",), prefix="down/", timeout=timedelta(seconds=5)),)
    )
    with pytest.raises(WaveError) as caught:
        await issuers.caller(down.token("alice"))
    assert caught.value.kind is Errors.SERVICE_UNAVAILABLE
    assert "cannot reach" in caught.value.message


@pytest.mark.components
async def test_keys_are_fetched_through_the_egress_proxy(issuer: OidcIssuer, tmp_path: Path) -> None:
    with start_forward_proxy(tmp_path / "proxy", user="wave", password=PROXY_PASSWORD) as proxy:
        through = EgressProxy(f"http://127.0.0.1:{proxy.port}", "wave", PROXY_PASSWORD, "WAVE_PROXY_PASSWORD")
        issuers = OidcIssuers.from_entries((_entry(issuer),), through)
        assert isinstance(await issuers.caller(issuer.token("alice")), str)
        assert f"GET {issuer.url}/.well-known/openid-configuration" in proxy.log_text()
        assert f"GET {issuer.url}/keys" in proxy.log_text()

        wrong = replace(through, password="not-the-password")  # noqa: S106 - a wrong one on purpose
        with pytest.raises(WaveError) as refused:
            await OidcIssuers.from_entries((_entry(issuer),), wrong).caller(issuer.token("alice"))
        assert "the egress proxy http://127.0.0.1:" in refused.value.message
        assert "refused our credentials" in refused.value.message
        assert "not-the-password" not in refused.value.message

        bypass = replace(through, no_proxy=("127.0.0.1",))
        before = proxy.log_text().count("GET ")
        assert isinstance(await OidcIssuers.from_entries((_entry(issuer),), bypass).caller(issuer.token("a")), str)
        assert proxy.log_text().count("GET ") == before, "no_proxy reaches the issuer directly"


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oidc", "message"),
    [
        ([{"issuer": "http://idp.example", "audience": "w"}], r"\[\[auth\.oidc\]\]\[0\]\.issuer: .* must be https://"),
        ([{"issuer": "https://idp.example"}], r"\[\[auth\.oidc\]\]\[0\]\.audience: is required"),
        ([{"audience": "w"}], r"\[\[auth\.oidc\]\]\[0\]\.issuer: is required"),
        ([{"issuer": "https://a.example", "audience": "w", "leeway": "10m"}], r"leeway: must be at most 5m"),
        (
            [{"issuer": "https://a.example", "audience": "w"}, {"issuer": "https://a.example", "audience": "v"}],
            r"\[\[auth\.oidc\]\]\[1\]\.issuer: 'https://a.example' is also entry 0's",
        ),
        (
            [
                {"issuer": "https://a.example", "audience": "w", "prefix": ""},
                {"issuer": "https://b", "audience": "w", "prefix": ""},
            ],
            r"\[\[auth\.oidc\]\]\[1\]\.prefix: '' is also entry 0's: two issuers' subjects could name one caller",
        ),
        ([], r'\[auth\]\.oidc: the "oidc" verifier needs at least one \[\[auth\.oidc\]\] entry'),
    ],
)
def test_oidc_config_errors_name_the_key(oidc: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"auth": {"verifiers": ["oidc"], "oidc": oidc}}, "x.toml")


def test_oidc_config_reads_an_entry() -> None:
    config = parse_config(
        {"auth": {"verifiers": ["oidc"], "oidc": [{"issuer": "https://idp.example/realms/x", "audience": ["a", "b"]}]}},
        "x.toml",
    )
    (entry,) = config.auth.oidc
    assert (entry.audience, entry.claim, entry.prefix) == (("a", "b"), "sub", "oidc:idp.example/realms/x/")
    assert (entry.leeway, entry.min_refresh_interval) == (timedelta(seconds=60), timedelta(seconds=30))
    assert [type(v).__name__ for v in Authenticator.from_config(config).verifiers] == ["OidcTokens"]


# -- a real service -------------------------------------------------------------------------------


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.mark.components
def test_oidc_callers_against_a_running_service(
    issuer: OidcIssuer, tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    entry = {"issuer": issuer.url, "audience": issuer.audience, "min_refresh_interval": "1s"}
    wave = WaveStack(
        tmp_path / "wave",
        registries=[registry_route(registry)],
        service={"anonymous": False},
        auth={"verifiers": ["oidc"], "oidc": [entry]},
    )
    image = base_images.ref("latest")
    with wave:
        wave.start()
        alice, bob = issuer.token("alice"), issuer.token("bob")
        mine = {wave.create(image, metadata=_bearer(alice)).container_token for _ in range(2)}
        theirs = wave.create(image, metadata=_bearer(bob)).container_token
        with wave.stub() as stub:
            listed = stub.ListContainers(pb.ListContainersRequest(), metadata=_bearer(alice), timeout=30)
            assert {c.container_token for c in listed.containers} == mine
            with pytest.raises(grpc.RpcError) as denied:
                stub.RevokeContainer(pb.RevokeContainerRequest(container_token=theirs), metadata=_bearer(alice))
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            now = int(time.time())
            with pytest.raises(grpc.RpcError) as expired:
                stub.ListContainers(
                    pb.ListContainersRequest(), metadata=_bearer(issuer.token("alice", exp=now - 600)), timeout=30
                )
            assert expired.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "oidc: expired at" in str(expired.value.details())

            before = issuer.jwks_fetches()
            rotated = issuer.rotate("key-after-start")
            try:
                time.sleep(1.2)  # past min_refresh_interval since the first fetch
                token = issuer.token("alice", key=rotated)
                listed = stub.ListContainers(pb.ListContainersRequest(), metadata=_bearer(token), timeout=30)
                assert {c.container_token for c in listed.containers} == mine
                assert issuer.jwks_fetches() == before + 1
            finally:
                issuer.keys.remove(rotated)
