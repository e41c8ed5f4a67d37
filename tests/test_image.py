"""The project's image (Containerfile), built offline and run with podman as a user would.

Read-only root filesystem, the image's own non-root user, a state volume, and a config
that binds free 127.0.0.1 ports (host network) and lists a local docker-registry as the
upstream. An augmentation goes through the container's gRPC port with the CLI, and the
result is pulled through its gateway with skopeo and unpacked with umoci. The
``serve --only gateway`` argument form runs against the first container's service.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import components
from tests.stack import registry_route, write_toml
from tests.test_e2e_augment import cli

pytestmark = pytest.mark.components

UID = 10001
STATE = "/var/lib/wave-grpc"
CONFIG = "/etc/wave-grpc/config.toml"


@dataclass(frozen=True)
class Ports:
    grpc: int
    gateway: int
    admin: int


def _container_config(path: Path, ports: Ports, registry: components.Registry, service_port: int) -> Path:
    sections: dict[str, Any] = {
        "service": {"listen": f"127.0.0.1:{ports.grpc}", "store": f"sqlite:///{STATE}/wave.db", "anonymous": True},
        "gateway": {
            "listen": f"127.0.0.1:{ports.gateway}",
            "public_host": f"127.0.0.1:{ports.gateway}",
            "service": f"127.0.0.1:{service_port}",
        },
        "admin": {"listen": f"127.0.0.1:{ports.admin}"},
        "layers": {"store": f"file://{STATE}/layers", "staging": f"{STATE}/staging"},
        "upstream": {"default_route": "deny", "connect_timeout": "3s", "read_timeout": "10s"},
        "registries": [registry_route(registry)],
    }
    return write_toml(path, sections)


def _run(
    image: components.ProjectImage, workdir: Path, name: str, config: Path, state: Path, args: tuple[str, ...] = ()
) -> components.PodmanContainer:
    state.mkdir(parents=True, exist_ok=True)
    os.chown(state, UID, UID)  # the volume must be writable by the image's user
    return components.PodmanContainer(
        image.store,
        image.ref,
        args,
        name=name,
        log_path=workdir / f"{name}.log",
        options=("--read-only", "-v", f"{config}:{CONFIG}:ro", "-v", f"{state}:{STATE}"),
    )


@dataclass
class RunningImage:
    container: components.PodmanContainer
    ports: Ports
    state: Path


@pytest.fixture(scope="module")
def running(
    project_image: components.ProjectImage, registry: components.Registry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningImage]:
    workdir = tmp_path_factory.mktemp("image")
    ports = Ports(components.free_port(), components.free_port(), components.free_port())
    config = _container_config(workdir / "config.toml", ports, registry, ports.grpc)
    container = _run(project_image, workdir, f"wave-grpc-test-{ports.grpc}", config, workdir / "state")
    with container:
        container.process.wait_tcp("127.0.0.1", ports.grpc, timeout=60)
        container.process.wait_http(f"http://127.0.0.1:{ports.admin}/readyz", timeout=60, statuses=frozenset({200}))
        yield RunningImage(container, ports, workdir / "state")


def _injected_dir(root: Path) -> Path:
    (root / "opt" / "wave").mkdir(parents=True)
    (root / "opt" / "wave" / "hello.txt").write_text("from the image test\n")
    return root


def _pull_and_read(target: str, gateway_port: int, workdir: Path) -> str:
    """skopeo copy through the gateway at ``gateway_port``, umoci unpack, the injected file."""
    _, _, path = target.partition("/")
    layout = workdir / "oci"
    components.skopeo_copy_to_oci(f"127.0.0.1:{gateway_port}/{path}", layout)
    rootfs, _ = components.umoci_unpack(layout, "latest", workdir / "bundle")
    return (rootfs / "opt" / "wave" / "hello.txt").read_text()


def test_image_metadata_user_and_size(project_image: components.ProjectImage) -> None:
    print(
        f"\nimage size {project_image.size_bytes} bytes ({project_image.size_mib:.1f} MiB); "
        f"build {project_image.build_seconds:.1f} s"
    )
    assert project_image.user == f"{UID}:{UID}"
    assert project_image.labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert project_image.labels["org.opencontainers.image.version"]
    assert project_image.labels["org.opencontainers.image.source"].startswith("https://")
    entrypoint = components.podman_command(
        project_image.store, "image", "inspect", "--format", "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        project_image.ref,
    ).strip()  # fmt: skip
    assert entrypoint == f'["wave-grpc"] ["serve","--config","{CONFIG}"]'


def test_runs_as_its_user_on_a_read_only_root(running: RunningImage) -> None:
    assert running.container.exec("id", "-u").strip() == str(UID)
    with pytest.raises(components.ToolError, match="Read-only file system"):
        running.container.exec("touch", "/opt/wave-grpc/written")
    assert (running.state / "wave.db").stat().st_uid == UID
    health = components.http_request("GET", f"http://127.0.0.1:{running.ports.admin}/healthz")
    assert health.status == 200


def test_augment_over_grpc_and_pull_through_the_gateway(
    running: RunningImage, base_images: components.BaseImages, tmp_path: Path
) -> None:
    proc = cli(
        "augment",
        base_images.ref("latest"),
        "--layer",
        str(_injected_dir(tmp_path / "layer")),
        "--server",
        f"127.0.0.1:{running.ports.grpc}",
    )
    target = proc.stdout.strip()
    assert target.startswith(f"127.0.0.1:{running.ports.gateway}/wt/"), proc.stdout
    assert _pull_and_read(target, running.ports.gateway, tmp_path) == "from the image test\n"
    # The layer went to the state volume, as the container's user.
    assert any((running.state / "layers" / "blobs" / "sha256").iterdir())


def test_serve_only_gateway_argument_form(
    running: RunningImage,
    project_image: components.ProjectImage,
    registry: components.Registry,
    base_images: components.BaseImages,
    tmp_path: Path,
) -> None:
    """``IMAGE serve --only gateway --config ...``: a second container serving the first one's tokens."""
    ports = Ports(components.free_port(), components.free_port(), components.free_port())
    config = _container_config(tmp_path / "gateway.toml", ports, registry, running.ports.grpc)
    # A gateway with a file:// layer store reads the layers the service wrote: share its state.
    gateway = _run(
        project_image,
        tmp_path,
        f"wave-grpc-gateway-{ports.gateway}",
        config,
        running.state,
        ("serve", "--only", "gateway", "--config", CONFIG),
    )
    with gateway:
        gateway.process.wait_http(f"http://127.0.0.1:{ports.gateway}/v2/", timeout=60)
        target = cli(
            "augment",
            base_images.ref("latest"),
            "--layer",
            str(_injected_dir(tmp_path / "layer")),
            "--server",
            f"127.0.0.1:{running.ports.grpc}",
        ).stdout.strip()
        assert _pull_and_read(target, ports.gateway, tmp_path) == "from the image test\n"
        # Only the gateway runs in it: nothing listens on its own service port.
        assert "AugmentService listening" not in gateway.log_text()
