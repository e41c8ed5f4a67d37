"""Freezes against real registries: the augmented image pushed for a permanent name.

Source and targets are real ``docker-registry`` processes; the frozen images are
pulled with skopeo and podman with wave-grpc stopped, and unpacked with umoci.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.components.hostile import HostileRegistry
from tests.hostile import LAYER_BYTES as HOSTILE_LAYER
from tests.stack import WaveStack, await_done, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

PASSWORD = "s3cret-push-password"  # noqa: S105 - a test registry's
USER = "pusher"


LAYER, _ = components.layer_tar_gz({"opt/frozen/hello.sh": b"#!/bin/sh\necho frozen\n"})


def freeze_request(image: str, build_repository: str, **config: Any) -> pb.CreateContainerRequest:
    return pb.CreateContainerRequest(
        container_image=image,
        container_config=pb.ContainerConfig(
            env=["FROZEN=yes"],
            working_dir="/opt/frozen",
            layers=[pb.ContainerLayer(location="data:" + base64.b64encode(LAYER).decode())],
            **config,
        ),
        freeze=True,
        build_repository=build_repository,
    )


def freeze(stack: WaveStack, request: pb.CreateContainerRequest) -> tuple[pb.CreateContainerResponse, Any]:
    with stack.stub() as stub:
        response: pb.CreateContainerResponse = stub.CreateContainer(request, timeout=60)
    assert response.freeze
    assert not response.container_token
    return response, await_done(stack, response.request_id)


def check_frozen_image(target: str, source: components.ImageManifest, workdir: Path, creds: str | None = None) -> None:
    """Pulled and unpacked as a runtime sees it: base and injected files, config, base digests kept."""
    layout = workdir / "oci"
    components.skopeo_copy_to_oci(target, layout, "latest", src_creds=creds)
    rootfs, _ = components.umoci_unpack(layout, "latest", workdir / "bundle")
    assert (rootfs / "etc" / "marker").read_text() == "hello\n"
    assert (rootfs / "bin" / "busybox").exists()
    assert (rootfs / "opt" / "frozen" / "hello.sh").read_text() == "#!/bin/sh\necho frozen\n"
    config = components.read_oci_image_config(layout, "latest")
    assert "FROZEN=yes" in config["config"]["Env"]
    assert config["config"]["WorkingDir"] == "/opt/frozen"
    assert config["rootfs"]["diff_ids"][:-1] == list(source.diff_ids)
    raw = components.skopeo_inspect(target, raw=True, creds=creds)
    layers = [layer["digest"] for layer in json.loads(raw)["layers"]]
    assert layers[:-1] == list(source.layer_digests)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, components.Registry]]:
    root = tmp_path_factory.mktemp("freeze-targets")
    started: dict[str, components.Registry] = {}
    try:
        started["plain"] = components.start_registry(root / "plain")
        started["auth"] = components.start_registry(root / "auth", htpasswd=(USER, PASSWORD))
        started["locked"] = components.start_registry(root / "locked", htpasswd=(USER, PASSWORD))
        yield started
    finally:
        for registry in started.values():
            registry.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    registry: components.Registry,
    targets: dict[str, components.Registry],
) -> Iterator[WaveStack]:
    wave = WaveStack(
        tmp_path_factory.mktemp("freeze-stack"),
        registries=[
            registry_route(registry, push_repositories=["frozen/*"]),
            registry_route(targets["plain"], push_repositories=["*"]),
            registry_route(targets["auth"], username=USER, password_env="PUSH_PASSWORD", push_repositories=["*"]),  # noqa: S106
            # No credentials: pushes are allowed by the operator but refused by the registry.
            registry_route(targets["locked"], push_repositories=["team/*"]),
        ],
        env={"PUSH_PASSWORD": PASSWORD},
        verbose=True,
    )
    with wave.start():
        yield wave


def test_freeze_into_the_source_registry_mounts_base_layers(
    stack: WaveStack, registry: components.Registry, base_images: components.BaseImages, tmp_path: Path
) -> None:
    source = base_images.latest.platform("linux/amd64")
    response, status = freeze(stack, freeze_request(base_images.ref("latest"), f"{registry.host}/frozen/busybox"))
    assert status.succeeded, status.reason
    assert response.target_image.startswith(f"{registry.host}/frozen/busybox:latest-")
    progress = status.freeze_progress
    # The config and the injected layer are sent; every base layer is mounted.
    assert (progress.blobs_total, progress.blobs_mounted, progress.blobs_copied) == (
        len(source.layer_digests) + 2,
        len(source.layer_digests),
        2,
    )
    check_frozen_image(response.target_image, source, tmp_path)
    digest = components.skopeo_inspect(response.target_image, no_tags=True)["Digest"]
    assert digest == response.target_digest

    # The same request gives the same name and digest, and pushes nothing.
    again, second = freeze(stack, freeze_request(base_images.ref("latest"), f"{registry.host}/frozen/busybox"))
    assert (again.target_image, again.target_digest) == (response.target_image, response.target_digest)
    assert second.succeeded
    assert second.freeze_progress.blobs_present == second.freeze_progress.blobs_total
    assert second.freeze_progress.blobs_copied == second.freeze_progress.blobs_mounted == 0

    # A token for the same request serves the manifest the freeze pushed.
    token_request = freeze_request(base_images.ref("latest"), "")
    token_request.freeze = False
    created = stack.create(base_images.ref("latest"), container_config=token_request.container_config)
    with stack.stub() as stub:
        record = stub.DescribeContainer(pb.DescribeContainerRequest(container_token=created.container_token)).container
    assert record.target_manifest_digest == response.target_digest


def test_freeze_into_another_registry_outlives_the_source_and_the_service(
    tmp_path_factory: pytest.TempPathFactory, targets: dict[str, components.Registry], tmp_path: Path
) -> None:
    root = tmp_path_factory.mktemp("freeze-own-source")
    source_registry = components.start_registry(root / "source")
    try:
        images = components.push_busybox_images(root / "images", source_registry)
        wave = WaveStack(
            root / "stack",
            registries=[registry_route(source_registry), registry_route(targets["plain"], push_repositories=["*"])],
        )
        with wave.start():
            response, status = freeze(wave, freeze_request(images.ref("multi"), f"{targets['plain'].host}/team/tool"))
        assert status.succeeded, status.reason
        source = images.by_tag("multi").platform("linux/amd64")
        assert status.freeze_progress.blobs_copied == len(source.layer_digests) + 2
        assert status.freeze_progress.bytes_copied > 0
    finally:
        source_registry.stop()
    # wave-grpc and the source registry are gone: the frozen image stands alone.
    check_frozen_image(response.target_image, source, tmp_path)
    podman_root = tmp_path / "podman"
    try:
        components.podman_pull(response.target_image, podman_root)
        info = components.podman_inspect(response.target_image, podman_root)
        assert "FROZEN=yes" in info["Config"]["Env"]
        assert info["RootFS"]["Layers"][:-1] == list(source.diff_ids)
    finally:
        components.podman_cleanup(podman_root)


def test_freeze_into_an_htpasswd_registry_uses_the_route_credentials(
    stack: WaveStack, targets: dict[str, components.Registry], base_images: components.BaseImages, tmp_path: Path
) -> None:
    auth = targets["auth"]
    response, status = freeze(stack, freeze_request(base_images.ref("latest"), f"{auth.host}/team/private"))
    assert status.succeeded, status.reason
    check_frozen_image(
        response.target_image, base_images.latest.platform("linux/amd64"), tmp_path, creds=f"{USER}:{PASSWORD}"
    )


def test_a_refused_push_fails_the_freeze_saying_what_to_configure(
    stack: WaveStack, targets: dict[str, components.Registry], base_images: components.BaseImages
) -> None:
    locked = targets["locked"]
    _, status = freeze(stack, freeze_request(base_images.ref("latest"), f"{locked.host}/team/tool"))
    assert not status.succeeded
    assert locked.host in status.reason
    assert "[[registries]] entry named" in status.reason
    assert "password_env" in status.reason
    assert PASSWORD not in status.reason
    assert PASSWORD not in stack.log_text()
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in stack.log_text()


def test_freeze_requests_that_cannot_work_are_refused_at_once(
    stack: WaveStack, registry: components.Registry, base_images: components.BaseImages
) -> None:
    cases = [
        (
            freeze_request(base_images.ref("latest"), ""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "build_repository: is required",
        ),
        (
            freeze_request(base_images.ref("latest"), f"{registry.host}/frozen/busybox:v1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "names a tag or digest",
        ),
        # The operator allows pushes to frozen/* only in this registry.
        (
            freeze_request(base_images.ref("latest"), f"{registry.host}/library/busybox"),
            grpc.StatusCode.PERMISSION_DENIED,
            "push_repositories",
        ),
        (
            freeze_request(base_images.ref("latest"), "unlisted.example.com/team/tool"),
            grpc.StatusCode.PERMISSION_DENIED,
            "has no [[registries]] entry",
        ),
    ]
    with stack.stub() as stub:
        for request, code, text in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateContainer(request, timeout=30)
            assert caught.value.code() == code, caught.value.details()
            assert text in (caught.value.details() or ""), caught.value.details()
        not_frozen = pb.CreateContainerRequest(
            container_image=base_images.ref("latest"), build_repository=f"{registry.host}/frozen/x"
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.CreateContainer(not_frozen, timeout=30)
        assert (caught.value.details() or "").startswith("freeze: is false but build_repository is given")


def test_the_rest_flow_as_nextflow_drives_it(
    stack: WaveStack, registry: components.Registry, base_images: components.BaseImages, tmp_path: Path
) -> None:
    body = {
        "containerImage": base_images.ref("latest"),
        "containerConfig": {
            "env": ["FROZEN=yes"],
            "workingDir": "/opt/frozen",
            "layers": [
                {
                    "location": "data:" + base64.b64encode(LAYER).decode(),
                    "gzipDigest": components.sha256_digest(LAYER),
                    "gzipSize": len(LAYER),
                    "tarDigest": components.sha256_digest(gzip.decompress(LAYER)),
                }
            ],
        },
        "freeze": True,
        "buildRepository": f"{registry.host}/frozen/rest",
        "towerAccessToken": None,
    }
    resp = stack.post_json("/v1alpha2/container", body)
    assert resp.status == 200, resp.body
    answer = resp.json()
    assert answer["freeze"] is True
    assert "containerToken" not in answer
    assert "succeeded" not in answer
    assert answer["targetImage"].startswith(f"{registry.host}/frozen/rest:latest-")
    deadline = time.monotonic() + 60
    while True:
        status = stack.http("GET", f"/v1alpha2/container/{answer['requestId']}/status").json()
        if status["status"] == "DONE":
            break
        assert "succeeded" not in status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["succeeded"] is True, status
    check_frozen_image(answer["targetImage"], base_images.latest.platform("linux/amd64"), tmp_path)


def test_cli_freeze_await_prints_the_frozen_name_last(
    stack: WaveStack, registry: components.Registry, base_images: components.BaseImages, tmp_path: Path
) -> None:
    tools = tmp_path / "tools"
    (tools / "opt" / "frozen").mkdir(parents=True)
    (tools / "opt" / "frozen" / "hello.sh").write_text("#!/bin/sh\necho frozen\n")
    argv = [sys.executable, "-m", "wave_grpc.cli", "augment", base_images.ref("latest"), "--layer", str(tools)]
    argv += ["--server", stack.grpc_address, "--freeze", "--build-repo", f"{registry.host}/frozen/cli", "--await"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    name = proc.stdout.strip().splitlines()[-1]
    assert name.startswith(f"{registry.host}/frozen/cli:latest-")
    assert components.skopeo_inspect(name, no_tags=True)["Digest"].startswith("sha256:")

    refused = subprocess.run(
        [*argv[:-4], "--freeze", "--build-repo", f"{registry.host}/library/nope", "--await"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1, refused.stderr
    assert "push_repositories" in refused.stderr
    missing = subprocess.run([*argv[:-4], "--freeze"], capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2
    assert "--build-repo" in missing.stderr


def test_a_freeze_interrupted_by_a_restart_is_resumed(
    tmp_path_factory: pytest.TempPathFactory, base_images: components.BaseImages, registry: components.Registry
) -> None:
    root = tmp_path_factory.mktemp("freeze-restart")
    target = components.start_registry(root / "target")
    hanging = components.LoopbackListener(hold=True)
    # The target's name stays; its endpoint is first a listener that never answers.
    name = "frozen.test:5000"
    wave = WaveStack(
        root / "stack",
        registries=[
            registry_route(registry),
            {"name": name, "endpoint": f"http://127.0.0.1:{hanging.port}", "push_repositories": ["*"]},
        ],
        upstream={"read_timeout": "60s"},
    )
    try:
        wave.start()
        with wave.stub() as stub:
            response = stub.CreateContainer(freeze_request(base_images.ref("latest"), f"{name}/team/tool"), timeout=60)
            deadline = time.monotonic() + 30
            while True:
                status = stub.GetContainerStatus(pb.GetContainerStatusRequest(request_id=response.request_id))
                if status.status == pb.CONTAINER_STATUS_BUILDING:
                    break
                assert status.status == pb.CONTAINER_STATUS_PENDING, status
                assert time.monotonic() < deadline
                time.sleep(0.1)
        wave.stop()  # in the middle of the copy
        hanging.close()
        wave.registries[1]["endpoint"] = target.url
        wave.start()
        status = await_done(wave, response.request_id)
        assert status.succeeded, status.reason
        pushed = components.skopeo_inspect(
            f"{target.host}/team/tool:{response.target_image.rsplit(':', 1)[1]}", no_tags=True
        )
        assert pushed["Digest"] == response.target_digest
    finally:
        wave.stop()
        hanging.close()
        target.stop()


def test_a_dripping_source_ends_at_the_freeze_deadline_and_frees_its_worker(
    tmp_path_factory: pytest.TempPathFactory,
    targets: dict[str, components.Registry],
    registry: components.Registry,
    base_images: components.BaseImages,
) -> None:
    root = tmp_path_factory.mktemp("freeze-deadline")
    plain = targets["plain"]
    with HostileRegistry(root / "hostile", drip_interval=1.0) as hostile:
        wave = WaveStack(
            root / "stack",
            registries=[
                {"name": hostile.host, "endpoint": hostile.url},
                registry_route(registry, push_repositories=["deadline/*"], freeze_to_other_registries=False),
                registry_route(plain, push_repositories=["*"]),
            ],
            # One worker: the second freeze runs only once the first has let it go.
            service={"freeze_workers": 1, "freeze_deadline": "3s"},
            limits={"freezes_per_hour": 2},
        )
        with wave.start():
            dripping = _create(wave, freeze_request(f"{hostile.host}/drip-layers/tool:v1", f"{plain.host}/drip/tool"))
            fast = _create(wave, freeze_request(base_images.ref("latest"), f"{registry.host}/deadline/busybox"))
            status = await_done(wave, dripping.request_id)
            assert not status.succeeded
            assert "[service].freeze_deadline" in status.reason, status.reason
            assert f"blob {hostile_layer_digest()}" in status.reason, status.reason
            assert await_done(wave, fast.request_id).succeeded

            # This registry's images stay in it; refused before anything is counted or copied.
            with pytest.raises(grpc.RpcError) as refused:
                _create(wave, freeze_request(base_images.ref("latest"), f"{plain.host}/elsewhere/busybox"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            details = refused.value.details() or ""
            assert f"[[registries]] entry named {registry.host!r}" in details, details
            assert "freeze_to_other_registries = false" in details, details

            # Two freezes an hour for this caller: the third is refused, naming the key.
            with pytest.raises(grpc.RpcError) as limited:
                _create(wave, freeze_request(base_images.ref("latest"), f"{registry.host}/deadline/again"))
            assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "[limits].freezes_per_hour" in (limited.value.details() or "")


def hostile_layer_digest() -> str:
    return "sha256:" + hashlib.sha256(HOSTILE_LAYER).hexdigest()


def _create(stack: WaveStack, request: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
    with stack.stub() as stub:
        response: pb.CreateContainerResponse = stub.CreateContainer(request, timeout=60)
    return response
