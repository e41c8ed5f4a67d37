"""Session fixtures for the real-component harness (see tests/components/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import components
from tests.fakeplatform import FakePlatform


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "components: needs real components (docker-registry, skopeo, umoci, podman, "
        "containerd, dockerd); a missing tool fails the test, it is never skipped",
    )


@pytest.fixture(scope="session")
def workdir_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("components")


@pytest.fixture(scope="session")
def registry(workdir_root: Path) -> Iterator[components.Registry]:
    reg = components.start_registry(workdir_root / "registry")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def base_images(workdir_root: Path, registry: components.Registry) -> components.BaseImages:
    return components.push_busybox_images(workdir_root / "images", registry)


@pytest.fixture(scope="session")
def containerd(workdir_root: Path) -> Iterator[components.Containerd]:
    """Started on first use only."""
    ctrd = components.Containerd(workdir_root / "containerd")
    try:
        yield ctrd
    finally:
        ctrd.stop()


@pytest.fixture(scope="session")
def docker_daemon(workdir_root: Path) -> Iterator[components.DockerDaemon]:
    """A private dockerd (vfs, plain-http loopback registries); started on first use only."""
    daemon = components.DockerDaemon(workdir_root / "docker")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def platform() -> Iterator[FakePlatform]:
    """A fake Seqera Platform ``/user-info`` endpoint (tests/fakeplatform.py)."""
    fake = FakePlatform()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture(scope="session")
def project_image(workdir_root: Path) -> Iterator[components.ProjectImage]:
    """The repo's Containerfile built once per run into a private podman store (tests/components/project_image.py)."""
    store = workdir_root / "podman-image"
    try:
        built = components.build_project_image(store, Path(__file__).resolve().parent.parent, workdir_root / "build")
        print(
            f"\nproject image {built.ref}: {built.size_mib:.1f} MiB, built in {built.build_seconds:.1f} s "
            f"(bases ready in {built.base_seconds:.1f} s)"
        )
        yield built
    finally:
        components.podman_cleanup(store)
