"""Proves the real-component harness: registry, base images and pulling clients."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests import components
from tests.components import BaseImages, Containerd, Registry

pytestmark = pytest.mark.components


def test_registry_serves_every_tag(registry: Registry, base_images: BaseImages) -> None:
    expected = {
        "latest": components.OCI_MANIFEST,
        "v2s2": components.DOCKER_MANIFEST,
        "multi": components.OCI_INDEX,
        "dockerlist": components.DOCKER_MANIFEST_LIST,
    }
    for tag, media_type in expected.items():
        image = base_images.by_tag(tag)
        body, got_type, digest = components.get_manifest(registry.url, "library/busybox", tag)
        assert (got_type, digest) == (media_type, image.digest)
        assert json.loads(body)["mediaType"] == media_type
        # HEAD by digest answers with the same digest
        head = components.http_request(
            "HEAD",
            f"{registry.url}/v2/library/busybox/manifests/{digest}",
            headers=[("Accept", t) for t in components.ALL_MANIFEST_TYPES],
        )
        assert head.status == 200
        assert head.header("Docker-Content-Digest") == digest
    tags = components.http_request("GET", f"{registry.url}/v2/library/busybox/tags/list").json()
    assert sorted(tags["tags"]) == sorted(expected)


def test_base_image_structure(base_images: BaseImages) -> None:
    latest = base_images.latest.platform("linux/amd64")
    assert len(latest.layer_digests) == 2
    assert len(latest.diff_ids) == 2
    # the v2s2 copy shares config and layer blobs, the manifest differs
    v2s2 = base_images.v2s2.platform()
    assert v2s2.layer_digests == latest.layer_digests
    assert v2s2.config_digest == latest.config_digest
    assert v2s2.digest != latest.digest
    multi, dlist = base_images.multi, base_images.dockerlist
    assert multi.is_index
    assert dlist.is_index
    assert multi.platform("linux/amd64").digest == latest.digest
    assert dlist.platform("linux/amd64").digest == v2s2.digest
    arm = multi.platform("linux/arm64")
    assert arm.layer_digests[0] != latest.layer_digests[0]
    assert arm.layer_digests[1] == latest.layer_digests[1]  # /etc/second is shared
    assert dlist.platform("linux/arm64").config_digest == arm.config_digest
    names = set(components.iter_tar_names(base_images_blob(base_images, latest.layer_digests[1])))
    assert names == {"etc", "etc/second"}


def base_images_blob(images: BaseImages, digest: str) -> bytes:
    return components.get_blob(images.registry_url, images.repository, digest)


def test_build_is_reproducible(tmp_path: Path, base_images: BaseImages) -> None:
    with components.start_registry(tmp_path / "reg") as other:
        again = components.push_busybox_images(tmp_path / "img", other)
    for tag in base_images.tags:
        first, second = base_images.by_tag(tag), again.by_tag(tag)
        assert first.digest == second.digest, tag
        assert first.manifests == second.manifests, tag


def test_skopeo_pull_and_umoci_unpack(tmp_path: Path, base_images: BaseImages) -> None:
    layout = tmp_path / "oci"
    components.skopeo_copy_to_oci(base_images.ref("latest"), layout, "latest")
    rootfs, runtime = components.umoci_unpack(layout, "latest", tmp_path / "bundle")
    assert (rootfs / "etc" / "marker").read_text() == "hello\n"
    assert (rootfs / "etc" / "second").read_text() == "two\n"
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    assert runtime["process"]["args"] == ["/bin/sh", "-c", "echo hi"]
    assert "PATH=/bin" in runtime["process"]["env"]
    config = components.read_oci_image_config(layout, "latest")
    assert config["config"]["Entrypoint"] == ["/bin/sh"]
    assert config["config"]["Cmd"] == ["-c", "echo hi"]
    assert config["config"]["Env"] == ["PATH=/bin"]
    assert config["config"]["WorkingDir"] == "/"
    assert config["architecture"] == "amd64"


@pytest.mark.parametrize("tag", ["multi", "dockerlist"])
def test_skopeo_picks_arm64_from_index(tmp_path: Path, base_images: BaseImages, tag: str) -> None:
    layout = tmp_path / "oci"
    components.skopeo_copy_to_oci(base_images.ref(tag), layout, "x", arch="arm64")
    rootfs, _ = components.umoci_unpack(layout, "x", tmp_path / "bundle")
    assert (rootfs / "etc" / "marker").read_text() == "arm64\n"
    assert components.read_oci_image_config(layout, "x")["architecture"] == "arm64"


def test_skopeo_inspect(base_images: BaseImages) -> None:
    raw = components.skopeo_inspect(base_images.ref("multi"), raw=True)
    assert components.sha256_digest(raw) == base_images.multi.digest
    info = components.skopeo_inspect(base_images.ref("v2s2"))
    assert info["Digest"] == base_images.v2s2.digest
    assert info["Layers"] == list(base_images.v2s2.platform().layer_digests)
    assert "latest" in info["RepoTags"]


def test_htpasswd_registry(tmp_path: Path) -> None:
    with components.start_registry(tmp_path / "reg", htpasswd=("alice", "s3cret")) as reg:
        anon = components.http_request("GET", f"{reg.url}/v2/")
        assert anon.status == 401
        images = components.push_busybox_images(tmp_path / "img", reg)
        layout = tmp_path / "oci"
        components.skopeo_copy_to_oci(images.ref(), layout, src_creds="alice:s3cret")
        with pytest.raises(components.ToolError, match="stderr"):
            components.skopeo_copy_to_oci(images.ref(), tmp_path / "oci2")


def test_podman_pull(tmp_path: Path, base_images: BaseImages) -> None:
    root = tmp_path / "podman"
    try:
        image_id = components.podman_pull(base_images.ref("latest"), root)
        info = components.podman_inspect(image_id, root)
        assert info["Digest"] == base_images.latest.digest
        assert info["Config"]["Entrypoint"] == ["/bin/sh"]
        assert image_id == base_images.latest.platform().config_digest.split(":")[1]
        arm_id = components.podman_pull(base_images.ref("dockerlist"), root, arch="arm64")
        arm = components.podman_inspect(arm_id, root)
        assert arm["Architecture"] == "arm64"
        assert arm["Digest"] == base_images.dockerlist.digest
    finally:
        components.podman_cleanup(root)


def test_ctr_pull(containerd: Containerd, base_images: BaseImages) -> None:
    containerd.pull(base_images.ref("latest"))
    containerd.pull(base_images.ref("v2s2"))
    containerd.pull(base_images.ref("multi"), platform="linux/arm64")
    listing = containerd.image_list()
    for tag in ("latest", "v2s2", "multi"):
        line = next(ln for ln in listing.splitlines() if ln.startswith(base_images.ref(tag)))
        assert base_images.by_tag(tag).digest in line


def test_require_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    assert components.require_tool("skopeo").endswith("/skopeo")
    # Missing components fail the run, in CI and everywhere else: nothing skips.
    for ci in ("false", "true"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match="missing; install it"):
            components.require_tool("no-such-tool-components")


def test_managed_process_stops_by_pid(tmp_path: Path) -> None:
    port = components.free_port()
    server = (
        "import signal, socket, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
        "print('listening', flush=True)\n"
        "time.sleep(60)\n"
    )
    with components.ManagedProcess([sys.executable, "-c", server, str(port)], log_path=tmp_path / "p.log") as proc:
        proc.wait_tcp("127.0.0.1", port, timeout=10)
        assert "listening" in proc.log_text()
        # ignores SIGTERM: stop() falls back to SIGKILL after the grace period
        assert proc.stop(timeout=0.5) == -signal.SIGKILL
        assert not proc.is_running()
    with (
        components.ManagedProcess(
            [sys.executable, "-c", "import sys; sys.exit(3)"], log_path=tmp_path / "q.log"
        ) as dead,
        pytest.raises(RuntimeError, match="exited with 3"),
    ):
        dead.wait_tcp("127.0.0.1", components.free_port(), timeout=10)


def test_pull_through_cache_registry(tmp_path: Path, registry: Registry, base_images: BaseImages) -> None:
    with components.start_registry(tmp_path / "proxy", proxy_remote_url=registry.url) as proxy:
        _, media_type, digest = components.get_manifest(proxy.url, "library/busybox", "multi")
        assert (media_type, digest) == (components.OCI_INDEX, base_images.multi.digest)
        layout = tmp_path / "oci"
        components.skopeo_copy_to_oci(proxy.ref("library/busybox", "latest"), layout)
        config = components.read_oci_image_config(layout, "latest")
        assert config["rootfs"]["diff_ids"] == list(base_images.latest.platform().diff_ids)
