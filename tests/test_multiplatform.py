"""One token for every platform, per-platform layers, and images composed of images.

The source is a real two-platform OCI index in ``docker-registry`` (and one with a
BuildKit-style attestation entry); the pulls are skopeo (per arch and ``--all``),
podman and containerd, unpacked with umoci.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, await_done, registry_route
from tests.test_e2e_augment import cli
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

INDEX_ACCEPT = [("Accept", components.OCI_INDEX), ("Accept", components.OCI_MANIFEST)]
BOTH = "linux/amd64,linux/arm64"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Pushed:
    """The extra images of this module, in the session registry."""

    attested: str  # library/busybox:attested, the multi index plus an attestation entry
    include: str  # tools/extra:multi, one layer per platform
    include_amd64_only: str  # tools/extra:amd64
    include_layers: dict[str, str]  # arch -> the include's layer digest


def _push_include(registry: components.Registry) -> tuple[str, str, dict[str, str]]:
    repo = "tools/extra"
    entries, layers = [], {}
    for arch in ("amd64", "arm64"):
        blob, diff_id = components.layer_tar_gz(
            {"opt/included/common.txt": b"included\n", f"opt/included/{arch}.txt": arch.encode()}
        )
        layers[arch] = components.push_blob(registry.url, repo, blob)
        config = _dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Env": ["INCLUDED=1"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        )
        config_digest = components.push_blob(registry.url, repo, config)
        manifest = _dumps(
            {
                "schemaVersion": 2,
                "mediaType": components.OCI_MANIFEST,
                "config": {"mediaType": components.OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [{"mediaType": components.OCI_LAYER_GZIP, "digest": layers[arch], "size": len(blob)}],
            }
        )
        digest = components.put_manifest(registry.url, repo, arch, manifest, components.OCI_MANIFEST)
        entries.append(
            {
                "mediaType": components.OCI_MANIFEST,
                "digest": digest,
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = _dumps({"schemaVersion": 2, "mediaType": components.OCI_INDEX, "manifests": entries})
    components.put_manifest(registry.url, repo, "multi", index, components.OCI_INDEX)
    return registry.ref(repo, "multi"), registry.ref(repo, "amd64"), layers


def _push_attested(registry: components.Registry, base: components.BaseImages) -> str:
    repo = "library/busybox"
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    layer = components.push_blob(registry.url, repo, statement)
    config = b"{}"
    config_digest = components.push_blob(registry.url, repo, config)
    attestation = _dumps(
        {
            "schemaVersion": 2,
            "mediaType": components.OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
            "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": layer, "size": len(statement)}],
        }
    )
    attestation_digest = components.put_manifest(
        registry.url, repo, components.sha256_digest(b"x")[7:19], attestation, components.OCI_MANIFEST
    )
    multi = base.by_tag("multi")
    entries = [
        {
            "mediaType": m.media_type,
            "digest": m.digest,
            "size": m.size,
            "platform": {"architecture": m.platform.split("/")[1], "os": "linux"},
        }
        for m in multi.manifests
    ]
    entries.append(
        {
            "mediaType": components.OCI_MANIFEST,
            "digest": attestation_digest,
            "size": len(attestation),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": multi.platform("linux/amd64").digest,
            },
        }
    )
    index = _dumps({"schemaVersion": 2, "mediaType": components.OCI_INDEX, "manifests": entries})
    components.put_manifest(registry.url, repo, "attested", index, components.OCI_INDEX)
    return registry.ref(repo, "attested")


@pytest.fixture(scope="module")
def pushed(registry: components.Registry, base_images: components.BaseImages) -> Pushed:
    include, include_amd64, layers = _push_include(registry)
    return Pushed(_push_attested(registry, base_images), include, include_amd64, layers)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    wave = WaveStack(
        tmp_path_factory.mktemp("multiplatform"),
        registries=[registry_route(registry, push_repositories=["frozen/*"])],
    )
    with wave.start():
        yield wave


@pytest.fixture(scope="module")
def layer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("platform-layers")
    dirs = {}
    for name, files in {
        "common": {"opt/tools/common.sh": "#!/bin/sh\necho common\n"},
        "amd64": {"opt/tools/amd64.bin": "amd64 tool\n"},
        "arm64": {"opt/tools/arm64.bin": "arm64 tool\n"},
    }.items():
        for path, text in files.items():
            target = root / name / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        dirs[name] = root / name
    return dirs


def augment_both(stack: WaveStack, image: str, dirs: dict[str, Path], *extra: str) -> str:
    proc = cli(
        "augment",
        image,
        "--server",
        stack.grpc_address,
        "--platform",
        BOTH,
        "--layer",
        str(dirs["common"]),
        "--platform-layer",
        "linux/amd64",
        str(dirs["amd64"]),
        "--platform-layer",
        "linux/arm64",
        str(dirs["arm64"]),
        *extra,
    )
    return proc.stdout.strip()


def served(stack: WaveStack, target: str, reference: str | None = None) -> components.HttpResponse:
    name, tag = target.split("/", 1)[1].rsplit(":", 1)
    resp = stack.http("GET", f"/v2/{name}/manifests/{reference or tag}", INDEX_ACCEPT)
    assert resp.status == 200, resp.body
    return resp


def unpack(target: str, workdir: Path, arch: str) -> tuple[Path, dict[str, Any]]:
    layout = workdir / f"oci-{arch}"
    components.skopeo_copy_to_oci(target, layout, "latest", arch=arch)
    rootfs, _ = components.umoci_unpack(layout, "latest", workdir / f"bundle-{arch}")
    return rootfs, components.read_oci_image_config(layout, "latest", platform=f"linux/{arch}")


def test_one_token_serves_an_index_of_every_platform_with_its_own_layers(
    stack: WaveStack, base_images: components.BaseImages, layer_dirs: dict[str, Path], tmp_path: Path
) -> None:
    target = augment_both(stack, base_images.ref("multi"), layer_dirs, "--config-env", "FOO=bar")
    resp = served(stack, target)
    assert resp.header("Content-Type") == components.OCI_INDEX
    index = json.loads(resp.body)
    assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64", "arm64"]
    for entry in index["manifests"]:
        by_digest = served(stack, target, entry["digest"])
        assert components.sha256_digest(by_digest.body) == entry["digest"]

    markers = {"amd64": "hello\n", "arm64": "arm64\n"}
    for arch, other in (("amd64", "arm64"), ("arm64", "amd64")):
        rootfs, config = unpack(target, tmp_path, arch)
        assert (rootfs / "etc" / "marker").read_text() == markers[arch]
        assert (rootfs / "opt" / "tools" / "common.sh").exists()
        assert (rootfs / "opt" / "tools" / f"{arch}.bin").read_text() == f"{arch} tool\n"
        assert not (rootfs / "opt" / "tools" / f"{other}.bin").exists()
        assert config["architecture"] == arch
        assert "FOO=bar" in config["config"]["Env"]
        upstream = base_images.by_tag("multi").platform(f"linux/{arch}")
        assert config["rootfs"]["diff_ids"][: len(upstream.diff_ids)] == list(upstream.diff_ids)
        assert len(config["rootfs"]["diff_ids"]) == len(upstream.diff_ids) + 2  # common + its own

    # Every manifest and blob, for every platform, verified by skopeo.
    all_layout = tmp_path / "all"
    components.run_tool(
        [
            components.require_tool("skopeo"),
            "--insecure-policy",
            "copy",
            "--quiet",
            "--all",
            "--src-tls-verify=false",
            f"docker://{target}",
            f"oci:{all_layout}:latest",
        ]
    )
    assert (all_layout / "index.json").exists()


def test_podman_and_containerd_pull_each_platform(
    stack: WaveStack,
    base_images: components.BaseImages,
    layer_dirs: dict[str, Path],
    tmp_path: Path,
    containerd: components.Containerd,
) -> None:
    target = augment_both(stack, base_images.ref("multi"), layer_dirs)
    root = tmp_path / "podman"
    try:
        for arch in ("amd64", "arm64"):
            components.podman_pull(target, root, arch=arch)
            assert components.podman_inspect(target, root)["Architecture"] == arch
    finally:
        components.podman_cleanup(root)
    containerd.pull(target, platform="linux/arm64")
    containerd.pull(target)
    assert target in containerd.image_list()


def test_docker_pulls_each_platform_and_runs_the_injected_script(
    stack: WaveStack,
    base_images: components.BaseImages,
    layer_dirs: dict[str, Path],
    docker_daemon: components.DockerDaemon,
) -> None:
    target = augment_both(stack, base_images.ref("multi"), layer_dirs)
    docker_daemon.pull(target, platform="linux/arm64")
    assert docker_daemon.inspect(target)["Architecture"] == "arm64"
    docker_daemon.pull(target, platform="linux/amd64")
    assert docker_daemon.inspect(target)["Architecture"] == "amd64"
    # The entrypoint is the base's /bin/sh: the injected script runs under it.
    assert docker_daemon.run(target, "/opt/tools/common.sh", platform="linux/amd64") == "common\n"


def test_the_index_by_digest_is_the_same_after_a_restart(
    stack: WaveStack, base_images: components.BaseImages, layer_dirs: dict[str, Path]
) -> None:
    target = augment_both(stack, base_images.ref("multi"), layer_dirs)
    before = served(stack, target)
    digest = before.header("Docker-Content-Digest")
    assert digest is not None
    stack.restart()
    after = served(stack, target, digest)
    assert after.body == before.body


def test_attestation_entries_are_never_chosen_nor_served(
    stack: WaveStack, pushed: Pushed, layer_dirs: dict[str, Path]
) -> None:
    target = augment_both(stack, pushed.attested, layer_dirs)
    index = json.loads(served(stack, target).body)
    assert [m["platform"]["os"] for m in index["manifests"]] == ["linux", "linux"]
    assert all("annotations" not in m for m in index["manifests"])
    for platform, said in (
        ("unknown/unknown", "unknown architecture"),
        ("linux/s390x", "it has: linux/amd64, linux/arm64"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stack.create(pushed.attested, container_platform=platform)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert said in (caught.value.details() or "")


def test_included_images_add_their_layers_between_the_base_and_the_injected(
    stack: WaveStack, base_images: components.BaseImages, pushed: Pushed, layer_dirs: dict[str, Path], tmp_path: Path
) -> None:
    target = augment_both(stack, base_images.ref("multi"), layer_dirs, "--include", pushed.include)
    for arch in ("amd64", "arm64"):
        rootfs, config = unpack(target, tmp_path, arch)
        assert (rootfs / "opt" / "included" / "common.txt").read_text() == "included\n"
        assert (rootfs / "opt" / "included" / f"{arch}.txt").read_text() == arch
        assert (rootfs / "opt" / "tools" / f"{arch}.bin").exists()
        assert "INCLUDED=1" not in config["config"]["Env"]  # only layers are taken, as in Wave
        entry = next(
            m for m in json.loads(served(stack, target).body)["manifests"] if m["platform"]["architecture"] == arch
        )
        manifest = json.loads(served(stack, target, entry["digest"]).body)
        layers = [layer["digest"] for layer in manifest["layers"]]
        upstream = base_images.by_tag("multi").platform(f"linux/{arch}")
        assert layers[: len(upstream.layer_digests)] == list(upstream.layer_digests)
        assert layers[len(upstream.layer_digests)] == pushed.include_layers[arch]
        assert len(layers) == len(upstream.layer_digests) + 3


def test_what_cannot_be_served_is_refused_listing_what_the_image_has(
    stack: WaveStack, base_images: components.BaseImages, pushed: Pushed
) -> None:
    def refused(image: str, **kwargs: Any) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            stack.create(image, **kwargs)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        return caught.value.details() or ""

    text = refused(base_images.ref("multi"), container_platform="linux/amd64,linux/s390x")
    assert text.startswith("container_platform: ")
    assert "it has: linux/amd64, linux/arm64" in text
    assert "cannot serve 2 platforms" in refused(base_images.ref("latest"), container_platform=BOTH)
    assert "names a platform twice" in refused(base_images.ref("multi"), container_platform="amd64,linux/amd64")
    layer = pb.ContainerLayer(location="wave-layer-store:sha256:" + "0" * 64, platform="linux/arm64")
    text = refused(
        base_images.ref("multi"), container_platform="linux/amd64", container_config=pb.ContainerConfig(layers=[layer])
    )
    assert text.startswith("container_config.layers[0].platform: linux/arm64 is not a requested platform")
    text = refused(base_images.ref("multi"), container_platform=BOTH, container_includes=[pushed.include_amd64_only])
    assert text.startswith("container_includes[0]: ")
    assert "linux/amd64 only" in text
    text = refused(base_images.ref("multi"), container_includes=[base_images.ref("nosuchtag")])
    assert text.startswith("container_includes[0]: ")
    assert "at most 10" in refused(base_images.ref("multi"), container_includes=[pushed.include] * 11)


def test_a_multi_platform_freeze_pushes_every_manifest_then_the_index(
    stack: WaveStack, registry: components.Registry, base_images: components.BaseImages, tmp_path: Path
) -> None:
    with stack.stub() as stub:
        response = stub.CreateContainer(
            pb.CreateContainerRequest(
                container_image=base_images.ref("multi"),
                container_platform=BOTH,
                container_config=pb.ContainerConfig(env=["FROZEN=yes"]),
                freeze=True,
                build_repository=f"{registry.host}/frozen/multi",
            ),
            timeout=60,
        )
    status = await_done(stack, response.request_id)
    assert status.succeeded, status.reason
    raw = json.loads(components.skopeo_inspect(response.target_image, raw=True))
    assert raw["mediaType"] == components.OCI_INDEX
    assert [m["platform"]["architecture"] for m in raw["manifests"]] == ["amd64", "arm64"]
    assert (
        components.sha256_digest(components.skopeo_inspect(response.target_image, raw=True)) == response.target_digest
    )
    for arch in ("amd64", "arm64"):
        _, config = unpack(response.target_image, tmp_path, arch)
        assert "FROZEN=yes" in config["config"]["Env"]


def test_the_wave_rest_api_takes_platform_lists_includes_and_platform_layers(
    stack: WaveStack, base_images: components.BaseImages, pushed: Pushed, tmp_path: Path
) -> None:
    blob, diff_id = components.layer_tar_gz({"opt/rest/arm64.txt": b"rest\n"}, mode=0o644)

    body = {
        "containerImage": base_images.ref("multi"),
        "containerPlatform": ["linux/amd64", "linux/arm64"],
        "containerIncludes": [pushed.include],
        "containerConfig": {
            "layers": [
                {
                    "location": "data:" + base64.b64encode(blob).decode(),
                    "gzipDigest": components.sha256_digest(blob),
                    "gzipSize": len(blob),
                    "tarDigest": diff_id,
                    "platform": "linux/arm64",
                }
            ]
        },
    }
    resp = stack.post_json("/v1alpha2/container", body)
    assert resp.status == 200, resp.body
    target = resp.json()["targetImage"]
    rootfs, _ = unpack(target, tmp_path, "arm64")
    assert (rootfs / "opt" / "rest" / "arm64.txt").read_text() == "rest\n"
    assert (rootfs / "opt" / "included" / "arm64.txt").exists()
    rootfs, _ = unpack(target, tmp_path, "amd64")
    assert not (rootfs / "opt" / "rest").exists()


def test_wave_inspect_answers_the_manifest_and_config_a_creation_would_pin(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    def inspect(body: dict[str, Any]) -> components.HttpResponse:
        return stack.post_json("/v1alpha1/inspect", body)

    multi = base_images.by_tag("multi")
    resp = inspect({"containerImage": base_images.ref("multi"), "containerPlatform": "linux/arm64"})
    assert resp.status == 200, resp.body
    container = resp.json()["container"]
    assert container["digest"] == multi.digest
    assert container["imageName"] == "library/busybox"
    assert container["reference"] == "multi"
    assert (container["v2"], container["oci"], container["v1"]) == (True, True, False)
    assert container["config"]["architecture"] == "arm64"
    assert container["config"]["config"]["entrypoint"] == ["/bin/sh"]
    layers = [layer["digest"] for layer in container["manifest"]["layers"]]
    assert layers == list(multi.platform("linux/arm64").layer_digests)
    missing = inspect({"containerImage": base_images.ref("nosuchtag")})
    assert missing.status == 400
    assert missing.json()["message"].startswith("containerImage: ")
