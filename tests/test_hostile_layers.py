"""Hostile layers and connections against the real service and gateway.

Layers that would break a pull, or unpack outside the root, are refused at
creation with INVALID_ARGUMENT naming the layer; decompression bombs end early
while ordinary creations and pulls go on; a stored layer's ranges follow HTTP;
the gateway caps its connections and closes idle and slow ones; a killed
upload's temporary file is swept when the service starts again.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import os
import random
import socket
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.stores.layers import TEMP_GRACE


def _tar(*entries: tuple[str, bytes, bytes, str]) -> bytes:
    """``(name, type, data, linkname)`` entries as a PAX tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, link in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            info.linkname = link
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


HELLO = _tar(("usr/local/bin/hello", tarfile.REGTYPE, b"#!/bin/sh\necho hi\n", ""))
BAD_LAYERS = {
    "not a tar": (_gz(b"plain text that is not a tar archive\n" * 50), "is not a tar archive"),
    "truncated": (_gz(_tar(("f", tarfile.REGTYPE, b"x" * 5000, ""))[:2000]), "truncated"),
    "dot-dot": (_gz(_tar(("../../etc/cron.d/evil", tarfile.REGTYPE, b"* * * * * id\n", ""))), "leaves the root"),
    "hard link out": (_gz(_tar(("h", tarfile.LNKTYPE, b"", "../../../etc/shadow"))), "points out of the root"),
    "through a symlink": (
        _gz(_tar(("up", tarfile.SYMTYPE, b"", "../../.."), ("up/etc/passwd", tarfile.REGTYPE, b"root::0:0\n", ""))),
        "written through a symlink",
    ),
    "device": (_gz(_tar(("dev/sda", tarfile.BLKTYPE, b"", ""))), "[layers].allow_devices"),
}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry, base_images: components.BaseImages
) -> Iterator[WaveStack]:
    with WaveStack(
        tmp_path_factory.mktemp("hostile-layers"),
        registries=[registry_route(registry)],
        gateway={"body_timeout": "2s"},
    ) as wave:
        yield wave.start()


def _data_layer(data: bytes) -> pb.ContainerLayer:
    return pb.ContainerLayer(location="data:" + base64.b64encode(data).decode())


def _stored_blobs(stack: WaveStack) -> set[str]:
    return {p.name for p in (stack.workdir / "data" / "layers" / "blobs" / "sha256").iterdir()}


@pytest.mark.parametrize("case", sorted(BAD_LAYERS))
def test_layers_that_break_pulls_are_refused_and_nothing_is_stored(
    stack: WaveStack, base_images: components.BaseImages, case: str
) -> None:
    data, expected = BAD_LAYERS[case]
    before = _stored_blobs(stack)
    config = pb.ContainerConfig(layers=[_data_layer(_gz(HELLO)), _data_layer(data)])
    with pytest.raises(grpc.RpcError) as caught:
        stack.create(base_images.ref("latest"), container_config=config)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("container_config.layers[1]: the layer "), error.details()
    assert expected in error.details()
    assert _stored_blobs(stack) - before <= {components.sha256_digest(_gz(HELLO)).removeprefix("sha256:")}


def _bomb() -> bytes:
    """A tar.gz of about 5 MB whose tar is 10 GiB: one file's header, then gzip members of zeros."""
    info = tarfile.TarInfo("zeros")
    info.size = 10 << 30
    header = _gz(info.tobuf(tarfile.PAX_FORMAT))
    zeros = zlib.compressobj(9, zlib.DEFLATED, 31)
    member = zeros.compress(bytes(64 << 20)) + zeros.flush()
    return header + member * 160


def _upload(stack: WaveStack, data: bytes) -> grpc.RpcError | pb.UploadLayerResponse:
    chunks = (pb.UploadLayerRequest(chunk=data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20))
    with grpc.insecure_channel(stack.grpc_address) as channel:
        try:
            response: pb.UploadLayerResponse = pb_grpc.AugmentServiceStub(channel).UploadLayer(chunks, timeout=120)
        except grpc.RpcError as exc:
            return exc
    return response


