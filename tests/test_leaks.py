"""No credential or upstream token ever leaves wave-grpc.

A full run against private images on three real auth registries (htpasswd
Basic; Bearer with a token server; Bearer with blobs redirected to a file
server), with credentials from an env var, inline and a docker config.json:

* deployment ``good`` (debug logging) creates and serves the images; runtimes
  pull through a recording proxy, and every manifest and blob path is also
  fetched with GET and HEAD;
* deployment ``bad`` (debug logging) holds wrong passwords for the same
  registries: its creations fail, and its gateway (serving ``good``'s tokens)
  answers DENIED at pull time.

Every response header and body the gateways sent (recorded), every log line
of both deployments, every gRPC error and CLI output, and skopeo's debug log of
what it saw, are then searched for every password (plain and as Basic
base64) and every token the token server issued: zero hits.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.upstreams import (
    FaultProxy,
    copy_image,
    hello_layer,
    start_auth_upstreams,
    storage_root,
)
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

ALICE = ("alice", "Leak-Alice-pw-5d1e")
BOB = ("bob", "Leak-Bob-pw-c0a7")
WRONG = "Leak-Wrong-pw-77b9"
ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


def _routes(
    workdir: Path, basic: components.Registry, bearer: components.Registry, cdn: components.Registry, alice_pw: str
) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    docker_config = workdir / "docker-config.json"
    auth = base64.b64encode(f"{ALICE[0]}:{alice_pw}".encode()).decode()
    docker_config.write_text(json.dumps({"auths": {f"http://{cdn.host}": {"auth": auth}}}))
    return [
        registry_route(basic, username=BOB[0], password_env="LEAK_BASIC_PASSWORD"),  # noqa: S106 - a variable name
        registry_route(bearer, username=ALICE[0], password=alice_pw),
        registry_route(cdn, docker_config=str(docker_config)),
    ]


def _swap_host(target: str, host: str) -> str:
    return host + target[target.index("/") :]


def test_no_secret_in_any_response_log_or_error(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    root = storage_root(registry)
    copy_image(registry, "library/busybox:latest", "private/busybox:latest")
    _, layer = hello_layer(tmp_path)
    haystacks: dict[str, bytes] = {}
    with contextlib.ExitStack() as started:
        up = start_auth_upstreams(tmp_path, root, started, token_user=ALICE, basic_user=BOB)
        tokens, cdn, basic, bearer, cdn_bearer = up.tokens, up.cdn, up.basic, up.bearer, up.cdn_bearer

        good = WaveStack(
            tmp_path / "good",
            registries=_routes(tmp_path / "good", basic, bearer, cdn_bearer, ALICE[1]),
            env={"LEAK_BASIC_PASSWORD": BOB[1]},
            verbose=True,
        )
        good.start()
        started.callback(good.stop)
        bad = WaveStack(
            tmp_path / "bad",
            registries=_routes(tmp_path / "bad", basic, bearer, cdn_bearer, WRONG),
            env={"LEAK_BASIC_PASSWORD": WRONG},
            gateway={"service": good.grpc_address},  # its gateway serves good's tokens
            verbose=True,
        )
        bad.start()
        started.callback(bad.stop)
        good_front = FaultProxy(good.gateway_url, tmp_path, record=tmp_path / "good-responses.txt")
        started.callback(good_front.stop)
        bad_front = FaultProxy(bad.gateway_url, tmp_path, record=tmp_path / "bad-responses.txt")
        started.callback(bad_front.stop)

        images = [
            f"{basic.host}/library/busybox:latest",
            f"{bearer.host}/private/busybox:latest",
            f"{cdn_bearer.host}/private/busybox:latest",
        ]
        for i, image in enumerate(images):
            cli = subprocess.run(
                [sys.executable, "-m", "wave_grpc.cli", "augment", image, "--server", good.grpc_address, "-o", "json"],
                capture_output=True,
                timeout=120,
                check=False,
            )
            haystacks[f"cli {image}"] = cli.stdout + cli.stderr
            assert cli.returncode == 0, cli.stderr
            # A layer too, so the relay, stream and stored-layer paths all run.
            target = good.create(image, container_config=pb.ContainerConfig(layers=[layer])).target_image
            skopeo = subprocess.run(
                [
                    *("skopeo", "--debug", "--insecure-policy", "copy", "--src-tls-verify=false"),
                    f"docker://{_swap_host(target, good_front.host)}",
                    f"oci:{tmp_path / f'oci{i}'}:latest",
                ],
                capture_output=True,
                timeout=120,
                check=False,
            )
            haystacks[f"skopeo {image}"] = skopeo.stdout + skopeo.stderr
            assert skopeo.returncode == 0, skopeo.stderr[-3000:]

            name = "/v2/" + target.split("/", 1)[1].rsplit(":", 1)[0]
            manifest = json.loads(good.http("GET", f"{name}/manifests/latest", ACCEPT).body)
            paths = [f"{name}/manifests/latest", f"{name}/blobs/{manifest['config']['digest']}"]
            paths += [f"{name}/blobs/{d['digest']}" for d in manifest["layers"]]
            for front in (good_front, bad_front):
                for path in paths:
                    for method in ("GET", "HEAD"):
                        components.http_request(method, front.url + path, headers=ACCEPT)

            with pytest.raises(grpc.RpcError) as caught:
                bad.create(image, container_config=pb.ContainerConfig(layers=[layer]))
            error: Any = caught.value
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
            haystacks[f"grpc error {image}"] = error.details().encode()

    haystacks["good log"] = good.log_text().encode()
    haystacks["bad log"] = bad.log_text().encode()
    haystacks["good responses"] = (tmp_path / "good-responses.txt").read_bytes()
    haystacks["bad responses"] = (tmp_path / "bad-responses.txt").read_bytes()

    # The run did what it claims: relays, streams and refusals all happened.
    assert f"Location: {cdn.url}/docker/registry/v2/blobs/".encode() in haystacks["good responses"]
    assert b"-> 200" in haystacks["good responses"]
    assert b'"code": "DENIED"' in haystacks["bad responses"]
    assert b"refused the credentials" in haystacks["bad log"]
    assert b"DEBUG" in haystacks["good log"]
    issued = tokens.tokens()
    assert any(entry["account"] == ALICE[0] for entry in tokens.issued())

    secrets: dict[str, str] = {}
    for user, password in (ALICE, BOB, (ALICE[0], WRONG), (BOB[0], WRONG)):
        secrets[f"password of {user}"] = password
        secrets[f"basic auth of {user}"] = base64.b64encode(f"{user}:{password}".encode()).decode()
    for n, token in enumerate(issued):
        secrets[f"token {n}"] = token
        secrets[f"token {n} signature"] = token.rsplit(".", 1)[1]
    leaks = [
        f"{secret_name} in {where}"
        for where, haystack in haystacks.items()
        for secret_name, secret in secrets.items()
        if secret.encode() in haystack
    ]
    assert not leaks, leaks
    assert sum(len(h) for h in haystacks.values()) > 1 << 20  # we did search a full run
