"""Proves the Docker daemon component: ``docker pull [--platform]`` from a plain-http loopback registry."""

from __future__ import annotations

import pytest

from tests.components import BaseImages, DockerDaemon

pytestmark = pytest.mark.components


def test_pull_single_manifest_is_amd64(docker_daemon: DockerDaemon, base_images: BaseImages) -> None:
    ref = base_images.ref("latest")
    docker_daemon.pull(ref)
    info = docker_daemon.inspect(ref)
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["Id"] == base_images.latest.platform("linux/amd64").config_digest
    assert f"{base_images.registry_host}/{base_images.repository}@{base_images.latest.digest}" in info["RepoDigests"]


def test_pull_arm64_from_index(docker_daemon: DockerDaemon, base_images: BaseImages) -> None:
    ref = base_images.ref("multi")
    docker_daemon.pull(ref, platform="linux/arm64")
    info = docker_daemon.inspect(ref)
    assert (info["Os"], info["Architecture"]) == ("linux", "arm64")
    assert info["Id"] == base_images.multi.platform("linux/arm64").config_digest


def test_run_amd64_image(docker_daemon: DockerDaemon, base_images: BaseImages) -> None:
    ref = base_images.ref("latest")
    assert docker_daemon.run(ref) == "hi\n"  # entrypoint /bin/sh, cmd -c "echo hi"
    assert docker_daemon.run(ref, "-c", "cat /etc/marker /etc/second", platform="linux/amd64") == "hello\ntwo\n"
