"""The upstream client against small in-process registries: exact request counts
for the auth dance, retries, redirects, timeouts and secret hygiene.

The real-registry tests (test_upstream_auth.py, test_upstream_faults.py) prove
it works with distribution, skopeo and podman; these pin the details that are
hard to observe from outside (how many token fetches, which headers went where).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests import components
from wave_grpc.config import Config, parse_config
from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.registry.auth import Challenge
from wave_grpc.registry.client import RegistryClient
from wave_grpc.registry.policy import check_layer_location
from wave_grpc.registry.transport import _retry_after

MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [],
    }
).encode()
BLOB = b"blob bytes" * 100
BLOB_DIGEST = Digest.of(BLOB)
PASSWORD = "pa55-W0rd-never-shown"  # noqa: S105 - a test credential


@dataclass
class FakeRegistry:
    """A registry with Bearer (or Basic) auth, a token endpoint and a blob redirect."""

    auth: str = "bearer"  # bearer | basic | none
    expires_in: int = 300
    statuses: list[int] = field(default_factory=list)  # answered (in order) before any real answer
    retry_after: str | None = None
    token_calls: int = 0
    ping_calls: int = 0
    manifest_calls: int = 0
    valid_tokens: set[str] = field(default_factory=set)
    seen_authorization: list[str | None] = field(default_factory=list)
    redirect_to: str = ""  # blob GETs answer 307 here
    stall: float = 0.0
    accept_tokens: bool = True  # False: tokens are issued but never accepted (no access)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if self.auth == "none":
            return True
        if self.auth == "basic":
            return header == "Basic " + base64.b64encode(f"robot:{PASSWORD}".encode()).decode()
        return self.accept_tokens and header.startswith("Bearer ") and header[7:] in self.valid_tokens

    def _challenge(self) -> web.Response:
        if self.auth == "basic":
            value = 'Basic realm="fake"'
        else:
            value = f'Bearer realm="{self.url}/token",service="fake",scope="repository:org/img:pull"'
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return web.json_response(body, status=401, headers={"WWW-Authenticate": value})

    async def ping(self, request: web.Request) -> web.Response:
        self.ping_calls += 1
        return web.json_response({}) if self.auth == "none" else self._challenge()

    async def token(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        header = request.headers.get("Authorization")
        if header is not None and header != "Basic " + base64.b64encode(f"robot:{PASSWORD}".encode()).decode():
            return web.json_response({"details": "incorrect username or password"}, status=401)
        token = f"tok-{self.token_calls}-{'x' * 20}"
        self.valid_tokens.add(token)
        return web.json_response({"token": token, "expires_in": self.expires_in})

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        self.manifest_calls += 1
        self.seen_authorization.append(request.headers.get("Authorization"))
        if self.statuses:
            status = self.statuses.pop(0)
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.json_response(
                {"errors": [{"code": "X", "message": f"fault {status}"}]}, status=status, headers=headers
            )
        if self.stall:
            response = web.StreamResponse(headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
            await response.prepare(request)
            await response.write(MANIFEST[:10])
            await asyncio.sleep(self.stall)
            return response
        if not self._authorized(request):
            return self._challenge()
        return web.Response(body=MANIFEST, content_type="application/vnd.oci.image.manifest.v1+json")

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.seen_authorization.append(request.headers.get("Authorization"))
        if not self._authorized(request):
            return self._challenge()
        if self.redirect_to:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        return web.Response(body=BLOB)

    async def storage(self, request: web.Request) -> web.Response:
        self.seen_authorization.append(request.headers.get("Authorization"))
        return web.Response(body=BLOB)


@pytest.fixture
async def fake() -> AsyncIterator[FakeRegistry]:
    registry = FakeRegistry(port=components.free_port())
    app = web.Application()
    app.router.add_get("/v2/", registry.ping)
    app.router.add_get("/token", registry.token)
    app.router.add_get("/v2/org/img/manifests/{ref}", registry.manifest)
    app.router.add_get("/v2/org/img/blobs/{digest}", registry.blob)
    app.router.add_get("/v2/mirror/org/img/manifests/{ref}", registry.manifest)
    app.router.add_get("/storage/blob", registry.storage)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", registry.port)
    await site.start()
    try:
        yield registry
    finally:
        await runner.cleanup()


def _config(fake: FakeRegistry, **route: Any) -> Config:
    return parse_config(
        {
            "upstream": {"retries": 2, "read_timeout": "1s", "connect_timeout": "1s"},
            "registries": [{"name": f"127.0.0.1:{fake.port}", "endpoint": fake.url, **route}],
        },
        "test.toml",
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _with_client(
    config: Config, body: Callable[[RegistryClient], Awaitable[None]], clock: Callable[[], float] = time.monotonic
) -> None:
    client = RegistryClient(config, max_backoff=0.05, clock=clock)
    await client.start()
    try:
        await body(client)
    finally:
        await client.close()


def test_challenge_parsing() -> None:
    challenge = Challenge.parse(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull",error="insufficient_scope"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params["realm"] == "https://auth.docker.io/token"
    assert challenge.params["scope"] == "repository:library/alpine:pull"
    basic = Challenge.parse('Basic realm="https://123.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com"')
    assert basic is not None
    assert basic.scheme == "basic"
    assert Challenge.parse("") is None


def test_retry_after_forms() -> None:
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    in_past = _retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    assert in_past == 0.0


async def test_bearer_token_is_cached_until_expires_in(fake: FakeRegistry) -> None:
    fake.expires_in = 60
    clock = Clock()
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        await client.get_manifest(registry, "org/img", "latest")
        await client.get_manifest(registry, "org/img", "latest")
        assert fake.token_calls == 1  # one anonymous token for two requests
        clock.now += 49  # renewal happens 10 s before expiry
        await client.get_manifest(registry, "org/img", "latest")
        assert fake.token_calls == 1
        clock.now += 2
        await client.get_manifest(registry, "org/img", "latest")
        assert fake.token_calls == 2
        # The registry drops the token early (rotated key): one 401, one fresh token, success.
        fake.valid_tokens.clear()
        await client.get_manifest(registry, "org/img", "latest")
        assert fake.token_calls == 3

    await _with_client(_config(fake), body, clock)
    # Every request went with a token: the scheme was learnt from /v2/ first.
    assert all(h is not None and h.startswith("Bearer tok-") for h in fake.seen_authorization)


async def test_concurrent_pulls_share_one_ping_and_one_token(fake: FakeRegistry) -> None:
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        await asyncio.gather(*(client.get_manifest(registry, "org/img", "latest") for _ in range(10)))

    await _with_client(_config(fake), body)
    assert (fake.ping_calls, fake.token_calls, fake.manifest_calls) == (1, 1, 10)


async def test_401_is_retried_once_then_names_registry_and_hint(fake: FakeRegistry) -> None:
    registry = f"127.0.0.1:{fake.port}"
    fake.accept_tokens = False  # like a private image asked for anonymously

    async def body(client: RegistryClient) -> None:
        with pytest.raises(WaveError) as caught:
            await client.get_manifest(registry, "org/img", "v1")
        assert caught.value.kind is Errors.UPSTREAM_DENIED
        assert f"{registry}/org/img:v1" in caught.value.message
        assert "password_env" in caught.value.message

    await _with_client(_config(fake), body)
    assert fake.manifest_calls == 2  # the first try and exactly one retry


async def test_basic_auth_and_refused_credentials_never_show_the_password(fake: FakeRegistry) -> None:
    fake.auth = "basic"
    registry = f"127.0.0.1:{fake.port}"

    async def good(client: RegistryClient) -> None:
        await client.get_manifest(registry, "org/img", "latest")
        await client.get_manifest(registry, "org/img", "latest")

    await _with_client(_config(fake, username="robot", password=PASSWORD), good)
    assert fake.manifest_calls == 2  # Basic was sent up front: no 401 round trips

    async def bad(client: RegistryClient) -> None:
        with pytest.raises(WaveError) as caught:
            await client.get_manifest(registry, "org/img", "latest")
        assert caught.value.kind is Errors.UPSTREAM_DENIED
        assert "'robot'" in caught.value.message
        assert "password in the config" in caught.value.message
        assert "wrong" not in caught.value.message

    await _with_client(_config(fake, username="robot", password="wrong-password-x"), bad)  # noqa: S106

    async def anonymous(client: RegistryClient) -> None:
        with pytest.raises(WaveError, match="configure credentials") as caught:
            await client.get_manifest(registry, "org/img", "latest")
        assert caught.value.kind.grpc_status.name == "FAILED_PRECONDITION"
        assert caught.value.kind.http_status == 403

    await _with_client(_config(fake), anonymous)


async def test_token_service_refusal_names_the_credentials_source(
    fake: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_REGISTRY_PASSWORD", "not-the-password")
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        with pytest.raises(WaveError) as caught:
            await client.get_manifest(registry, "org/img", "latest")
        assert caught.value.kind is Errors.UPSTREAM_DENIED
        assert "token service" in caught.value.message
        assert "password_env FAKE_REGISTRY_PASSWORD" in caught.value.message
        assert "not-the-password" not in caught.value.message

    route = {"username": "robot", "password_env": "FAKE_REGISTRY_PASSWORD"}
    await _with_client(_config(fake, **route), body)


async def test_5xx_and_429_are_retried_with_backoff(fake: FakeRegistry) -> None:
    fake.auth = "none"
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        fake.statuses = [503, 429]
        fake.retry_after = "0"
        await client.get_manifest(registry, "org/img", "latest")
        assert fake.manifest_calls == 3
        fake.statuses = [502, 502, 502]
        fake.retry_after = None
        with pytest.raises(WaveError) as caught:
            await client.get_manifest(registry, "org/img", "latest")
        assert caught.value.kind is Errors.UPSTREAM_UNAVAILABLE
        assert 'HTTP 502 "X: fault 502" after 3 attempt(s)' in caught.value.message
        # A Retry-After beyond the cap is not waited out: fail now and say when.
        fake.statuses = [429]
        fake.retry_after = "3600"
        started = time.monotonic()
        with pytest.raises(WaveError) as caught:
            await client.get_manifest(registry, "org/img", "latest")
        assert time.monotonic() - started < 2
        assert caught.value.kind is Errors.TOO_MANY_REQUESTS
        assert "retry after 3600s" in caught.value.message

    await _with_client(_config(fake), body)


async def test_stall_is_a_timeout_within_read_timeout(fake: FakeRegistry) -> None:
    fake.auth = "none"
    fake.stall = 5
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        started = time.monotonic()
        with pytest.raises(WaveError) as caught:
            await client.get_manifest(registry, "org/img", "latest")
        assert time.monotonic() - started < 3  # read_timeout is 1s; not retried
        assert caught.value.kind is Errors.UPSTREAM_TIMEOUT
        assert "read_timeout" in caught.value.message

    await _with_client(_config(fake), body)


async def test_unreachable_is_retried_then_named(fake: FakeRegistry) -> None:
    config = parse_config(
        {"upstream": {"retries": 2}, "registries": [{"name": "down.example", "endpoint": "http://127.0.0.1:1"}]},
        "t.toml",
    )

    async def body(client: RegistryClient) -> None:
        with pytest.raises(WaveError) as caught:
            await client.get_manifest("down.example", "org/img", "latest")
        assert caught.value.kind is Errors.UPSTREAM_UNAVAILABLE
        assert "down.example/org/img:latest" in caught.value.message
        assert "unreachable" in caught.value.message
        assert "after 3 attempt(s)" in caught.value.message

    await _with_client(config, body)


async def test_redirects_drop_authorization_off_origin(fake: FakeRegistry) -> None:
    fake.auth = "basic"
    # Another origin: "localhost" instead of 127.0.0.1 (same server, different origin).
    fake.redirect_to = f"http://localhost:{fake.port}/storage/blob"
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        assert await client.get_blob(registry, "org/img", BLOB_DIGEST) == BLOB
        # Relay mode: the raw 307 and an absolute location a runtime may follow.
        async with client.request(registry, "org/img", "GET", f"blobs/{BLOB_DIGEST}", allow_redirects=False) as resp:
            assert resp.status == 307
            assert client.relayable_location(resp) == fake.redirect_to

    await _with_client(_config(fake, username="robot", password=PASSWORD), body)
    blob_auth, storage_auth = fake.seen_authorization[0], fake.seen_authorization[1]
    assert blob_auth is not None
    assert blob_auth.startswith("Basic ")
    assert storage_auth is None


async def test_redirect_to_link_local_is_not_followed(fake: FakeRegistry) -> None:
    fake.auth = "none"
    fake.redirect_to = "http://169.254.169.254/latest/meta-data/"
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        with pytest.raises(WaveError, match="unusable location"):
            await client.get_blob(registry, "org/img", BLOB_DIGEST)
        async with client.request(registry, "org/img", "GET", f"blobs/{BLOB_DIGEST}", allow_redirects=False) as resp:
            assert client.relayable_location(resp) is None

    await _with_client(_config(fake), body)


async def test_anonymous_blob_url_only_for_registries_without_auth(fake: FakeRegistry) -> None:
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        # Bearer (even anonymous): a runtime could not use the direct URL.
        assert await client.anonymous_blob_url(registry, "org/img", BLOB_DIGEST) is None

    await _with_client(_config(fake), body)
    fake.auth = "none"

    async def open_registry(client: RegistryClient) -> None:
        url = await client.anonymous_blob_url(registry, "org/img", BLOB_DIGEST)
        assert url == f"{fake.url}/v2/org/img/blobs/{BLOB_DIGEST}"

    await _with_client(_config(fake), open_registry)
    await _with_client(_config(fake, blobs="proxy"), _expect_no_direct_url(registry))


def _expect_no_direct_url(registry: str) -> Callable[[RegistryClient], Awaitable[None]]:
    async def body(client: RegistryClient) -> None:
        assert await client.anonymous_blob_url(registry, "org/img", BLOB_DIGEST) is None

    return body


async def test_repository_prefix_maps_names_on_a_mirror(fake: FakeRegistry) -> None:
    fake.auth = "none"
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        manifest = await client.get_manifest(registry, "org/img", "latest")
        assert manifest.data == MANIFEST
        assert client.direct_blob_url(registry, "org/img", BLOB_DIGEST).endswith(
            f"/v2/mirror/org/img/blobs/{BLOB_DIGEST}"
        )

    await _with_client(_config(fake, repository_prefix="mirror"), body)


async def test_upstream_text_is_scrubbed_of_tokens(fake: FakeRegistry) -> None:
    registry = f"127.0.0.1:{fake.port}"

    async def body(client: RegistryClient) -> None:
        await client.get_manifest(registry, "org/img", "latest")
        token = next(iter(fake.valid_tokens))
        assert client.scrub(f"invalid token {token} given") == "invalid token *** given"
        assert client.carries_secret(f"https://cdn.example/blob?token={token}")
        assert not client.carries_secret("https://cdn.example/blob?sig=abc")

    await _with_client(_config(fake, username="robot", password=PASSWORD), body)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://layers.example.com/a.tar.gz", True),
        ("https://LAYERS.example.com:443/a.tar.gz", True),
        ("https://bucket.s3.amazonaws.com/a.tar.gz", True),
        ("https://s3.amazonaws.com/a.tar.gz", False),  # "*." needs a subdomain
        ("http://files.internal:8000/a.tar.gz", True),
        ("http://files.internal:8001/a.tar.gz", False),
        # Addresses never match, in any spelling: layer_hosts name hosts.
        ("http://127.0.0.1:8000/a.tar.gz", False),
        ("http://0x7f.0.0.1:8000/a.tar.gz", False),
        ("http://2130706433:8000/a.tar.gz", False),
        ("http://[::ffff:127.0.0.1]:8000/a.tar.gz", False),
        ("http://169.254.169.254/latest/meta-data/", False),
        ("http://10.0.0.1/a.tar.gz", False),
        ("https://layers.example.com@evil.example/a.tar.gz", False),
        ("https://user:pw@layers.example.com/a.tar.gz", False),
        ("https://evil.example/?layers.example.com", False),
    ],
)
def test_layer_hosts_allow_list(url: str, allowed: bool) -> None:
    config = parse_config(
        {"upstream": {"layer_hosts": ["layers.example.com", "*.s3.amazonaws.com", "files.internal:8000"]}}, "c.toml"
    )
    if allowed:
        check_layer_location(config, url, "container_config.layers[0].location")
        return
    with pytest.raises(WaveError) as caught:
        check_layer_location(config, url, "container_config.layers[0].location")
    assert caught.value.kind is Errors.INVALID_ARGUMENT
    assert caught.value.message.startswith("container_config.layers[0].location: ")
    assert "pw" not in caught.value.message.split(":", 1)[1].replace("upload", "")


def test_no_layer_hosts_means_no_http_layers() -> None:
    with pytest.raises(WaveError, match=r"allowed: none.*\[upstream\]\.layer_hosts"):
        check_layer_location(parse_config({}, "c.toml"), "https://x.example/l.tar.gz", "f")


def test_unrouted_registry_with_deny_policy() -> None:
    client = RegistryClient(parse_config({"upstream": {"default_route": "deny"}}, "c.toml"))
    with pytest.raises(WaveError) as caught:
        client.route("ghcr.io")
    assert caught.value.kind is Errors.NOT_ROUTED
    assert "[[registries]] entry named 'ghcr.io'" in caught.value.message
    # The default https route never reaches a link-local (metadata) address.
    with pytest.raises(WaveError, match="link-local"):
        RegistryClient(parse_config({}, "c.toml")).route("169.254.169.254")
