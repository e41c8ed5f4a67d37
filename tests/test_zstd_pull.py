"""zstd layers end to end: injected on an OCI and on a Docker v2s2 base (served as OCI),
pulled by skopeo, podman (and run) and containerd; a zstd bomb and non-tar refused as
gzip ones are; an included image's zstd layers keep their type and annotations."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import zstandard

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_e2e_augment import MANIFEST_ACCEPT, cli, served_manifest
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

ZSTD_TYPE = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHUNKED = "io.github.containers.zstd-chunked.manifest-position"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    with WaveStack(tmp_path_factory.mktemp("zstd"), registries=[registry_route(registry)]).start() as wave:
        yield wave


@pytest.fixture(scope="module")
def tools_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zstd-tools")
    script = root / "usr" / "local" / "bin" / "hello.sh"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\necho hello from a zstd layer\n")
    script.chmod(0o755)
    return root


def _augment(stack: WaveStack, image: str, *extra: str) -> str:
    proc = cli("augment", image, "--server", stack.grpc_address, *extra)
    return proc.stdout.strip()


def _manifest(stack: WaveStack, target: str) -> tuple[dict[str, Any], str]:
    resp = served_manifest(stack, target, MANIFEST_ACCEPT)
    document: dict[str, Any] = json.loads(resp.body)
    return document, resp.header("Content-Type") or ""


@pytest.mark.parametrize("tag", ["latest", "v2s2"])
def test_a_zstd_layer_is_pulled_by_skopeo_podman_and_containerd(
    stack: WaveStack,
    base_images: components.BaseImages,
    tools_dir: Path,
    tmp_path: Path,
    containerd: components.Containerd,
    tag: str,
) -> None:
    target = _augment(stack, base_images.ref(tag), "--layer", str(tools_dir), "--compress", "zstd")
    manifest, content_type = _manifest(stack, target)
    # The v2s2 base is served in the OCI family: Docker's has no zstd layer type.
    assert content_type.startswith(OCI_MANIFEST)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert manifest["layers"][-1]["mediaType"] == ZSTD_TYPE
    assert manifest["annotations"]["org.opencontainers.image.base.name"] == base_images.ref(tag)
    print(f"served manifest of {target}:\n{json.dumps(manifest, indent=2)}")
    # The same request, the same bytes.
    assert _manifest(stack, target)[0] == manifest

    components.skopeo_copy_to_oci(target, tmp_path / "oci")
    root = tmp_path / "podman"
    try:
        components.podman_pull(target, root)
        assert components.podman_run(target, root, "/usr/local/bin/hello.sh").strip() == "hello from a zstd layer"
    finally:
        components.podman_cleanup(root)
    # ctr checks each layer's uncompressed digest against the config's diff_ids on unpack.
    containerd.pull(target)


def test_a_tar_zst_file_goes_inline_and_through_upload(
    stack: WaveStack, base_images: components.BaseImages, tools_dir: Path, tmp_path: Path
) -> None:
    packed = tmp_path / "tools.tar.zst"
    components.run_tool(["tar", "-C", str(tools_dir), "--zstd", "-cf", str(packed), "."])
    for inline_limit in ("1048576", "0"):
        target = _augment(
            stack,
            base_images.ref("v2s2"),
            "--layer",
            str(packed),
            "--inline-limit",
            inline_limit,
            "--platform",
            "amd64",
        )
        manifest, _ = _manifest(stack, target)
        assert manifest["layers"][-1]["mediaType"] == ZSTD_TYPE
        components.skopeo_copy_to_oci(target, tmp_path / f"oci-{inline_limit}")


def _refusal(stack: WaveStack, data: bytes, image: str) -> str:
    layer = pb.ContainerLayer(location="data:" + base64.b64encode(data).decode())
    request = pb.CreateContainerRequest(container_image=image, container_config=pb.ContainerConfig(layers=[layer]))
    with stack.stub() as stub, pytest.raises(grpc.RpcError) as info:
        stub.CreateContainer(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(info.value.details())


def test_a_zstd_bomb_and_a_zstd_non_tar_are_refused_as_gzip_ones_are(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 << 20))
    assert "[layers].max_inflation_ratio" in _refusal(stack, bomb, base_images.ref())
    text = zstandard.ZstdCompressor().compress(b"plain text that is not a tar archive\n" * 50)
    assert "is not a tar archive" in _refusal(stack, text, base_images.ref())
    assert "truncated" in _refusal(stack, text[:-5], base_images.ref())


def _push_zstd_image_with_annotations(registry: components.Registry, base: str, workdir: Path) -> str:
    """An image of two zstd layers of content no other test has (skopeo's blob-info cache would
    otherwise swap in a gzip copy of known content on push), annotated as zstd:chunked annotates
    its layers, written as an OCI layout by hand and pushed with skopeo as ``zstdinc:1``."""
    del base  # the included image stands alone
    layout = workdir / "zstd-layout"
    shutil.rmtree(layout, ignore_errors=True)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> str:
        digest = components.sha256_digest(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    layers, diff_ids = [], []
    for i in range(2):
        gz, diff_id = components.layer_tar_gz({f"opt/included/{i}.txt": os.urandom(16).hex().encode()}, mode=0o644)
        data = zstandard.ZstdCompressor().compress(gzip.decompress(gz))
        layers.append(
            {"mediaType": ZSTD_TYPE, "digest": blob(data), "size": len(data), "annotations": {CHUNKED: f"{i}:1:2:3"}}
        )
        diff_ids.append(diff_id)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blob(config),
                "size": len(config),
            },
            "layers": layers,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": blob(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    skopeo = components.require_tool("skopeo")
    creds = ["--dest-creds", registry.creds_arg] if registry.creds_arg else []
    ref = f"{registry.host}/zstdinc:1"
    components.run_tool(
        [
            skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            *creds,
            f"oci:{layout}:1",
            f"docker://{ref}",
        ]
    )
    return ref


def test_an_included_zstd_image_keeps_its_layer_types_and_annotations(
    stack: WaveStack,
    base_images: components.BaseImages,
    registry: components.Registry,
    tools_dir: Path,
    tmp_path: Path,
) -> None:
    included = _push_zstd_image_with_annotations(registry, base_images.ref("latest"), tmp_path)
    target = _augment(stack, base_images.ref("v2s2"), "--include", included, "--layer", str(tools_dir))
    manifest, _ = _manifest(stack, target)
    assert manifest["mediaType"] == OCI_MANIFEST
    base_count = len(base_images.v2s2.platform("linux/amd64").diff_ids)
    included_layers = manifest["layers"][base_count:-1]
    assert included_layers
    assert [layer["mediaType"] for layer in included_layers] == [ZSTD_TYPE] * len(included_layers)
    assert [layer["annotations"][CHUNKED] for layer in included_layers] == [
        f"{i}:1:2:3" for i in range(len(included_layers))
    ]
    assert manifest["layers"][-1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    root = tmp_path / "podman"
    try:
        components.podman_pull(target, root)
        assert components.podman_run(target, root, "/usr/local/bin/hello.sh").strip() == "hello from a zstd layer"
    finally:
        components.podman_cleanup(root)
