"""Real registries with real auth, pulled through the gateway by skopeo and podman.

Upstreams (all CNCF distribution 2.8 on 127.0.0.1, sharing one storage):

* ``basic``: htpasswd Basic auth (a private registry; ECR works this way);
* ``bearer``: Bearer tokens from a token server (RS256), anonymous pull for
  ``library/``, credentials for ``private/``; serves blob bytes itself;
* ``cdn_bearer``: the same auth, and blob GETs redirect to a separate static
  file server (Docker Hub, ghcr.io, quay.io: token + CDN);
* ``open_cdn``: no auth, blobs redirected to the file server.

Two deployments see them: ``anon`` (routes without credentials, plus
``docker.io`` routed to ``cdn_bearer`` as a local mirror) and ``creds`` (the
same registries with credentials from an env var, inline, and a docker
config.json).
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.upstreams import (
    AuthUpstreams,
    copy_image,
    hello_layer,
    pull_and_check,
    start_auth_upstreams,
    storage_root,
)
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

ALICE = ("alice", "alice-Token-Pw-7f3a")  # a token-server user
BOB = ("bob", "bob-Basic-Pw-91c2")  # the htpasswd user
ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


@dataclass
class Upstreams(AuthUpstreams):
    layer: pb.ContainerLayer  # inline data:
    http_layer: pb.ContainerLayer  # the same bytes at an http location on the file server


@pytest.fixture(scope="module")
def up(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry, base_images: components.BaseImages
) -> Iterator[Upstreams]:
    workdir = tmp_path_factory.mktemp("upstreams")
    root = storage_root(registry)
    copy_image(registry, "library/busybox:latest", "private/busybox:latest")
    copy_image(registry, "library/busybox:latest", "hub/library/busybox:latest")  # a mirror's prefixed names
    data, layer = hello_layer(workdir)
    (root / "wave-test").mkdir(exist_ok=True)
    (root / "wave-test" / "hello.tar.gz").write_bytes(data)
    with contextlib.ExitStack() as started:
        servers = start_auth_upstreams(workdir, root, started, token_user=ALICE, basic_user=BOB)
        http_layer = pb.ContainerLayer()
        http_layer.CopyFrom(layer)
        # layer_hosts name hosts, never addresses: the file server by its name.
        http_layer.location = f"http://localhost:{servers.cdn.port}/wave-test/hello.tar.gz"
        yield Upstreams(**vars(servers), layer=layer, http_layer=http_layer)


@pytest.fixture(scope="module")
def anon(tmp_path_factory: pytest.TempPathFactory, up: Upstreams) -> Iterator[WaveStack]:
    routes = [registry_route(r) for r in (up.basic, up.bearer, up.cdn_bearer, up.open_cdn)]
    routes.append({"name": "docker.io", "endpoint": up.cdn_bearer.url})  # Docker Hub, offline
    with WaveStack(
        tmp_path_factory.mktemp("anon"), registries=routes, upstream={"layer_hosts": [f"localhost:{up.cdn.port}"]}
    ).start() as stack:
        yield stack


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory, up: Upstreams) -> Iterator[WaveStack]:
    workdir = tmp_path_factory.mktemp("creds")
    docker_config = workdir / "docker-config.json"
    auth = base64.b64encode(":".join(ALICE).encode()).decode()
    docker_config.write_text(json.dumps({"auths": {up.cdn_bearer.host: {"auth": auth}}}))
    routes = [
        registry_route(up.basic, username=BOB[0], password_env="BASIC_REGISTRY_PASSWORD"),  # noqa: S106 - a variable name
        registry_route(up.bearer, username=ALICE[0], password=ALICE[1]),
        registry_route(up.cdn_bearer, docker_config=str(docker_config)),
        # A mirror that keeps Docker Hub's names under a project path, with credentials.
        {
            "name": "docker.io",
            "endpoint": up.cdn_bearer.url,
            "repository_prefix": "hub",
            "username": ALICE[0],
            "password_env": "HUB_MIRROR_PASSWORD",
        },
    ]
    with WaveStack(
        workdir, registries=routes, env={"BASIC_REGISTRY_PASSWORD": BOB[1], "HUB_MIRROR_PASSWORD": ALICE[1]}
    ).start() as stack:
        yield stack


def create(stack: WaveStack, image: str, layer: pb.ContainerLayer) -> pb.CreateContainerResponse:
    return stack.create(image, container_config=pb.ContainerConfig(layers=[layer], env=["FOO=bar"]))


def create_fails(stack: WaveStack, image: str, layer: pb.ContainerLayer) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        create(stack, image, layer)
    error: Any = caught.value
    code: grpc.StatusCode = error.code()
    details: str = error.details()
    return code, details


def assert_needs_credentials(code: grpc.StatusCode, details: str, registry: components.Registry, repo: str) -> None:
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert f"{registry.host}/{repo}:latest" in details
    assert "configure credentials" in details
    assert f"[[registries]] entry named '{registry.host}'" in details


def base_layer(stack: WaveStack, target: str) -> tuple[str, str]:
    """(``/v2/wt/<token>/<name>``, digest of the first base layer) of a target image."""
    name = "/v2/" + target.split("/", 1)[1].rsplit(":", 1)[0]
    manifest = stack.http("GET", f"{name}/manifests/latest", ACCEPT)
    assert manifest.status == 200, manifest.body
    return name, json.loads(manifest.body)["layers"][0]["digest"]


def test_basic_auth_registry(up: Upstreams, anon: WaveStack, creds: WaveStack, tmp_path: Path) -> None:
    image = f"{up.basic.host}/library/busybox:latest"
    assert_needs_credentials(*create_fails(anon, image, up.layer), up.basic, "library/busybox")

    target = create(creds, image, up.layer).target_image
    # A route with credentials streams base layers: the runtime never talks to the registry.
    name, digest = base_layer(creds, target)
    blob = creds.http("GET", f"{name}/blobs/{digest}")
    assert blob.status == 200
    assert blob.header("Location") is None
    assert components.sha256_digest(blob.body) == digest
    head = creds.http("HEAD", f"{name}/blobs/{digest}")
    assert (head.status, head.header("Content-Length")) == (200, str(len(blob.body)))
    pull_and_check(target, tmp_path)


def test_bearer_registry_anonymous_public_and_private(
    up: Upstreams, anon: WaveStack, creds: WaveStack, tmp_path: Path
) -> None:
    public = f"{up.bearer.host}/library/busybox:latest"
    private = f"{up.bearer.host}/private/busybox:latest"
    assert_needs_credentials(*create_fails(anon, private, up.layer), up.bearer, "private/busybox")

    # Anonymous pull with an anonymous token. The registry serves blob bytes itself
    # and wants a token for them, so a redirect would fail: the gateway streams.
    anon_target = create(anon, public, up.layer).target_image
    name, digest = base_layer(anon, anon_target)
    blob = anon.http("GET", f"{name}/blobs/{digest}")
    assert blob.status == 200
    assert components.sha256_digest(blob.body) == digest
    pull_and_check(anon_target, tmp_path / "anon")

    creds_target = create(creds, private, up.layer).target_image
    pull_and_check(creds_target, tmp_path / "creds")
    accounts = {entry["account"] for entry in up.tokens.issued()}
    assert {"", ALICE[0]} <= accounts  # anonymous and alice's tokens both served pulls


def test_cdn_registry_relays_the_redirect(up: Upstreams, anon: WaveStack, creds: WaveStack, tmp_path: Path) -> None:
    cases = (
        (anon, f"{up.cdn_bearer.host}/library/busybox:latest"),  # anonymous token (Docker Hub public)
        (creds, f"{up.cdn_bearer.host}/private/busybox:latest"),  # credentials from a docker config.json
    )
    for i, (stack, image) in enumerate(cases):
        target = create(stack, image, up.layer).target_image
        name, digest = base_layer(stack, target)
        cdn_prefix = f"{up.cdn.url}/docker/registry/v2/blobs/sha256/"
        for method in ("GET", "HEAD"):
            relayed = stack.http(method, f"{name}/blobs/{digest}")
            assert relayed.status == 307, relayed.body
            location = relayed.header("Location")
            assert location is not None
            assert location.startswith(cdn_prefix), location  # absolute, no credential
            assert relayed.header("Connection") == "close"
            assert relayed.header("Docker-Content-Digest") == digest
        served_before = up.cdn.requests()
        pull_and_check(target, tmp_path / str(i))
        assert up.cdn.requests() > served_before  # the runtimes fetched base layers from the "CDN"
    anon_private = create_fails(anon, f"{up.cdn_bearer.host}/private/busybox:latest", up.layer)
    assert_needs_credentials(*anon_private, up.cdn_bearer, "private/busybox")


def test_registry_without_auth_gets_a_plain_307(up: Upstreams, anon: WaveStack, tmp_path: Path) -> None:
    target = create(anon, f"{up.open_cdn.host}/library/busybox:latest", up.layer).target_image
    name, digest = base_layer(anon, target)
    direct = anon.http("GET", f"{name}/blobs/{digest}")
    assert direct.status == 307
    # Straight to the registry's own blob URL (which then redirects to its storage).
    assert direct.header("Location") == f"{up.open_cdn.url}/v2/library/busybox/blobs/{digest}"
    assert direct.header("Connection") != "close"
    pull_and_check(target, tmp_path)


def test_docker_io_routed_to_a_local_mirror(up: Upstreams, anon: WaveStack, creds: WaveStack, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    (tools / "usr" / "local" / "bin").mkdir(parents=True)
    (tools / "usr" / "local" / "bin" / "hello.sh").write_text("#!/bin/sh\necho hi\n")
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "wave_grpc.cli", "augment", "busybox", "--layer", str(tools)),
            *("--server", anon.grpc_address, "-o", "json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["containerImage"] == "docker.io/library/busybox:latest"
    assert answer["targetImage"].endswith("/library/busybox:latest")
    pull_and_check(answer["targetImage"], tmp_path / "cli")
    # Every spelling of a Docker Hub name reaches the mirror's library/ repository.
    for spelling in ("docker.io/busybox", "index.docker.io/library/busybox:latest", "library/busybox"):
        assert create(anon, spelling, up.layer).container_image == "docker.io/library/busybox:latest"
    # A mirror keeping Docker Hub names under a project path (repository_prefix), with credentials.
    mirrored = create(creds, "busybox", up.layer)
    assert mirrored.target_image.endswith("/library/busybox:latest")
    pull_and_check(mirrored.target_image, tmp_path / "prefixed", podman=False)


def test_pull_time_refusal_is_403_denied_with_a_hint(
    up: Upstreams, creds: WaveStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A gateway replica whose routes lack credentials, serving the creds service's tokens.
    routes = [registry_route(r) for r in (up.basic, up.bearer)]
    gateway = WaveStack(
        tmp_path_factory.mktemp("nocreds-gw"), registries=routes, gateway={"service": creds.grpc_address}
    )
    gateway.start(only="gateway")
    try:
        for registry, repo in ((up.basic, "library/busybox"), (up.bearer, "private/busybox")):
            target = create(creds, f"{registry.host}/{repo}:latest", up.layer).target_image
            name = "/v2/" + target.split("/", 1)[1].rsplit(":", 1)[0]
            denied = gateway.http("GET", f"{name}/manifests/latest", ACCEPT)
            assert denied.status == 403, denied.body
            # Never a bare 401: a runtime would answer it with its own credentials.
            assert denied.header("WWW-Authenticate") is None
            error = json.loads(denied.body)["errors"][0]
            assert error["code"] == "DENIED"
            assert f"{registry.host}/{repo}" in error["message"]
            assert "configure credentials" in error["message"]
    finally:
        gateway.stop()


def test_http_layer_locations_need_an_allowed_host(
    up: Upstreams, anon: WaveStack, creds: WaveStack, tmp_path: Path
) -> None:
    image = f"{up.open_cdn.host}/library/busybox:latest"
    # anon lists the file server in [upstream].layer_hosts: the runtime is sent there.
    target = create(anon, image, up.http_layer).target_image
    name = "/v2/" + target.split("/", 1)[1].rsplit(":", 1)[0]
    injected = anon.http("GET", f"{name}/blobs/{up.http_layer.gzip_digest}")
    assert (injected.status, injected.header("Location")) == (307, up.http_layer.location)
    pull_and_check(target, tmp_path, podman=False)

    # creds lists no layer hosts (and not open_cdn: an unlisted loopback registry is refused outright).
    code, details = create_fails(creds, f"{up.bearer.host}/library/busybox:latest", up.http_layer)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("container_config.layers[0].location: ")
    assert "[upstream].layer_hosts" in details
    metadata = pb.ContainerLayer()
    metadata.CopyFrom(up.http_layer)
    metadata.location = "http://169.254.169.254/latest/meta-data/iam"
    code, details = create_fails(anon, image, metadata)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "169.254.169.254" in details
