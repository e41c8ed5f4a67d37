"""UploadLayer: big layers streamed, verified, stored content-addressed, deduplicated.

The 1 GiB layer is generated on the fly in 1 MiB chunks and never held whole: a
valid tar.gz (one tar header, then zeros) written as gzip *stored* blocks, so the
client spends no time compressing while the service still inflates and hashes
every byte. The service's peak RSS is read from ``/proc/<pid>/status`` (VmHWM) of
the ``wave-grpc serve`` process before and after.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import struct
import tarfile
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_e2e_augment import cli
from wave_grpc.cli import Progress
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

pytestmark = pytest.mark.components

GIB = 1 << 30
_BLOCK = 65535  # the most a deflate stored block holds
_BLOCKS_PER_CHUNK = 16
_ZEROS = bytes(_BLOCK * _BLOCKS_PER_CHUNK)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _stored(data: bytes, final: bool = False) -> bytes:
    return bytes([1 if final else 0]) + struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + data


# One 1 MiB message of the stream: 16 stored blocks of zeros (the same bytes every time).
_ZERO_CHUNK = b"".join(_stored(_ZEROS[:_BLOCK]) for _ in range(_BLOCKS_PER_CHUNK))


class ZeroLayer:
    """A tar.gz of one file of zeros, at least ``size`` compressed bytes, produced chunk by chunk.

    The digests are computed while the chunks are produced; read them after the
    stream is consumed.
    """

    def __init__(self, size: int) -> None:
        self.chunks = -(-size // len(_ZERO_CHUNK))
        zeros = self.chunks * len(_ZEROS)
        info = tarfile.TarInfo("zeros.bin")
        info.size = (zeros - 1024) // 512 * 512  # the rest are the end-of-archive zero blocks
        info.mode = 0o644
        self._tar_header = info.tobuf(format=tarfile.PAX_FORMAT)
        assert len(self._tar_header) == 512
        self._zero_count = zeros
        self.gzip_size = len(_GZIP_HEADER) + len(_stored(self._tar_header)) + self.chunks * len(_ZERO_CHUNK) + 5 + 8
        self.gzip = hashlib.sha256()
        self.tar = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        crc = zlib.crc32(self._tar_header)
        self.tar.update(self._tar_header)
        first = _GZIP_HEADER + _stored(self._tar_header)
        self.gzip.update(first)
        yield first
        for _ in range(self.chunks):
            crc = zlib.crc32(_ZEROS, crc)
            self.tar.update(_ZEROS)
            self.gzip.update(_ZERO_CHUNK)
            yield _ZERO_CHUNK
        length = len(self._tar_header) + self._zero_count
        last = _stored(b"", final=True) + struct.pack("<II", crc, length & 0xFFFFFFFF)
        self.gzip.update(last)
        yield last

    @property
    def gzip_digest(self) -> str:
        return "sha256:" + self.gzip.hexdigest()

    @property
    def tar_digest(self) -> str:
        return "sha256:" + self.tar.hexdigest()


def test_zero_layer_is_a_valid_tar_gz() -> None:
    layer = ZeroLayer(3 << 20)
    data = b"".join(layer)
    assert len(data) == layer.gzip_size
    raw = gzip.decompress(data)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == layer.tar_digest
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        [member] = tar.getmembers()
    assert member.name == "zeros.bin"
    assert member.size > 3_000_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    with WaveStack(tmp_path_factory.mktemp("upload"), registries=[registry_route(registry)]).start() as wave:
        yield wave


def layer_store(stack: WaveStack) -> Path:
    return stack.workdir / "data" / "layers"


def stored_files(stack: WaveStack) -> set[str]:
    """Everything in the layer store's blob and temp folders."""
    root = layer_store(stack)
    return {str(p.relative_to(root)) for sub in ("blobs", "tmp") for p in (root / sub).rglob("*") if p.is_file()}


def messages(chunks: Iterator[bytes] | list[bytes], **expected: object) -> Iterator[pb.UploadLayerRequest]:
    yield pb.UploadLayerRequest(**expected)  # type: ignore[arg-type]
    for chunk in chunks:
        yield pb.UploadLayerRequest(chunk=chunk)


