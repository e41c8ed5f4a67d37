"""The rewrite, on bytes, for layer formats: a zstd layer is listed with OCI's zstd type,
a Docker base that gets one (or an included layer's annotations) is served in the OCI
family, included layers keep every annotation, and an OCI manifest names its base."""

from __future__ import annotations

import json
from typing import Any

from tests.test_rewrite import CREATED, LAYER, base_config, dumps, manifest_for
from wave_grpc.image.compression import Compression
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import Descriptor, MediaType
from wave_grpc.image.platform import Platform
from wave_grpc.image.rewrite import (
    BASE_DIGEST_ANNOTATION,
    BASE_NAME_ANNOTATION,
    Augmentation,
    Blob,
    IncludedLayers,
    InjectedLayer,
    UpstreamImage,
    augment,
)

ZSTD_LAYER = InjectedLayer(Digest("sha256", "f" * 64), 77, Digest("sha256", "9" * 64), Compression.ZSTD)
BASE = {"base_name": "docker.io/library/alpine:3.19", "base_digest": "sha256:" + "1" * 64}
CHUNKED = {"io.github.containers.zstd-chunked.manifest-position": "1:2:3:4"}


def augmentation(**kwargs: Any) -> Augmentation:
    return Augmentation(platform=Platform.parse("linux/amd64"), created=CREATED, **{"layers": (LAYER,), **kwargs})


def _included(media_type: str, annotations: dict[str, str] | None = None) -> IncludedLayers:
    document: dict[str, Any] = {"mediaType": media_type, "digest": "sha256:" + "8" * 64, "size": 5}
    if annotations:
        document["annotations"] = annotations
    return IncludedLayers("registry.example/tools:1", (Descriptor.parse(document, "layer"),), ("sha256:" + "7" * 64,))


def _augment(media_type: MediaType, **kwargs: Any) -> tuple[dict[str, Any], Blob]:
    config = base_config()
    result = augment(UpstreamImage(manifest_for(config, media_type), config), augmentation(**kwargs))
    return json.loads(result.manifest.data), result.manifest


def test_a_zstd_layer_on_an_oci_base_has_the_oci_zstd_type_and_the_base_is_named() -> None:
    manifest, blob = _augment(MediaType.OCI_MANIFEST, layers=(ZSTD_LAYER,), **BASE)
    assert blob.media_type == MediaType.OCI_MANIFEST
    assert manifest["layers"][-1] == {
        "mediaType": MediaType.OCI_LAYER_ZSTD,
        "digest": str(ZSTD_LAYER.digest),
        "size": 77,
    }
    assert manifest["annotations"] == {
        "keep": "me",
        BASE_NAME_ANNOTATION: BASE["base_name"],
        BASE_DIGEST_ANNOTATION: BASE["base_digest"],
    }


def test_a_zstd_layer_on_a_docker_base_is_served_in_the_oci_family() -> None:
    manifest, blob = _augment(MediaType.DOCKER_MANIFEST, layers=(ZSTD_LAYER,), **BASE)
    assert blob.media_type == MediaType.OCI_MANIFEST
    assert manifest["mediaType"] == MediaType.OCI_MANIFEST
    assert manifest["config"]["mediaType"] == MediaType.OCI_CONFIG
    assert [layer["mediaType"] for layer in manifest["layers"]] == [MediaType.OCI_LAYER_GZIP, MediaType.OCI_LAYER_ZSTD]
    assert manifest["annotations"][BASE_NAME_ANNOTATION] == BASE["base_name"]
    # The same request, the same bytes.
    assert _augment(MediaType.DOCKER_MANIFEST, layers=(ZSTD_LAYER,), **BASE)[1] == blob


def test_a_gzip_only_docker_image_stays_docker_without_annotations() -> None:
    manifest, blob = _augment(MediaType.DOCKER_MANIFEST, **BASE)
    assert blob.media_type == MediaType.DOCKER_MANIFEST
    assert manifest["config"]["mediaType"] == MediaType.DOCKER_CONFIG
    assert BASE_NAME_ANNOTATION not in manifest.get("annotations", {})
    gzip_docker = _augment(MediaType.DOCKER_MANIFEST, includes=(_included(MediaType.OCI_LAYER_GZIP),))[0]
    assert gzip_docker["layers"][1]["mediaType"] == MediaType.DOCKER_LAYER_GZIP


def test_included_layers_keep_their_annotations_and_move_a_docker_base_to_oci() -> None:
    included = _included(MediaType.OCI_LAYER_ZSTD, CHUNKED)
    for base in (MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST):
        manifest, blob = _augment(base, includes=(included,))
        assert blob.media_type == MediaType.OCI_MANIFEST
        assert manifest["layers"][1] == {**included.layers[0].document}
    annotated_gzip = _included(MediaType.OCI_LAYER_GZIP, {"containerd.io/snapshot/stargz/toc.digest": "sha256:00"})
    manifest, blob = _augment(MediaType.DOCKER_MANIFEST, includes=(annotated_gzip,))
    assert blob.media_type == MediaType.OCI_MANIFEST
    assert manifest["layers"][1]["annotations"] == annotated_gzip.layers[0].document["annotations"]


def test_a_docker_list_becomes_an_oci_index_when_a_platform_needs_oci() -> None:
    config = base_config()
    manifest = manifest_for(config, MediaType.DOCKER_MANIFEST)
    entry = {"mediaType": MediaType.DOCKER_MANIFEST, "digest": str(manifest.digest), "size": len(manifest.data)}
    index_doc = {
        "schemaVersion": 2,
        "mediaType": MediaType.DOCKER_LIST,
        "manifests": [{**entry, "platform": {"os": "linux", "architecture": "amd64"}}],
    }
    index = Blob.of(dumps(index_doc), str(MediaType.DOCKER_LIST))
    result = augment(UpstreamImage(manifest, config, index), augmentation(layers=(ZSTD_LAYER,)))
    assert result.index is not None
    served = json.loads(result.index.data)
    assert result.index.media_type == served["mediaType"] == MediaType.OCI_INDEX
    assert served["manifests"][0]["mediaType"] == MediaType.OCI_MANIFEST
    assert served["manifests"][0]["digest"] == str(result.manifest.digest)
