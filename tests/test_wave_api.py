"""Wave's REST API on the gateway, as Nextflow and the wave CLI call it, with real pulls.

Every test talks to a real ``wave-grpc serve`` process (tests/stack.py) in front of
a real registry; targets are pulled with skopeo and unpacked with umoci.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import components
from tests.fakeplatform import BUSY, CAROL, WRONG, FakePlatform
from tests.stack import WaveStack, registry_route
from wave_grpc.image.layers import pack_directory

pytestmark = pytest.mark.components

ALICE, BOB = "alice-secret", "bob-secret"
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
CREATE_KEYS = {"requestId", "containerToken", "targetImage", "expiration", "containerImage", "freeze", "mirror"}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


STATIC_TOKENS = [{"user": "alice", "sha256": _sha(ALICE)}, {"user": "bob", "sha256": _sha(BOB)}]


def _start(workdir: Path, registry: components.Registry, **kwargs: Any) -> WaveStack:
    wave = WaveStack(workdir, registries=[registry_route(registry)], **kwargs)
    wave.start()
    return wave


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    """Anonymous allowed, static tokens for alice and bob."""
    wave = _start(tmp_path_factory.mktemp("wave-api"), registry, service={"tokens": STATIC_TOKENS})
    try:
        yield wave
    finally:
        wave.stop()


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Wave layer JSON object with a data: location (as both clients send module resources)."""
    root = tmp_path_factory.mktemp("module")
    (root / "usr" / "local" / "bin").mkdir(parents=True)
    script = root / "usr" / "local" / "bin" / "hello-wave.sh"
    script.write_text("#!/bin/sh\necho hello from a wave layer\n")
    script.chmod(0o755)
    (root / "opt").mkdir()
    (root / "opt" / "module.txt").write_text("module resources\n")
    out = io.BytesIO()
    digests = pack_directory(root, out)
    return {
        "location": "data:" + base64.b64encode(out.getvalue()).decode(),
        "gzipDigest": str(digests.gzip_digest),
        "gzipSize": digests.gzip_size,
        "tarDigest": str(digests.tar_digest),
    }


# -- helpers ------------------------------------------------------------------------------


def call(
    stack: WaveStack,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
) -> components.HttpResponse:
    headers = [("Accept", "application/json")]
    if body is not None or raw is not None:
        headers.append(("Content-Type", "application/json"))
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return components.http_request(method, f"{stack.gateway_url}{path}", headers=headers, body=data, timeout=120)


def ok(resp: components.HttpResponse) -> Any:
    assert resp.status == 200, (resp.status, resp.body[:500])
    return resp.json()


def wave_error(resp: components.HttpResponse, status: int) -> str:
    """Wave's error body: exactly {"message": "..."} with the status Wave's clients parse."""
    assert resp.status == status, (resp.status, resp.body[:500])
    assert (resp.header("Content-Type") or "").startswith("application/json")
    body = resp.json()
    assert set(body) == {"message"}, body
    message: str = body["message"]
    assert message
    return message


def create(
    stack: WaveStack, body: dict[str, Any], *, token: str | None = None, path: str = "/v1alpha2/container"
) -> Any:
    return ok(call(stack, "POST", path, body, token=token))


def check_create_answer(stack: WaveStack, answer: dict[str, Any], image: str) -> None:
    # "cached" (true) when an earlier test made the identical request: the same token is answered.
    assert set(answer) - {"cached"} == CREATE_KEYS | {"succeeded"}, answer
    assert None not in answer.values()
    assert re.fullmatch(r"[a-z0-9]{12}", answer["containerToken"])
    assert re.fullmatch(r"[0-9a-f]{32}", answer["requestId"])
    assert answer["targetImage"] == f"{stack.gateway_host}/wt/{answer['containerToken']}/library/busybox:latest"
    assert RFC3339_Z.match(answer["expiration"]), answer["expiration"]
    assert answer["containerImage"] == image
    assert (answer["freeze"], answer["mirror"], answer["succeeded"]) == (False, False, True)