def upload(stack: WaveStack, chunks: Iterator[bytes] | list[bytes], **expected: object) -> pb.UploadLayerResponse:
    with grpc.insecure_channel(stack.grpc_address) as channel:
        response: pb.UploadLayerResponse = pb_grpc.AugmentServiceStub(channel).UploadLayer(
            messages(chunks, **expected), timeout=600
        )
    return response


def rejected(stack: WaveStack, chunks: list[bytes], **expected: object) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        upload(stack, chunks, **expected)
    error: grpc.Call = caught.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return error.details() or ""


def small_layer(size: int = 3 << 20, seed: int = 1) -> bytes:
    """A real tar.gz of ``size`` pseudo-random bytes (incompressible, so about that big)."""
    content = random.Random(seed).randbytes(size)  # noqa: S311 - reproducible test data, not a secret
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return gzip.compress(raw.getvalue(), mtime=0)


def chunked(data: bytes, size: int = 1 << 20) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_one_gib_layer_streams_with_flat_memory(stack: WaveStack, base_images: components.BaseImages) -> None:
    assert stack.process is not None
    pid = stack.process.pid
    before = components.vm_hwm_kib(pid)
    layer = ZeroLayer(GIB)
    assert layer.gzip_size >= GIB
    started = time.monotonic()
    response = upload(stack, iter(layer), gzip_size=layer.gzip_size)
    elapsed = time.monotonic() - started
    after = components.vm_hwm_kib(pid)
    try:
        print(
            f"\nUploadLayer of {layer.gzip_size} bytes ({layer.gzip_size / GIB:.3f} GiB) in {elapsed:.1f}s: "
            f"service peak RSS (VmHWM of pid {pid}) {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after"
        )
        # The digests the service computed are the ones of the bytes sent.
        assert response.created
        assert response.layer.gzip_digest == layer.gzip_digest
        assert response.layer.tar_digest == layer.tar_digest
        assert response.layer.gzip_size == layer.gzip_size
        assert response.layer.location == f"wave-layer-store:{layer.gzip_digest}"
        # Flat: the peak grew by a small fraction of the layer (gRPC buffers, one chunk in flight).
        assert after - before < 96 * 1024, f"service peak RSS grew by {(after - before) / 1024:.0f} MiB"

        # The stored layer goes into an image, and the gateway serves it with the right length and digest.
        created = stack.create(base_images.ref("latest"), container_config=pb.ContainerConfig(layers=[response.layer]))
        name = created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        head = stack.http("HEAD", f"/v2/{name}/blobs/{layer.gzip_digest}")
        assert head.status == 200
        assert head.header("Content-Length") == str(layer.gzip_size)
        assert head.header("Docker-Content-Digest") == layer.gzip_digest
    finally:
        # Keep the 1 GiB blob out of pytest's retained temp directories.
        blob = layer_store(stack) / "blobs" / "sha256" / layer.gzip_digest.removeprefix("sha256:")
        blob.unlink(missing_ok=True)


def test_truncated_and_corrupted_streams_store_nothing(stack: WaveStack) -> None:
    data = small_layer(seed=2)
    before = stored_files(stack)

    assert "truncated" in rejected(stack, chunked(data[:-100]))
    assert stored_files(stack) == before

    corrupted = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        corrupted[i] ^= 0xFF
    details = rejected(stack, chunked(bytes(corrupted)))
    assert details.startswith("layer: ")
    assert "gzip" in details
    assert stored_files(stack) == before

    wrong = "sha256:" + "1" * 64
    details = rejected(stack, chunked(data), gzip_digest=wrong)
    assert details.startswith("layer.gzip_digest: given " + wrong)
    assert components.sha256_digest(data) in details
    assert stored_files(stack) == before

    wrong_tar = rejected(stack, chunked(data), tar_digest="sha256:" + "2" * 64)
    assert wrong_tar.startswith("layer.tar_digest: ")
    assert stored_files(stack) == before

    # More bytes than declared: refused as soon as they arrive.
    assert rejected(stack, chunked(data), gzip_size=len(data) - 1).startswith("gzip_size: given")
    assert stored_files(stack) == before


