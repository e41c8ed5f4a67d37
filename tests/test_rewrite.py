"""The manifest and config rewrite, tested on bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wave_grpc.errors import WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.manifest import MediaType
from wave_grpc.image.platform import Platform
from wave_grpc.image.rewrite import Augmentation, Blob, InjectedLayer, UpstreamImage, augment, merge_env

CREATED = "2026-11-27T04:00:00Z"


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def base_config(**runtime: Any) -> bytes:
    return dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin", "LANG=C"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "true"], **runtime},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]},
            "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "base"}],
        }
    )


def manifest_for(config: bytes, media_type: MediaType = MediaType.OCI_MANIFEST) -> Blob:
    config_type = MediaType.DOCKER_CONFIG if media_type.is_docker else MediaType.OCI_CONFIG
    layer_type = MediaType.DOCKER_LAYER_GZIP if media_type.is_docker else MediaType.OCI_LAYER_GZIP
    doc = {
        "schemaVersion": 2,
        "mediaType": str(media_type),
        "config": {"mediaType": str(config_type), "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": str(layer_type), "digest": "sha256:" + "b" * 64, "size": 10}],
        "annotations": {"keep": "me"},
    }
    return Blob.of(dumps(doc), str(media_type))


LAYER = InjectedLayer(Digest("sha256", "c" * 64), 123, Digest("sha256", "d" * 64))


def augmentation(**kwargs: Any) -> Augmentation:
    return Augmentation(layers=(LAYER,), platform=Platform.parse("linux/amd64"), created=CREATED, **kwargs)


def test_appends_layer_and_keeps_base_descriptors() -> None:
    config = base_config()
    result = augment(UpstreamImage(manifest_for(config), config), augmentation())
    manifest = json.loads(result.manifest.data)
    assert manifest["layers"][0]["digest"] == "sha256:" + "b" * 64
    assert manifest["layers"][1] == {
        "mediaType": str(MediaType.OCI_LAYER_GZIP),
        "digest": str(LAYER.digest),
        "size": 123,
    }
    assert manifest["annotations"] == {"keep": "me"}
    assert manifest["config"]["digest"] == str(result.config.digest)
    assert manifest["config"]["size"] == len(result.config.data)
    new_config = json.loads(result.config.data)
    assert new_config["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64, str(LAYER.tar_digest)]
    assert new_config["history"][-1]["created"] == CREATED
    assert len(new_config["history"]) == 2
    assert result.base_layers == frozenset({Digest("sha256", "b" * 64)})
    assert result.index is None


def test_docker_manifest_gets_docker_layer_type() -> None:
    config = base_config()
    result = augment(UpstreamImage(manifest_for(config, MediaType.DOCKER_MANIFEST), config), augmentation())
    manifest = json.loads(result.manifest.data)
    assert manifest["layers"][-1]["mediaType"] == str(MediaType.DOCKER_LAYER_GZIP)
    assert result.manifest.media_type == str(MediaType.DOCKER_MANIFEST)


def test_config_overrides() -> None:
    config = base_config()
    result = augment(
        UpstreamImage(manifest_for(config), config),
        augmentation(entrypoint=("/wrap",), cmd=("run",), env=("LANG=en", "FOO=bar"), working_dir="/w"),
    )
    runtime = json.loads(result.config.data)["config"]
    assert runtime["Entrypoint"] == ["/wrap"]
    assert runtime["Cmd"] == ["run"]
    assert runtime["WorkingDir"] == "/w"
    assert runtime["Env"] == ["PATH=/bin", "LANG=en", "WAVE_ENTRY_CHAIN=/bin/sh", "FOO=bar"]


def test_given_entry_chain_wins() -> None:
    config = base_config()
    result = augment(
        UpstreamImage(manifest_for(config), config),
        augmentation(entrypoint=("/wrap",), env=("WAVE_ENTRY_CHAIN=custom",)),
    )
    assert "WAVE_ENTRY_CHAIN=custom" in json.loads(result.config.data)["config"]["Env"]


def test_no_history_is_not_started() -> None:
    raw = json.loads(base_config())
    del raw["history"]
    config = dumps(raw)
    result = augment(UpstreamImage(manifest_for(config), config), augmentation())
    assert "history" not in json.loads(result.config.data)


def test_deterministic_bytes() -> None:
    config = base_config()
    upstream = UpstreamImage(manifest_for(config), config)
    assert augment(upstream, augmentation()) == augment(upstream, augmentation())


def test_index_keeps_only_the_platform_entry() -> None:
    config = base_config()
    manifest = manifest_for(config)
    index_doc = {
        "schemaVersion": 2,
        "mediaType": str(MediaType.OCI_INDEX),
        "manifests": [
            {
                "mediaType": str(MediaType.OCI_MANIFEST),
                "digest": "sha256:" + "e" * 64,
                "size": 5,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {
                "mediaType": str(MediaType.OCI_MANIFEST),
                "digest": str(manifest.digest),
                "size": len(manifest.data),
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    index = Blob.of(dumps(index_doc), str(MediaType.OCI_INDEX))
    result = augment(UpstreamImage(manifest, config, index), augmentation())
    assert result.index is not None
    served = json.loads(result.index.data)
    assert len(served["manifests"]) == 1
    assert served["manifests"][0]["digest"] == str(result.manifest.digest)
    assert served["manifests"][0]["platform"]["architecture"] == "amd64"
    assert result.top_level(accepts_index=True) is result.index
    assert result.top_level(accepts_index=False) is result.manifest
    assert result.manifest_by_digest(result.index.digest) is result.index
    assert result.manifest_by_digest(Digest("sha256", "e" * 64)) is None


def test_config_digest_mismatch_is_refused() -> None:
    config = base_config()
    with pytest.raises(WaveError, match="do not match"):
        augment(UpstreamImage(manifest_for(config), base_config(Cmd=["x"])), augmentation())


def test_merge_env() -> None:
    assert merge_env(["A=1", "B=2"], ("B=3", "C=4", "A=0")) == ["A=0", "B=3", "C=4"]
