"""End to end: augment real images in a real registry, pull them with real runtimes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

MANIFEST_ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    with WaveStack(tmp_path_factory.mktemp("stack"), registries=[registry_route(registry)]).start() as wave:
        yield wave


@pytest.fixture(scope="module")
def tools_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tools")
    script = root / "usr" / "local" / "bin" / "hello.sh"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho hello from wave-grpc\n")
    script.chmod(0o755)
    (root / "opt" / "data").mkdir(parents=True)
    (root / "opt" / "data" / "notes.txt").write_text("injected\n")
    return root


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "wave_grpc.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"wave-grpc {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def augment(stack: WaveStack, image: str, tools: Path, *extra: str) -> str:
    proc = cli("augment", image, "--layer", str(tools), "--server", stack.grpc_address, *extra)
    target = proc.stdout.strip()
    assert target.startswith(f"{stack.gateway_host}/wt/"), proc.stdout
    return target


def pull_and_unpack(target: str, workdir: Path, arch: str | None = None) -> tuple[Path, dict[str, Any]]:
    layout = workdir / "oci"
    components.skopeo_copy_to_oci(target, layout, "latest", arch=arch)
    rootfs, _ = components.umoci_unpack(layout, "latest", workdir / "bundle")
    config = components.read_oci_image_config(layout, "latest", platform=f"linux/{arch or 'amd64'}")
    return rootfs, config


def served_manifest(stack: WaveStack, target: str, accept: list[tuple[str, str]] = MANIFEST_ACCEPT) -> Any:
    path = target.split("/", 1)[1]
    name, tag = path.rsplit(":", 1)
    resp = stack.http("GET", f"/v2/{name}/manifests/{tag}", accept)
    assert resp.status == 200, resp.body
    return resp


def test_cli_augment_pull_with_skopeo_and_unpack(
    stack: WaveStack, base_images: components.BaseImages, tools_dir: Path, tmp_path: Path
) -> None:
    target = augment(
        stack,
        base_images.ref("latest"),
        tools_dir,
        "--config-env",
        "FOO=bar",
        "--config-env",
        "PATH=/usr/local/bin:/bin",
        "--config-entrypoint",
        "/bin/sh",
        "--config-working-dir",
        "/work",
        "--platform",
        "linux/amd64",
    )
    assert target.endswith("/library/busybox:latest")
    rootfs, config = pull_and_unpack(target, tmp_path)

    assert (rootfs / "etc" / "marker").read_text() == "hello\n"
    assert (rootfs / "etc" / "second").read_text() == "two\n"
    assert (rootfs / "bin" / "busybox").exists()
    hello = rootfs / "usr" / "local" / "bin" / "hello.sh"
    assert hello.read_text().startswith("#!/bin/sh")
    assert os.access(hello, os.X_OK)
    assert (rootfs / "opt" / "data" / "notes.txt").read_text() == "injected\n"

    runtime = config["config"]
    assert "FOO=bar" in runtime["Env"]
    assert "PATH=/usr/local/bin:/bin" in runtime["Env"]
    assert not any(e.startswith("PATH=/bin") for e in runtime["Env"])
    assert "WAVE_ENTRY_CHAIN=/bin/sh" in runtime["Env"]
    assert runtime["Entrypoint"] == ["/bin/sh"]
    assert runtime["Cmd"] == ["-c", "echo hi"]
    assert runtime["WorkingDir"] == "/work"
    upstream = base_images.latest.platform("linux/amd64")
    assert config["rootfs"]["diff_ids"][: len(upstream.diff_ids)] == list(upstream.diff_ids)
    assert len(config["rootfs"]["diff_ids"]) == len(upstream.diff_ids) + 1

    manifest = json.loads(served_manifest(stack, target).body)
    layers = [layer["digest"] for layer in manifest["layers"]]
    assert layers[: len(upstream.layer_digests)] == list(upstream.layer_digests)
    assert manifest["mediaType"] == components.OCI_MANIFEST
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"


def test_docker_v2s2_keeps_docker_media_types(
    stack: WaveStack, base_images: components.BaseImages, tools_dir: Path, tmp_path: Path
) -> None:
    target = augment(stack, base_images.ref("v2s2"), tools_dir, "--config-env", "FOO=bar")
    resp = served_manifest(stack, target)
    manifest = json.loads(resp.body)
    assert resp.header("Content-Type") == components.DOCKER_MANIFEST
    assert manifest["mediaType"] == components.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    upstream = base_images.v2s2.platform("linux/amd64")
    assert [x["digest"] for x in manifest["layers"][:-1]] == list(upstream.layer_digests)
    rootfs, config = pull_and_unpack(target, tmp_path)
    assert (rootfs / "usr" / "local" / "bin" / "hello.sh").exists()
    assert "FOO=bar" in config["config"]["Env"]


@pytest.mark.parametrize("tag", ["multi", "dockerlist"])
def test_index_serves_only_the_requested_platform(
    stack: WaveStack, base_images: components.BaseImages, tools_dir: Path, tmp_path: Path, tag: str
) -> None:
    target = augment(stack, base_images.ref(tag), tools_dir, "--platform", "linux/arm64")
    index_resp = served_manifest(stack, target)
    index = json.loads(index_resp.body)
    assert index["mediaType"] == base_images.by_tag(tag).media_type
    assert len(index["manifests"]) == 1
    assert index["manifests"][0]["platform"]["architecture"] == "arm64"
    # A client that takes no index gets the augmented manifest itself.
    single = served_manifest(
        stack, target, [("Accept", components.OCI_MANIFEST), ("Accept", components.DOCKER_MANIFEST)]
    )
    assert single.header("Docker-Content-Digest") == index["manifests"][0]["digest"]

    rootfs, config = pull_and_unpack(target, tmp_path, arch="arm64")
    assert (rootfs / "etc" / "marker").read_text() == "arm64\n"
    assert (rootfs / "usr" / "local" / "bin" / "hello.sh").exists()
    assert config["architecture"] == "arm64"
    upstream = base_images.by_tag(tag).platform("linux/arm64")
    assert config["rootfs"]["diff_ids"][:-1] == list(upstream.diff_ids)


def test_podman_pulls_amd64_and_arm64(
    stack: WaveStack, base_images: components.BaseImages, tools_dir: Path, tmp_path: Path
) -> None:
    components.require_tool("podman")
    root = tmp_path / "podman"
    try:
        target = augment(stack, base_images.ref("latest"), tools_dir, "--config-env", "FOO=bar")
        components.podman_pull(target, root)
        info = components.podman_inspect(target, root)
        assert "FOO=bar" in info["Config"]["Env"]
        upstream = base_images.latest.platform("linux/amd64")
        assert info["RootFS"]["Layers"][:-1] == list(upstream.diff_ids)

        arm = augment(stack, base_images.ref("multi"), tools_dir, "--platform", "arm64")
        components.podman_pull(arm, root, arch="arm64")
        assert components.podman_inspect(arm, root)["Architecture"] == "arm64"
    finally:
        components.podman_cleanup(root)


def test_containerd_pulls(
    stack: WaveStack, base_images: components.BaseImages, tools_dir: Path, containerd: components.Containerd
) -> None:
    target = augment(stack, base_images.ref("multi"), tools_dir, "--config-env", "FOO=bar")
    containerd.pull(target)
    assert target in containerd.image_list()
    # ctr unpacks and checks every diff_id against the layer contents.
    target_v2 = augment(stack, base_images.ref("v2s2"), tools_dir)
    containerd.pull(target_v2)


def test_pull_by_digest_after_restart_gives_same_bytes(
    stack: WaveStack, base_images: components.BaseImages, tools_dir: Path, tmp_path: Path
) -> None:
    target = augment(stack, base_images.ref("multi"), tools_dir, "--config-env", "A=1")
    before = served_manifest(stack, target)
    digest = before.header("Docker-Content-Digest")
    assert digest is not None
    repo_path = target.rsplit(":", 1)[0]
    raw_before = components.skopeo_inspect(f"{repo_path}@{digest}", raw=True)

    stack.restart()

    after = served_manifest(stack, target)
    assert after.body == before.body
    assert components.skopeo_inspect(f"{repo_path}@{digest}", raw=True) == raw_before
    components.skopeo_copy_to_oci(f"{repo_path}@{digest}", tmp_path / "oci", "latest")


def test_head_and_get_agree(stack: WaveStack, base_images: components.BaseImages, tools_dir: Path) -> None:
    target = augment(stack, base_images.ref("latest"), tools_dir)
    name = target.split("/", 1)[1].rsplit(":", 1)[0]
    manifest = json.loads(served_manifest(stack, target).body)
    paths = [f"/v2/{name}/manifests/latest", f"/v2/{name}/blobs/{manifest['config']['digest']}"]
    paths.append(f"/v2/{name}/blobs/{manifest['layers'][-1]['digest']}")
    paths.append(f"/v2/{name}/blobs/{manifest['layers'][0]['digest']}")
    for path in paths:
        get = stack.http("GET", path, MANIFEST_ACCEPT)
        head = stack.http("HEAD", path, MANIFEST_ACCEPT)
        assert get.status == head.status, path
        assert head.body == b""
        for header in (
            "Content-Type",
            "Content-Length",
            "Docker-Content-Digest",
            "Location",
            "Docker-Distribution-API-Version",
        ):
            assert get.header(header) == head.header(header), (path, header)
        if get.status == 200:
            assert get.header("Content-Length") == str(len(get.body))
            assert get.header("Docker-Content-Digest") == components.sha256_digest(get.body)
    base = stack.http("GET", paths[3])
    assert base.status == 307
    assert (
        base.header(
            "Location",
        )
        == f"{base_images.registry_url}/v2/library/busybox/blobs/{manifest['layers'][0]['digest']}"
    )
    tags = stack.http("GET", f"/v2/{name}/tags/list")
    assert json.loads(tags.body) == {"name": name, "tags": ["latest"]}
    assert stack.http("GET", "/v2/").status == 200


def _oci_error(resp: components.HttpResponse) -> str:
    body = json.loads(resp.body)
    assert set(body["errors"][0]) >= {"code", "message"}
    code: str = body["errors"][0]["code"]
    return code


def test_not_found_cases(stack: WaveStack, base_images: components.BaseImages, tools_dir: Path) -> None:
    target = augment(stack, base_images.ref("latest"), tools_dir)
    token = target.split("/")[2]
    name = target.split("/", 1)[1].rsplit(":", 1)[0]

    unknown = stack.http("GET", "/v2/wt/abcdefabcdef/library/busybox/manifests/latest", MANIFEST_ACCEPT)
    assert (unknown.status, _oci_error(unknown)) == (404, "NAME_UNKNOWN")
    wrong_path = stack.http("GET", f"/v2/wt/{token}/library/alpine/manifests/latest", MANIFEST_ACCEPT)
    assert (wrong_path.status, _oci_error(wrong_path)) == (404, "NAME_UNKNOWN")
    wrong_tag = stack.http("GET", f"/v2/{name}/manifests/other", MANIFEST_ACCEPT)
    assert (wrong_tag.status, _oci_error(wrong_tag)) == (404, "MANIFEST_UNKNOWN")
    stray_blob = stack.http("GET", f"/v2/{name}/blobs/sha256:{'0' * 64}")
    assert (stray_blob.status, _oci_error(stray_blob)) == (404, "BLOB_UNKNOWN")
    # A blob of another image in the same registry is not served under this token.
    other = base_images.multi.platform("linux/arm64").layer_digests[0]
    assert stack.http("GET", f"/v2/{name}/blobs/{other}").status == 404
    untokened = stack.http("GET", "/v2/library/busybox/manifests/latest")
    assert (untokened.status, _oci_error(untokened)) == (404, "NAME_UNKNOWN")
    push = stack.http("PUT", f"/v2/{name}/manifests/latest")
    assert (push.status, _oci_error(push)) == (405, "UNSUPPORTED")

    cli("revoke", token, "--server", stack.grpc_address)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        revoked = stack.http("GET", f"/v2/{name}/manifests/latest", MANIFEST_ACCEPT)
        if revoked.status == 404:
            break
        time.sleep(0.1)
    assert (revoked.status, _oci_error(revoked)) == (404, "NAME_UNKNOWN")
    assert "unknown, expired or revoked" in json.loads(revoked.body)["errors"][0]["message"]
    again = cli("inspect", token, "--server", stack.grpc_address, check=False)
    assert again.returncode == 1  # a failed request; 2 is for usage errors
    assert "NOT_FOUND" in again.stderr


def test_expired_token(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages, tools_dir: Path
) -> None:
    wave = WaveStack(tmp_path / "short", registries=[registry_route(registry)], service={"token_ttl": "2s"})
    wave.start()
    try:
        target = augment(wave, base_images.ref("latest"), tools_dir)
        name = target.split("/", 1)[1].rsplit(":", 1)[0]
        assert wave.http("GET", f"/v2/{name}/manifests/latest", MANIFEST_ACCEPT).status == 200
        time.sleep(2.5)
        expired = wave.http("GET", f"/v2/{name}/manifests/latest", MANIFEST_ACCEPT)
        assert (expired.status, _oci_error(expired)) == (404, "NAME_UNKNOWN")
    finally:
        wave.stop()


def test_proxy_mode_streams_base_blobs(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages, tools_dir: Path
) -> None:
    wave = WaveStack(tmp_path / "proxy", registries=[registry_route(registry, blobs="proxy")])
    wave.start()
    try:
        target = augment(wave, base_images.ref("latest"), tools_dir)
        name = target.split("/", 1)[1].rsplit(":", 1)[0]
        base_layer = base_images.latest.platform("linux/amd64").layer_digests[0]
        resp = wave.http("GET", f"/v2/{name}/blobs/{base_layer}")
        assert resp.status == 200
        assert components.sha256_digest(resp.body) == base_layer
        # A runtime resuming a download asks for the rest: the range goes upstream.
        part = wave.http("GET", f"/v2/{name}/blobs/{base_layer}", [("Range", "bytes=10-19")])
        assert part.status == 206
        assert part.body == resp.body[10:20]
        assert part.header("Content-Range") == f"bytes 10-19/{len(resp.body)}"
        rootfs, _ = pull_and_unpack(target, tmp_path)
        assert (rootfs / "etc" / "marker").exists()
    finally:
        wave.stop()


def _bad(stack: WaveStack, **kwargs: Any) -> str:
    """Create must fail with INVALID_ARGUMENT; answer the message."""
    with pytest.raises(grpc.RpcError) as caught:
        stack.create(**kwargs)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    details: str = error.details()
    return details


def test_bad_requests_name_the_field(stack: WaveStack, base_images: components.BaseImages) -> None:
    image = base_images.ref("latest")
    assert "container_image" in _bad(stack, image="Not A Valid//Image")
    assert "container_platform" in _bad(stack, image=image, container_platform="linux/sparc")
    missing_platform = _bad(stack, image=base_images.ref("multi"), container_platform="linux/s390x")
    assert "container_platform" in missing_platform
    assert "linux/arm64" in missing_platform
    not_base64 = pb.ContainerConfig(layers=[pb.ContainerLayer(location="data:@@not-base64@@")])
    assert "container_config.layers[0].location" in _bad(stack, image=image, container_config=not_base64)

    layer = components.images._gzip(b"not really a tar but fine for digests")
    data = "data:" + base64.b64encode(layer).decode()
    wrong_digest = pb.ContainerConfig(layers=[pb.ContainerLayer(location=data, gzip_digest="sha256:" + "1" * 64)])
    details = _bad(stack, image=image, container_config=wrong_digest)
    assert "layers[0].gzip_digest" in details
    assert "sha256:" + "1" * 64 in details
    assert components.sha256_digest(layer) in details
    wrong_size = pb.ContainerConfig(layers=[pb.ContainerLayer(location=data, gzip_size=len(layer) + 1)])
    assert "layers[0].gzip_size" in _bad(stack, image=image, container_config=wrong_size)
    wrong_tar = pb.ContainerConfig(layers=[pb.ContainerLayer(location=data, tar_digest="sha256:" + "2" * 64)])
    assert "layers[0].tar_digest" in _bad(stack, image=image, container_config=wrong_tar)
    not_gzip = pb.ContainerConfig(layers=[pb.ContainerLayer(location="data:aGVsbG8=")])
    assert "layers[0]" in _bad(stack, image=image, container_config=not_gzip)

    nowhere = _bad(stack, image=f"{base_images.registry_host}/library/nope:latest")
    assert "container_image" in nowhere
    assert "not found" in nowhere
    bad_env = pb.ContainerConfig(env=["NOEQUALS"])
    assert "container_config.env[0]" in _bad(stack, image=image, container_config=bad_env)
