"""Nextflow's multi-arch request and Apptainer's way of pulling (issue 21), against real processes.

The source is a two-platform OCI index whose arm64 entry says ``variant: v8`` and which
carries a BuildKit-style ``unknown/unknown`` attestation entry; the two Fusion layers
sit on a plain HTTP file server listed in ``[upstream].layer_hosts``. The request is
shaped exactly as nf-wave sends it; each platform is pulled with skopeo and unpacked
with umoci. Apptainer is not packaged here: its go-containerregistry request sequence
is replayed by hand and every answer checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_wave_api import nextflow_body
from tests.upstreams import StaticServer
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

ARCHES = ("amd64", "arm64")
# go-containerregistry's remote.Get/Head Accept list (schema 1 types left out: never served here).
GGCR_ACCEPT = [
    ("Accept", "application/vnd.docker.distribution.manifest.v2+json"),
    ("Accept", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ("Accept", components.OCI_MANIFEST),
    ("Accept", components.OCI_INDEX),
]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class Fusion:
    """One Fusion layer per architecture, as nf-wave names them."""

    layers: dict[str, dict[str, Any]]  # arch -> the Wave layer object


def _push_variant_index(registry: components.Registry, base: components.BaseImages) -> str:
    """``library/busybox:variants``: the multi index with ``arm64/v8`` and an attestation entry."""
    repo = "library/busybox"
    multi = base.by_tag("multi")
    entries: list[dict[str, Any]] = []
    for m in multi.manifests:
        arch = m.platform.split("/")[1]
        platform = {"architecture": arch, "os": "linux", **({"variant": "v8"} if arch == "arm64" else {})}
        entries.append({"mediaType": m.media_type, "digest": m.digest, "size": m.size, "platform": platform})
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    config_digest = components.push_blob(registry.url, repo, b"{}")
    attestation = _dumps(
        {
            "schemaVersion": 2,
            "mediaType": components.OCI_MANIFEST,
            "config": {"mediaType": components.OCI_CONFIG, "digest": config_digest, "size": 2},
            "layers": [
                {
                    "mediaType": "application/vnd.in-toto+json",
                    "digest": components.push_blob(registry.url, repo, statement),
                    "size": len(statement),
                }
            ],
        }
    )
    digest = components.put_manifest(registry.url, repo, "variants-att", attestation, components.OCI_MANIFEST)
    entries.append(
        {
            "mediaType": components.OCI_MANIFEST,
            "digest": digest,
            "size": len(attestation),
            "platform": {"architecture": "unknown", "os": "unknown"},
        }
    )
    index = _dumps({"schemaVersion": 2, "mediaType": components.OCI_INDEX, "manifests": entries})
    components.put_manifest(registry.url, repo, "variants", index, components.OCI_INDEX)
    return registry.ref(repo, "variants")


@pytest.fixture(scope="module")
def cdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StaticServer, Fusion]]:
    root = tmp_path_factory.mktemp("fusionfs")
    releases = root / "releases" / "pkg" / "2" / "4" / "2"
    releases.mkdir(parents=True)
    server = StaticServer(root, tmp_path_factory.mktemp("cdn"))
    layers = {}
    for arch in ARCHES:
        blob, diff_id = components.layer_tar_gz({f"usr/bin/fusion-{arch}": f"fusion for {arch}\n".encode()})
        (releases / f"fusion-{arch}.tar.gz").write_bytes(blob)
        layers[arch] = {
            # layer_hosts name hosts, never addresses: the file server by its name.
            "location": f"http://localhost:{server.port}/releases/pkg/2/4/2/fusion-{arch}.tar.gz",
            "gzipDigest": components.sha256_digest(blob),
            "gzipSize": len(blob),
            "tarDigest": diff_id,
            "skipHashing": None,
        }
    try:
        yield server, Fusion(layers)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry, cdn: tuple[StaticServer, Fusion]
) -> Iterator[WaveStack]:
    server, _ = cdn
    with WaveStack(
        tmp_path_factory.mktemp("nextflow"),
        registries=[registry_route(registry)],
        upstream={"layer_hosts": [f"localhost:{server.port}"]},
    ) as wave:
        yield wave.start()


@pytest.fixture(scope="module")
def target(
    stack: WaveStack,
    registry: components.Registry,
    base_images: components.BaseImages,
    cdn: tuple[StaticServer, Fusion],
) -> str:
    """The nf-wave request for ``arch 'linux/amd64,linux/arm64'`` with Fusion, and its answer."""
    _, fusion = cdn
    config = {"entrypoint": None, "cmd": None, "env": None, "workingDir": None, "layers": list(fusion.layers.values())}
    body = {
        **nextflow_body(_push_variant_index(registry, base_images), config),
        "containerPlatform": "linux/amd64,linux/arm64",
        "workflowId": "2mqP1AxVUyOeqT",
    }
    answer = stack.post_json("/container-token", body)
    assert answer.status == 200, answer.body
    again = stack.post_json("/container-token", body)
    assert again.json()["targetImage"] == answer.json()["targetImage"]
    assert again.json()["cached"] is True
    return str(answer.json()["targetImage"])


def _name_and_tag(target: str) -> tuple[str, str]:
    name, tag = target.split("/", 1)[1].rsplit(":", 1)
    return name, tag


def test_an_nf_wave_multi_arch_request_puts_each_fusion_layer_in_its_platform_only(
    stack: WaveStack, target: str, cdn: tuple[StaticServer, Fusion], tmp_path: Path
) -> None:
    _, fusion = cdn
    name, tag = _name_and_tag(target)
    index = stack.http("GET", f"/v2/{name}/manifests/{tag}", GGCR_ACCEPT)
    assert index.header("Content-Type") == components.OCI_INDEX
    entries = json.loads(index.body)["manifests"]
    assert [entry["platform"]["architecture"] for entry in entries] == list(ARCHES)
    for arch, other in (("amd64", "arm64"), ("arm64", "amd64")):
        layout = tmp_path / f"oci-{arch}"
        components.skopeo_copy_to_oci(target, layout, "latest", arch=arch)
        rootfs, _ = components.umoci_unpack(layout, "latest", tmp_path / f"bundle-{arch}")
        assert (rootfs / "usr" / "bin" / f"fusion-{arch}").read_text() == f"fusion for {arch}\n"
        assert not (rootfs / "usr" / "bin" / f"fusion-{other}").exists()
        assert (rootfs / "etc" / "marker").exists()
        config = components.read_oci_image_config(layout, "latest", platform=f"linux/{arch}")
        assert config["rootfs"]["diff_ids"][-1] == fusion.layers[arch]["tarDigest"]
        assert fusion.layers[other]["tarDigest"] not in config["rootfs"]["diff_ids"]


def test_over_grpc_only_the_explicit_layer_platform_assigns_a_layer(
    stack: WaveStack, registry: components.Registry, cdn: tuple[StaticServer, Fusion], target: str
) -> None:
    _, fusion = cdn  # ``target`` pushed the source index; both layers go to both images here
    layers = [
        pb.ContainerLayer(
            location=layer["location"],
            gzip_digest=layer["gzipDigest"],
            gzip_size=layer["gzipSize"],
            tar_digest=layer["tarDigest"],
        )
        for layer in fusion.layers.values()
    ]
    created = stack.create(
        registry.ref("library/busybox", "variants"),
        container_platform="linux/amd64,linux/arm64",
        container_config=pb.ContainerConfig(layers=layers),
    )
    name, tag = _name_and_tag(created.target_image)
    index = json.loads(stack.http("GET", f"/v2/{name}/manifests/{tag}", GGCR_ACCEPT).body)
    for entry in index["manifests"]:
        manifest = json.loads(stack.http("GET", f"/v2/{name}/manifests/{entry['digest']}", GGCR_ACCEPT).body)
        digests = [layer["digest"] for layer in manifest["layers"]]
        assert digests[-2:] == [layer["gzipDigest"] for layer in fusion.layers.values()]


def _follow(url: str, headers: Sequence[tuple[str, str]] = ()) -> components.HttpResponse:
    """A GET that follows redirects, as a runtime does for base and http(s) layers."""
    for _ in range(5):
        resp = components.http_request("GET", url, headers=headers)
        location = resp.header("Location")
        if resp.status not in (301, 302, 303, 307, 308) or location is None:
            return resp
        url = location
    raise AssertionError(f"too many redirects from {url}")


def _ggcr_select(index: dict[str, Any], arch: str, variant: str) -> dict[str, Any]:
    """go-containerregistry's platform choice as Apptainer makes it: unknown/unknown entries
    skipped, os and architecture equal, the variant equal when both say one (arm64's v8
    is arm64 itself, as containerd's normalisation has it)."""

    def normal(entry_arch: str, entry_variant: str) -> str:
        return "" if entry_arch == "arm64" and entry_variant == "v8" else entry_variant

    for entry in index["manifests"]:
        platform = entry.get("platform") or {}
        if platform.get("os") == "unknown" or platform.get("architecture") == "unknown":
            continue
        if (platform.get("os"), platform.get("architecture")) != ("linux", arch):
            continue
        given, wanted = normal(arch, platform.get("variant", "")), normal(arch, variant)
        if not given or not wanted or given == wanted:
            chosen: dict[str, Any] = entry
            return chosen
    raise AssertionError(f"no linux/{arch} entry in {index}")


def test_apptainers_go_containerregistry_sequence(stack: WaveStack, target: str) -> None:
    name, tag = _name_and_tag(target)
    base = f"{stack.gateway_url}/v2/{name}"
    assert components.http_request("GET", f"{stack.gateway_url}/v2/").status == 200

    # HEAD for the cache key: the digest, type and length of what GET answers.
    head = components.http_request("HEAD", f"{base}/manifests/{tag}", headers=GGCR_ACCEPT)
    assert head.status == 200
    assert head.body == b""
    digest = head.header("Docker-Content-Digest")
    got = components.http_request("GET", f"{base}/manifests/{tag}", headers=GGCR_ACCEPT)
    assert got.status == 200
    assert components.sha256_digest(got.body) == digest
    assert got.header("Content-Type") == head.header("Content-Type") == components.OCI_INDEX
    assert int(head.header("Content-Length") or -1) == len(got.body)
    index = json.loads(got.body)

    # Each host platform's manifest by digest, its config and every layer, all verified.
    for arch, variant in (("amd64", ""), ("arm64", "v8")):
        entry = _ggcr_select(index, arch, variant)
        manifest = components.http_request("GET", f"{base}/manifests/{entry['digest']}", headers=GGCR_ACCEPT)
        assert manifest.status == 200
        assert components.sha256_digest(manifest.body) == entry["digest"]
        assert manifest.header("Docker-Content-Digest") == entry["digest"]
        assert manifest.header("Content-Type") == entry["mediaType"]
        image = json.loads(manifest.body)
        config = _follow(f"{base}/blobs/{image['config']['digest']}")
        assert components.sha256_digest(config.body) == image["config"]["digest"]
        assert json.loads(config.body)["architecture"] == arch
        for layer in image["layers"]:
            blob = _follow(f"{base}/blobs/{layer['digest']}")
            assert blob.status == 200
            assert components.sha256_digest(blob.body) == layer["digest"]
            assert len(blob.body) == layer["size"]
        head_by_digest = components.http_request("HEAD", f"{base}/manifests/{entry['digest']}", headers=GGCR_ACCEPT)
        assert head_by_digest.header("Docker-Content-Digest") == entry["digest"]
    assert all(m["platform"]["os"] != "unknown" for m in index["manifests"]), "attestations are never served"

    # Older Singularity accepts only the OCI index: the same index, byte for byte.
    only_index = components.http_request("GET", f"{base}/manifests/{tag}", headers=[("Accept", components.OCI_INDEX)])
    assert only_index.status == 200
    assert only_index.header("Content-Type") == components.OCI_INDEX
    assert only_index.body == got.body

    tags = components.http_request("GET", f"{base}/tags/list")
    assert tags.status == 200
    assert tags.json() == {"name": name, "tags": [tag]}