def test_bombs_end_early_while_ordinary_creations_and_pulls_go_on(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    bomb = _bomb()
    live = stack.create(base_images.ref("latest"))
    name = "/v2/" + live.target_image.split("/", 1)[1].rsplit(":", 1)[0]
    outcomes: list[grpc.RpcError | pb.UploadLayerResponse] = []
    bombers = [threading.Thread(target=lambda: outcomes.append(_upload(stack, bomb))) for _ in range(6)]
    for thread in bombers:
        thread.start()
    # While six bombs are being inflated, an ordinary creation and pulls of a live token go on.
    created = stack.create(base_images.ref("latest"), container_config=pb.ContainerConfig(env=["A=1"]))
    assert created.container_token
    assert stack.http("GET", f"{name}/manifests/latest").status == 200
    for thread in bombers:
        thread.join(timeout=120)
    assert len(outcomes) == 6
    for outcome in outcomes:
        assert isinstance(outcome, grpc.RpcError)
        error: Any = outcome
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[layers].max_inflation_ratio" in error.details()


def test_a_stored_layers_ranges_follow_http(stack: WaveStack, base_images: components.BaseImages) -> None:
    layer = _gz(HELLO)
    created = stack.create(base_images.ref("latest"), container_config=pb.ContainerConfig(layers=[_data_layer(layer)]))
    name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
    blob = f"{name}/blobs/{components.sha256_digest(layer)}"
    assert stack.http("GET", blob, headers=[("Range", "bytes=-0")]).status == 416
    several = stack.http("GET", blob, headers=[("Range", "bytes=0-1,4-5")])
    assert (several.status, several.body) == (200, layer)
    malformed = stack.http("GET", blob, headers=[("Range", "bytes=x-y")])
    assert (malformed.status, malformed.body) == (200, layer)
    part = stack.http("GET", blob, headers=[("Range", "bytes=0-9")])
    assert (part.status, part.body) == (206, layer[:10])


def test_a_record_over_the_limit_is_refused_at_creation(stack: WaveStack, base_images: components.BaseImages) -> None:
    huge = pb.ContainerConfig(env=["BIG=" + "x" * (1 << 20)])
    with pytest.raises(grpc.RpcError) as caught:
        stack.create(base_images.ref("latest"), container_config=huge)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "[service].max_record_size" in error.details()


def test_uploads_of_tiny_chunks_are_refused(stack: WaveStack) -> None:
    layer = _gz(_tar(("noise", tarfile.REGTYPE, random.Random(3).randbytes(4096), "")))  # noqa: S311 - test data
    outcome = _upload_chunks(stack, [layer[i : i + 8] for i in range(0, len(layer), 8)])
    assert isinstance(outcome, grpc.RpcError)
    error: Any = outcome
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "average under 16384 bytes" in error.details()


def _upload_chunks(stack: WaveStack, chunks: list[bytes]) -> grpc.RpcError | pb.UploadLayerResponse:
    with grpc.insecure_channel(stack.grpc_address) as channel:
        try:
            response: pb.UploadLayerResponse = pb_grpc.AugmentServiceStub(channel).UploadLayer(
                (pb.UploadLayerRequest(chunk=c) for c in chunks), timeout=30
            )
        except grpc.RpcError as exc:
            return exc
    return response


def test_a_slow_rest_body_is_answered_408(stack: WaveStack) -> None:
    answer = components.raw_exchange(
        stack.http_port,
        b"POST /v1alpha2/container HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{",
    )
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert "[gateway].body_timeout" in answer


@pytest.fixture
def small_gateway(tmp_path: Path, registry: components.Registry) -> Iterator[WaveStack]:
    with WaveStack(
        tmp_path / "small",
        registries=[registry_route(registry)],
        gateway={"max_connections": 20, "idle_timeout": "1s"},
    ) as wave:
        yield wave.start()


def test_the_gateway_caps_connections_and_closes_idle_ones(small_gateway: WaveStack) -> None:
    port = small_gateway.http_port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            answer = extra.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 503"), answer[:120]
        assert "connection limit" in answer
        # Idle connections (no request within [gateway].idle_timeout) are closed by the gateway.
        for conn in idle:
            conn.settimeout(10)
            assert conn.recv(100) == b""
    finally:
        for conn in idle:
            conn.close()
    assert small_gateway.http("GET", "/v2/").status == 200
    # A request head trickling in slower than the idle timeout is cut too: it never completes,
    # and the gateway closes the connection instead of waiting for it.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
        with contextlib.suppress(OSError):
            for byte in b"GET /v2/ HTTP/1.1\r\nHost: x\r\n":
                slow.sendall(bytes([byte]))
                time.sleep(0.2)
        try:
            closed = slow.recv(100) == b""
        except ConnectionResetError:
            closed = True
        assert closed


def test_a_killed_uploads_temporary_file_is_swept_at_start(tmp_path: Path, registry: components.Registry) -> None:
    with WaveStack(tmp_path / "sweep", registries=[registry_route(registry)]) as wave:
        wave.start()
        wave.stop()
        tmp = wave.workdir / "data" / "layers" / "tmp"
        # Left by a previous start whose service was PID 1 (a container): PID 1 always looks
        # alive, so the sweep goes by start id and age, never by process liveness.
        orphan = tmp / "1-0123456789abcdef.part"
        orphan.write_bytes(b"half an upload")
        old = time.time() - TEMP_GRACE - 60
        os.utime(orphan, (old, old))
        meta_orphan = wave.workdir / "data" / "layers" / "tar-digests" / "sha256" / f"{'a' * 64}.1-0123456789.part"
        meta_orphan.write_bytes(b"sha256:")
        os.utime(meta_orphan, (old, old))
        # Written just now by another start sharing the directory (a replica, `wave-grpc gc`).
        in_flight = tmp / "0123456789abcdef-fedcba9876543210.part"
        in_flight.write_bytes(b"an upload in flight")
        wave.start()
        assert not orphan.exists()
        assert not meta_orphan.exists()
        assert in_flight.exists()
        assert "removed 2 temporary file(s)" in wave.log_text()
