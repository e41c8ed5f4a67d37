"""deploy/compose.yaml as shipped, up on a private Docker daemon with Debian's docker-compose 1.29.

The project image (built once per run with podman) and a stand-in for the official
registry and redis images (Debian's binaries on the same offline base) get into
dockerd through ``podman save`` + ``docker load``; the compose file picks them up
through its image variables, and publishes on free 127.0.0.1 ports. A base image is
pushed to the stack's registry, augmented through the service's gRPC port, and pulled
through each of the two gateways; then the stack comes down.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests import components
from tests.test_e2e_augment import cli

pytestmark = pytest.mark.components

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "deploy" / "compose.yaml"


@dataclass(frozen=True)
class ComposePorts:
    service: int
    gateway1: int
    gateway2: int
    registry: int


@dataclass
class ComposeStack:
    ports: ComposePorts
    up: components.ManagedProcess


def _load_images(daemon: components.DockerDaemon, image: components.ProjectImage, workdir: Path) -> str:
    peers = components.build_peer_image(image.store, workdir)
    archive = workdir / "images.tar"
    components.podman_command(
        image.store, "save", "--multi-image-archive", "--output", os.fspath(archive), image.ref, peers, timeout=600
    )
    daemon.docker_cmd("load", "--quiet", "--input", os.fspath(archive), timeout=600)
    archive.unlink()
    return peers


def _compose(project: str, *args: str) -> list[str]:
    docker_compose = components.require_tool("docker-compose")
    return [docker_compose, "--project-name", project, "--file", os.fspath(COMPOSE_FILE), *args]


@pytest.fixture(scope="module")
def stack(
    docker_daemon: components.DockerDaemon,
    project_image: components.ProjectImage,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ComposeStack]:
    workdir = tmp_path_factory.mktemp("compose")
    peers = _load_images(docker_daemon, project_image, workdir)
    ports = ComposePorts(*(components.free_port() for _ in range(4)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(
        DOCKER_HOST=docker_daemon.host,
        WAVE_GRPC_IMAGE=project_image.ref,
        WAVE_GRPC_REDIS_IMAGE=peers,
        WAVE_GRPC_REGISTRY_IMAGE=peers,
        WAVE_GRPC_SERVICE_PORT=str(ports.service),
        WAVE_GRPC_GATEWAY1_PORT=str(ports.gateway1),
        WAVE_GRPC_GATEWAY2_PORT=str(ports.gateway2),
        WAVE_GRPC_REGISTRY_PORT=str(ports.registry),
    )
    project = f"wave-grpc-test-{ports.service}"
    # Attached `up`: its log holds every container's output, and SIGTERM to it (by PID) stops the stack.
    up = components.ManagedProcess(
        _compose(project, "up", "--no-color", "--no-build"),
        log_path=workdir / "compose-up.log",
        env=env,
        name="docker-compose up",
    )
    try:
        # docker-proxy accepts TCP on a published port before the container listens: wait for HTTP/2.
        with grpc.insecure_channel(f"127.0.0.1:{ports.service}") as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
        up.wait_http(f"http://127.0.0.1:{ports.registry}/v2/", timeout=60, statuses=frozenset({200}))
        for port in (ports.gateway1, ports.gateway2):
            up.wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, statuses=frozenset({200}))
        yield ComposeStack(ports, up)
    finally:
        up.stop(timeout=60)
        subprocess.run(
            _compose(project, "down", "--volumes", "--timeout", "10"),
            env=env,
            capture_output=True,
            timeout=180,
            check=False,
        )


def _injected_dir(root: Path) -> Path:
    (root / "opt" / "compose").mkdir(parents=True)
    (root / "opt" / "compose" / "hello.txt").write_text("from the compose stack\n")
    return root


def test_pull_through_each_gateway(stack: ComposeStack, base_images: components.BaseImages, tmp_path: Path) -> None:
    skopeo = components.require_tool("skopeo")
    components.run_tool(
        [
            skopeo, "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{base_images.ref('latest')}",
            f"docker://127.0.0.1:{stack.ports.registry}/library/busybox:latest",
        ]
    )  # fmt: skip
    # The service resolves the stack's registry by its Compose name.
    target = cli(
        "augment",
        "registry:5000/library/busybox:latest",
        "--layer",
        str(_injected_dir(tmp_path / "layer")),
        "--server",
        f"127.0.0.1:{stack.ports.service}",
    ).stdout.strip()
    assert target.startswith("localhost:9090/wt/"), target
    _, _, path = target.partition("/")
    for port in (stack.ports.gateway1, stack.ports.gateway2):
        layout = tmp_path / f"oci-{port}"
        components.skopeo_copy_to_oci(f"127.0.0.1:{port}/{path}", layout)
        rootfs, _ = components.umoci_unpack(layout, "latest", tmp_path / f"bundle-{port}")
        assert (rootfs / "opt" / "compose" / "hello.txt").read_text() == "from the compose stack\n"
        assert (rootfs / "etc" / "marker").read_text() == "hello\n"  # the base layer, streamed from the registry
