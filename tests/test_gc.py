"""Layer garbage collection on both stores, with the real service, the CLI and a real registry.

A layer is kept while a live token references it and for gc_grace after the last
reference (or its upload); `wave-grpc gc` prints what it removes; the service
collects on its own every gc_interval; and a layer a concurrent creation is about
to reference is never removed (the race test runs both on real threads).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import os
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_e2e_augment import cli
from wave_grpc.image.digest import Digest
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.stores.layers import TEMP_GRACE, ExpectedLayer, FileLayerStore


def _layer(name: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = f"{name}\n".encode()
        info = tarfile.TarInfo(f"opt/{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_layer_being_referenced_is_never_collected(tmp_path: Path) -> None:
    store = FileLayerStore(tmp_path / "store")
    kept_by_reference = gone_before_reference = 0
    for i in range(150):
        digests, _ = await store.put(_chunks(_layer(f"race-{i}")), ExpectedLayer("layer"))
        path = store.staged_path(digests.gzip_digest)
        assert path is not None
        old = time.time() - 3600
        os.utime(path, (old, old))  # past any grace: only a fresh reference keeps it
        referenced, _collected = await asyncio.gather(
            store.reference(digests.gzip_digest), store.collect(set(), grace=60.0)
        )
        if referenced:
            # The creation would now write its record: the layer must still be there.
            assert store.staged_path(digests.gzip_digest) is not None, f"iteration {i}: referenced, then removed"
            kept_by_reference += 1
        else:
            assert store.staged_path(digests.gzip_digest) is None
            gone_before_reference += 1
    print(f"race: {kept_by_reference} references won, {gone_before_reference} collections won")
    assert kept_by_reference + gone_before_reference == 150


async def test_a_collection_sweeps_temporary_files_other_starts_left(tmp_path: Path) -> None:
    first = FileLayerStore(tmp_path / "store")
    leftover = first.root / "tmp" / f"{first.start_id}-0123456789abcdef.part"
    leftover.write_bytes(b"cut short")
    old = time.time() - TEMP_GRACE - 1
    os.utime(leftover, (old, old))
    await first.close()
    # A start that cannot tell the leftover apart by its PID (one container's PID 1 is every start's).
    second = FileLayerStore(tmp_path / "store")
    assert not leftover.exists()
    mine = second.root / "tmp" / f"{second.start_id}-fedcba9876543210.part"
    mine.write_bytes(b"in flight")
    os.utime(mine, (old, old))
    fresh = second.root / "tmp" / "another-start-fedcba9876543210.part"
    fresh.write_bytes(b"a replica's upload")
    assert await second.collect(set(), 0.0) is not None
    assert mine.exists()
    assert fresh.exists()
    os.utime(fresh, (old, old))
    await second.collect(set(), 0.0)
    assert not fresh.exists()
    await second.close()


def _upload(stack: WaveStack, data: bytes) -> pb.ContainerLayer:
    with grpc.insecure_channel(stack.grpc_address) as channel:
        response: pb.UploadLayerResponse = pb_grpc.AugmentServiceStub(channel).UploadLayer(
            iter([pb.UploadLayerRequest(chunk=data)]), timeout=30
        )
    return response.layer


def _gc(stack: WaveStack, *extra: str) -> str:
    return cli("gc", "--config", str(stack.config_path), *extra).stdout


def test_gc_keeps_referenced_layers_and_removes_the_rest_after_grace(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    # The grace must outlast two `wave-grpc gc` runs back to back on a loaded machine.
    layers = {"gc_grace": "8s", "gc_interval": "off"}
    with WaveStack(tmp_path / "gc", registries=[registry_route(registry)], layers=layers) as wave:
        wave.start()
        orphan = _upload(wave, _layer("orphan"))
        used = _layer("used")
        created = wave.create(
            base_images.ref("latest"),
            container_config=pb.ContainerConfig(
                layers=[pb.ContainerLayer(location="data:" + base64.b64encode(used).decode())]
            ),
        )
        used_digest = components.sha256_digest(used)
        time.sleep(8.5)
        dry = _gc(wave, "--dry-run")
        assert f"would remove {orphan.gzip_digest}" in dry
        assert used_digest not in dry
        blobs = wave.workdir / "data" / "layers" / "blobs" / "sha256"
        assert (blobs / orphan.gzip_digest.removeprefix("sha256:")).exists()

        report = _gc(wave)
        assert f"removed {orphan.gzip_digest} ({orphan.gzip_size} bytes)" in report
        assert "removed 1 layer(s)" in report
        assert not (blobs / orphan.gzip_digest.removeprefix("sha256:")).exists()
        assert (blobs / used_digest.removeprefix("sha256:")).exists()
        name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        assert wave.http("GET", f"{name}/blobs/{used_digest}").status == 200

        # Revoked: kept for gc_grace from the last time a collection saw it referenced, then removed.
        cli("revoke", created.container_token, "--server", wave.grpc_address)
        assert used_digest not in _gc(wave)
        time.sleep(8.5)
        assert f"removed {used_digest}" in _gc(wave)

        # An upload referenced later than its grace allows is refused cleanly, never dangling.
        with grpc.insecure_channel(wave.grpc_address) as channel:
            stub = pb_grpc.AugmentServiceStub(channel)
            try:
                stub.CreateContainer(
                    pb.CreateContainerRequest(
                        container_image=base_images.ref("latest"), container_config=pb.ContainerConfig(layers=[orphan])
                    ),
                    timeout=30,
                )
            except grpc.RpcError as exc:
                error: Any = exc
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "upload it with UploadLayer again" in error.details()
            else:
                raise AssertionError("a collected layer was referenced")


def test_the_service_collects_every_interval(tmp_path: Path, registry: components.Registry) -> None:
    layers = {"gc_grace": "1s", "gc_interval": "1s"}
    with WaveStack(tmp_path / "periodic", registries=[registry_route(registry)], layers=layers) as wave:
        wave.start()
        orphan = _upload(wave, _layer("periodic"))
        blob = wave.workdir / "data" / "layers" / "blobs" / "sha256" / orphan.gzip_digest.removeprefix("sha256:")
        deadline = time.monotonic() + 20
        while blob.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not blob.exists()
        assert "layer garbage collection removed 1 layer(s)" in wave.log_text()


def test_gc_on_a_registry_layer_store_untags_what_nothing_references(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    repository = "wave-gc-layers"
    layers = {
        "store": f"oci://{registry.host}/{repository}",
        "staging": str(tmp_path / "staging"),
        "gc_grace": "2s",
        "gc_interval": "off",
    }
    with WaveStack(tmp_path / "oci", registries=[registry_route(registry)], layers=layers) as wave:
        wave.start()
        orphan = _upload(wave, _layer("oci-orphan"))
        used = _upload(wave, _layer("oci-used"))
        created = wave.create(base_images.ref("latest"), container_config=pb.ContainerConfig(layers=[used]))

        def tagged(layer: pb.ContainerLayer) -> bool:
            tag = "sha256-" + Digest.parse(layer.gzip_digest).hex
            # distribution answers OCI manifests only to clients that accept them.
            accept = [("Accept", components.OCI_MANIFEST)]
            url = f"{registry.url}/v2/{repository}/manifests/{tag}"
            return components.http_request("HEAD", url, headers=accept).status == 200

        assert tagged(orphan)
        assert tagged(used)
        time.sleep(2.5)
        report = _gc(wave)
        assert f"removed {orphan.gzip_digest}" in report
        assert not tagged(orphan)
        assert tagged(used)
        name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        assert wave.http("GET", f"{name}/blobs/{used.gzip_digest}").status in (200, 307)