def pull(target: str, workdir: Path) -> tuple[Path, dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / "oci"
    components.skopeo_copy_to_oci(target, layout, "latest")
    rootfs, _ = components.umoci_unpack(layout, "latest", workdir / "bundle")
    return rootfs, components.read_oci_image_config(layout, "latest")


def assert_injected(rootfs: Path) -> None:
    script = rootfs / "usr" / "local" / "bin" / "hello-wave.sh"
    assert script.read_text() == "#!/bin/sh\necho hello from a wave layer\n"
    assert script.stat().st_mode & 0o111
    assert (rootfs / "opt" / "module.txt").read_text() == "module resources\n"
    assert (rootfs / "etc" / "marker").read_text() == "hello\n", "the base image's files are still there"


# -- the two clients' bodies, then a real pull ---------------------------------------------------------


def test_wave_cli_style_body_then_pull(
    stack: WaveStack, base_images: components.BaseImages, layer: dict[str, Any], tmp_path: Path
) -> None:
    # As the wave CLI serialises SubmitContainerTokenRequest: nulls omitted, keys in alphabetical order.
    body = {
        "containerConfig": {"entrypoint": ["/bin/sh"], "env": ["FOO=bar"], "layers": [layer]},
        "containerImage": base_images.ref("latest"),
        "containerPlatform": "linux/amd64",
        "dryRun": False,
        "freeze": False,
        "mirror": False,
        "towerEndpoint": "https://api.cloud.seqera.io",
    }
    raw = json.dumps(body, sort_keys=True).encode()
    answer = ok(call(stack, "POST", "/v1alpha2/container", raw=raw))
    check_create_answer(stack, answer, base_images.ref("latest"))

    rootfs, config = pull(answer["targetImage"], tmp_path)
    assert_injected(rootfs)
    assert "FOO=bar" in config["config"]["Env"]
    assert "WAVE_ENTRY_CHAIN=/bin/sh" in config["config"]["Env"]
    assert config["rootfs"]["diff_ids"][-1] == layer["tarDigest"]


def nextflow_body(image: str, container_config: dict[str, Any]) -> dict[str, Any]:
    """As Nextflow's JsonOutput writes SubmitContainerTokenRequest: every field, nulls explicit."""
    return {
        "towerAccessToken": None,
        "towerRefreshToken": None,
        "towerWorkspaceId": None,
        "towerEndpoint": "https://api.cloud.seqera.io",
        "containerImage": image,
        "containerFile": None,
        "containerConfig": container_config,
        "condaFile": None,
        "spackFile": None,
        "containerPlatform": "linux/amd64",
        "buildRepository": None,
        "cacheRepository": None,
        "timestamp": "2024-05-01T10:20:30.123456+02:00",
        "fingerprint": "4f1b0e64d4c5e9a7f3b2",
        "freeze": False,
        "format": None,
        "dryRun": False,
        "workflowId": None,
        "containerIncludes": None,
        "packages": None,
        "nameStrategy": None,
        "mirror": False,
        "scanMode": None,
        "scanLevels": None,
        "buildCompression": None,
    }


def test_nextflow_style_body_then_pull(
    stack: WaveStack, base_images: components.BaseImages, layer: dict[str, Any], tmp_path: Path
) -> None:
    config = {
        "entrypoint": None,
        "cmd": None,
        "env": None,
        "workingDir": None,
        "layers": [{**layer, "skipHashing": None}],
    }
    body = {**nextflow_body(base_images.ref("latest"), config), "towerWorkspaceId": 123456789}
    answer = create(stack, body, path="/container-token")
    check_create_answer(stack, answer, base_images.ref("latest"))
    rootfs, image_config = pull(answer["targetImage"], tmp_path)
    assert_injected(rootfs)
    assert image_config["config"]["Entrypoint"] == ["/bin/sh"], "null overrides change nothing"

    # Nextflow with nothing to inject sends an empty containerConfig object.
    empty = create(stack, nextflow_body(base_images.ref("latest"), {}))
    check_create_answer(stack, empty, base_images.ref("latest"))
    rootfs2, config2 = pull(empty["targetImage"], tmp_path / "empty")
    assert (rootfs2 / "etc" / "second").read_text() == "two\n"
    assert config2["rootfs"]["diff_ids"] == list(base_images.latest.platform().diff_ids)


def test_status_service_info_and_request_ids_survive_a_restart(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    answer = create(stack, {"containerImage": base_images.ref("latest")})
    status = ok(call(stack, "GET", f"/v1alpha2/container/{answer['requestId']}/status"))
    assert set(status) == {"id", "status", "succeeded", "creationTime", "duration", "expiration"}
    assert RFC3339_Z.match(status["expiration"])
    assert status["id"] == answer["requestId"]
    assert (status["status"], status["succeeded"]) == ("DONE", True)
    assert RFC3339_Z.match(status["creationTime"])
    assert status["duration"] == "0.000000000"

    info = ok(call(stack, "GET", "/service-info"))
    assert set(info) == {"serviceInfo"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["serviceInfo"]["version"])
    assert info["serviceInfo"]["commitId"]

    stack.restart()
    assert ok(call(stack, "GET", f"/v1alpha2/container/{answer['requestId']}/status")) == status


def test_request_ids_survive_a_restart_on_redis(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    redis = components.start_redis(tmp_path / "redis")
    try:
        wave = _start(tmp_path / "wave", registry, service={"store": redis.url, "tokens": STATIC_TOKENS})
        try:
            answer = create(wave, {"containerImage": base_images.ref("latest")}, token=ALICE)
            status = f"/v1alpha2/container/{answer['requestId']}/status"
            assert ok(call(wave, "GET", status))["status"] == "DONE"
            wave.restart()
            assert ok(call(wave, "GET", status))["id"] == answer["requestId"]
            assert call(wave, "DELETE", f"/container-token/{answer['containerToken']}", token=ALICE).status == 200
            assert wave_error(call(wave, "GET", status), 404)
        finally:
            wave.stop()
    finally:
        redis.stop()


def test_describe_and_revoke_are_the_owners(stack: WaveStack, base_images: components.BaseImages) -> None:
    answer = create(stack, {"containerImage": base_images.ref("multi"), "workflowId": "wf-1"}, token=ALICE)
    token = answer["containerToken"]

    described = ok(call(stack, "GET", f"/container-token/{token}", token=ALICE))
    assert described["token"] == token
    assert described["expiration"] == answer["expiration"]
    request = described["request"]
    assert request["user"] == {"userName": "alice"}
    assert request["requestId"] == answer["requestId"]
    assert request["containerImage"] == base_images.ref("multi")
    assert request["platform"] == "linux/amd64"
    assert request["workflowId"] == "wf-1"
    assert RFC3339_Z.match(request["timestamp"])
    assert described["source"] == {"image": base_images.ref("multi"), "digest": base_images.multi.digest}
    # The target digest is what the gateway serves for the tag to a client that takes an index.
    name, tag = answer["targetImage"].split("/", 1)[1].rsplit(":", 1)
    served = stack.http("GET", f"/v2/{name}/manifests/{tag}", [("Accept", t) for t in components.ALL_MANIFEST_TYPES])
    assert served.status == 200, served.body
    assert described["wave"] == {"image": answer["targetImage"], "digest": served.header("Docker-Content-Digest")}

    for caller in (BOB, None):
        assert "belongs to another user" in wave_error(
            call(stack, "GET", f"/container-token/{token}", token=caller), 403
        )
        assert "belongs to another user" in wave_error(
            call(stack, "DELETE", f"/container-token/{token}", token=caller), 403
        )

    revoked = call(stack, "DELETE", f"/container-token/{token}", token=ALICE)
    assert (revoked.status, revoked.body) == (200, b"")
    assert "unknown, expired or revoked" in wave_error(
        call(stack, "GET", f"/container-token/{token}", token=ALICE), 404
    )
    assert wave_error(call(stack, "DELETE", f"/container-token/{token}", token=ALICE), 404)
    assert wave_error(call(stack, "GET", f"/v1alpha2/container/{answer['requestId']}/status"), 404)

    # A token created anonymously belongs to whoever holds it.
    anonymous = create(stack, {"containerImage": base_images.ref("latest")})
    assert "user" not in ok(call(stack, "GET", f"/container-token/{anonymous['containerToken']}"))["request"]
    assert call(stack, "DELETE", f"/container-token/{anonymous['containerToken']}", token=BOB).status == 200


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "field_name"),
    [
        ({"containerFile": "RlJPTSBhbHBpbmU="}, "containerFile"),
        ({"condaFile": "Y2hhbm5lbHM6IFtd"}, "condaFile"),
        ({"packages": {"type": "CONDA", "entries": ["samtools"]}}, "packages"),
        ({"mirror": True}, "mirror"),
        ({"scanMode": "required"}, "scanMode"),
        ({"scanLevels": ["HIGH"]}, "scanLevels"),
        ({"format": "sif"}, "format"),
    ],
)
def test_unsupported_features_are_refused_by_name(
    stack: WaveStack, base_images: components.BaseImages, extra: dict[str, Any], field_name: str
) -> None:
    body = {"containerImage": base_images.ref("latest"), **extra}
    for path in ("/v1alpha2/container", "/container-token"):
        message = wave_error(call(stack, "POST", path, body), 400)
        assert message.startswith(f"{field_name}: "), message
        assert "not supported" in message


def test_freeze_without_build_repository_is_refused_naming_it(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    body = {"containerImage": base_images.ref("latest"), "freeze": True}
    for path in ("/v1alpha2/container", "/container-token"):
        message = wave_error(call(stack, "POST", path, body), 400)
        assert message.startswith("buildRepository: is required with freeze"), message


def test_values_that_ask_for_nothing_pass(stack: WaveStack, base_images: components.BaseImages) -> None:
    body = {"containerImage": base_images.ref("latest"), "scanMode": "none", "format": "docker", "packages": None}
    check_create_answer(stack, create(stack, body), base_images.ref("latest"))


def test_error_paths_answer_wave_bodies(
    stack: WaveStack, base_images: components.BaseImages, layer: dict[str, Any]
) -> None:
    image = base_images.ref("latest")
    post = "/v1alpha2/container"
    assert "not JSON" in wave_error(call(stack, "POST", post, raw=b"{nope"), 400)
    assert "JSON object" in wave_error(call(stack, "POST", post, raw=b"[1, 2]"), 400)
    assert wave_error(call(stack, "POST", post, {"containerImage": image, "containerConfig": "x"}), 400).startswith(
        "containerConfig: must be a JSON object"
    )
    assert "towerWorkspaceId" in wave_error(
        call(stack, "POST", post, {"containerImage": image, "towerWorkspaceId": "x"}), 400
    )
    assert wave_error(call(stack, "POST", post, {}), 400).startswith("containerImage: is empty")
    assert wave_error(call(stack, "POST", post, {"containerImage": "Not//Valid"}), 400).startswith("containerImage: ")
    missing = wave_error(
        call(stack, "POST", post, {"containerImage": f"{base_images.registry_host}/library/nope:1"}), 400
    )
    assert missing.startswith("containerImage: ")
    assert wave_error(
        call(stack, "POST", post, {"containerImage": image, "containerPlatform": "linux/s390x"}), 400
    ).startswith("containerPlatform: ")
    bad_digest = {**layer, "gzipDigest": "sha256:" + "1" * 64}
    message = wave_error(
        call(stack, "POST", post, {"containerImage": image, "containerConfig": {"layers": [bad_digest]}}), 400
    )
    assert message.startswith("containerConfig.layers[0].gzipDigest: given sha256:1111"), message
    assert layer["gzipDigest"] in message

    assert wave_error(call(stack, "GET", "/container-token/abcdefabcdef"), 404)
    assert wave_error(call(stack, "GET", "/container-token/NOT-A-TOKEN"), 400).startswith("containerToken: ")
    assert wave_error(call(stack, "GET", "/v1alpha2/container/nope/status"), 400).startswith("requestId: ")
    assert "unknown" in wave_error(call(stack, "GET", f"/v1alpha2/container/{'0' * 32}/status"), 404)
    assert "/v1alpha2/container" in wave_error(call(stack, "GET", "/v1alpha9/whatever"), 404)
    not_allowed = call(stack, "PUT", "/container-token", {"containerImage": image})
    assert "use POST" in wave_error(not_allowed, 405)
    assert not_allowed.header("Allow") == "POST"
    assert "not accepted" in wave_error(call(stack, "POST", post, {"containerImage": image}, token=WRONG), 401)
    # The OCI family keeps its own body format.
    registry_error = stack.http("GET", "/v2/wt/abcdefabcdef/library/busybox/manifests/latest")
    assert registry_error.json()["errors"][0]["code"] == "NAME_UNKNOWN"


# -- the auth matrix --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed_stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    """No anonymous callers; static tokens; a small body limit (for the 413 path)."""
    wave = _start(
        tmp_path_factory.mktemp("closed"),
        registry,
        service={"anonymous": False, "tokens": STATIC_TOKENS, "max_message_size": 1 << 20},
        gateway={"max_body_size": 1 << 20},
    )
    try:
        yield wave
    finally:
        wave.stop()


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    """Anonymous only: no verifier at all."""
    wave = _start(tmp_path_factory.mktemp("open"), registry)
    try:
        yield wave
    finally:
        wave.stop()


@pytest.fixture(scope="module")
def tower_stack(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry, platform: FakePlatform
) -> Iterator[WaveStack]:
    """Callers verified by a Seqera-Platform-compatible /user-info, then static tokens; no anonymous."""
    wave = _start(
        tmp_path_factory.mktemp("tower"),
        registry,
        service={"anonymous": False, "tokens": STATIC_TOKENS},
        auth={
            "verifiers": ["tower", "static"],
            "tower": {"endpoint": platform.url, "allowed_endpoints": [platform.url + "/alt"], "cache_ttl": "60s"},
        },
    )
    try:
        yield wave
    finally:
        wave.stop()


def _owner(stack: WaveStack, answer: dict[str, Any], token: str | None) -> str:
    request = ok(call(stack, "GET", f"/container-token/{answer['containerToken']}", token=token))["request"]
    user: str = request.get("user", {}).get("userName", "anonymous")
    return user


# (stack, how the token is sent, token) -> status, owner
MATRIX = [
    ("open_stack", "none", None, 200, "anonymous"),
    ("open_stack", "bearer", "anything", 200, "anonymous"),
    ("stack", "none", None, 200, "anonymous"),
    ("stack", "bearer", ALICE, 200, "alice"),
    ("stack", "body", BOB, 200, "bob"),
    ("stack", "bearer", "wrong", 401, ""),
    ("closed_stack", "none", None, 401, ""),
    ("closed_stack", "bearer", ALICE, 200, "alice"),
    ("closed_stack", "body", ALICE, 200, "alice"),
    ("closed_stack", "bearer", "wrong", 401, ""),
    ("closed_stack", "body", "wrong", 401, ""),
    ("tower_stack", "bearer", CAROL, 200, "tower:{host}/7"),
    ("tower_stack", "body", CAROL, 200, "tower:{host}/7"),
    ("tower_stack", "bearer", BOB, 200, "bob"),
    ("tower_stack", "bearer", "wrong", 401, ""),
    ("tower_stack", "none", None, 401, ""),
    ("tower_stack", "bearer", BUSY, 429, ""),
]


@pytest.mark.parametrize(("stack_name", "how", "token", "status", "owner"), MATRIX)
def test_auth_matrix(
    request: pytest.FixtureRequest,
    base_images: components.BaseImages,
    platform: FakePlatform,
    stack_name: str,
    how: str,
    token: str | None,
    status: int,
    owner: str,
) -> None:
    wave: WaveStack = request.getfixturevalue(stack_name)
    body: dict[str, Any] = {"containerImage": base_images.ref("latest")}
    if how == "body":
        body["towerAccessToken"] = token
    resp = call(wave, "POST", "/v1alpha2/container", body, token=token if how == "bearer" else None)
    if status != 200:
        message = wave_error(resp, status)
        if status == 401:
            assert resp.header("WWW-Authenticate") == 'Bearer realm="wave-grpc"'
        if token:
            assert token not in message, "a token never appears in an error"
        return
    answer = ok(resp)
    assert _owner(wave, answer, token) == owner.format(host=platform.host)


def test_tower_endpoint_allow_list_and_cache(
    tower_stack: WaveStack, base_images: components.BaseImages, platform: FakePlatform
) -> None:
    image = base_images.ref("latest")
    before = platform.count()
    for _ in range(3):
        create(tower_stack, {"containerImage": image}, token=CAROL)
    assert platform.count() - before <= 1, "answers are cached for [auth.tower].cache_ttl"

    create(tower_stack, {"containerImage": image, "towerEndpoint": platform.url + "/alt"}, token=CAROL)
    assert platform.count("/alt/user-info") >= 1

    elsewhere = f"http://127.0.0.1:{components.free_port()}"
    message = wave_error(
        call(
            tower_stack,
            "POST",
            "/v1alpha2/container",
            {"containerImage": image, "towerEndpoint": elsewhere},
            token=CAROL,
        ),
        401,
    )
    assert elsewhere in message
    assert "allowed_endpoints" in message


def test_body_over_the_limit_is_413(closed_stack: WaveStack, base_images: components.BaseImages) -> None:
    big = {
        "containerImage": base_images.ref("latest"),
        "containerConfig": {"layers": [{"location": "data:" + "A" * (2 << 20)}]},
    }
    message = wave_error(call(closed_stack, "POST", "/v1alpha2/container", big, token=ALICE), 413)
    assert "UploadLayer" in message