def test_empty_upload_is_refused(stack: WaveStack) -> None:
    with grpc.insecure_channel(stack.grpc_address) as channel:
        stub = pb_grpc.AugmentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.UploadLayer(iter([]), timeout=30)
    error: grpc.Call = caught.value  # type: ignore[assignment]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith("chunk: the upload stream is empty")


def test_cancelled_upload_leaves_nothing(stack: WaveStack) -> None:
    before = stored_files(stack)
    data = small_layer(8 << 20, seed=3)
    halfway = threading.Event()
    release = threading.Event()

    def stalling() -> Iterator[pb.UploadLayerRequest]:
        yield pb.UploadLayerRequest()
        for i, chunk in enumerate(chunked(data)):
            if i == 4:
                halfway.set()
                release.wait(30)
                return
            yield pb.UploadLayerRequest(chunk=chunk)

    with grpc.insecure_channel(stack.grpc_address) as channel:
        future = pb_grpc.AugmentServiceStub(channel).UploadLayer.future(stalling(), timeout=60)
        assert halfway.wait(30)
        deadline = time.monotonic() + 10
        while not any(name.startswith("tmp/") for name in stored_files(stack) - before):
            assert time.monotonic() < deadline, "the service never started writing the upload"
            time.sleep(0.05)
        future.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave Future.cancel untyped
        release.set()
    deadline = time.monotonic() + 10
    while stored_files(stack) != before:
        assert time.monotonic() < deadline, f"left behind: {stored_files(stack) - before}"
        time.sleep(0.05)


def test_same_content_is_stored_once(stack: WaveStack) -> None:
    data = small_layer(seed=4)
    first = upload(stack, chunked(data), gzip_digest=components.sha256_digest(data), gzip_size=len(data))
    files = stored_files(stack)
    # Other chunk boundaries, same bytes: same layer, not stored again.
    second = upload(stack, chunked(data, 300_000))
    assert (first.created, second.created) == (True, False)
    assert first.layer == second.layer
    assert stored_files(stack) == files
    blob = f"blobs/sha256/{components.sha256_digest(data).removeprefix('sha256:')}"
    assert blob in files
    assert (layer_store(stack) / blob).read_bytes() == data


def test_cli_uploads_big_layers_and_the_image_pulls(
    stack: WaveStack, base_images: components.BaseImages, tmp_path: Path
) -> None:
    tools = tmp_path / "tools"
    (tools / "opt" / "big").mkdir(parents=True)
    # Incompressible, so the layer is over the CLI's 1 MiB inline limit and goes through UploadLayer.
    payload = random.Random(5).randbytes(3 << 20)  # noqa: S311 - test data, not a secret
    (tools / "opt" / "big" / "blob.bin").write_bytes(payload)
    (tools / "opt" / "big" / "README").write_text("a big module\n")

    targets = []
    for _ in range(2):
        proc = cli("augment", base_images.ref("latest"), "--layer", str(tools), "--server", stack.grpc_address)
        targets.append(proc.stdout.strip())
    log = stack.log_text()
    assert "new=True" in log
    assert "new=False" in log, "the second run reuses the stored layer"

    layout = tmp_path / "oci"
    components.skopeo_copy_to_oci(targets[1], layout, "latest")
    rootfs, _ = components.umoci_unpack(layout, "latest", tmp_path / "bundle")
    assert (rootfs / "opt" / "big" / "blob.bin").read_bytes() == payload
    assert (rootfs / "opt" / "big" / "README").read_text() == "a big module\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_terminal_only() -> None:
    terminal = _Terminal()
    progress = Progress("uploading layer.tar.gz", 4 << 20, terminal)
    for _ in range(4):
        progress.advance(1 << 20)
    progress.close()
    text = terminal.getvalue()
    assert "uploading layer.tar.gz" in text
    assert " 25%" in text
    assert "100%" in text
    assert text.endswith("\n")
    quiet = io.StringIO()
    silent = Progress("packing", 10, quiet)
    silent.advance(10)
    silent.close()
    assert quiet.getvalue() == ""
