"""A ``--layer`` on its way to the service: packed or digested here, then sent inline
(a ``data:`` location) or streamed through ``UploadLayer``."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

from wave_grpc.cli.client import CallerMetadata
from wave_grpc.cli.errors import CliError
from wave_grpc.cli.output import Progress
from wave_grpc.image.compression import Compression
from wave_grpc.image.layers import (
    LayerDigester,
    LayerDigests,
    LayerFormatError,
    LayerLimits,
    directory_size,
    pack_directory,
)
from wave_grpc.image.tarcheck import TarCheckError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

INLINE_LIMIT = 1 << 20
UPLOAD_CHUNK = 1 << 20

# The CLI checks the tar's structure before uploading; the service's own limits
# (inflation, devices) are the service's to enforce.
_CLIENT_LIMITS = LayerLimits(max_inflated_size=1 << 50, max_inflation_ratio=0, allow_devices=True)


def _digest_file(path: Path) -> LayerDigests:
    digester = LayerDigester(_CLIENT_LIMITS)
    progress = Progress(f"hashing {path.name}", path.stat().st_size)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(UPLOAD_CHUNK):
                digester.update(chunk)
                progress.advance(len(chunk))
        digests = digester.finish()
        digester.check_tar()
    except LayerFormatError as exc:
        raise CliError(f"--layer {path}: {exc}; give a directory, a .tar.gz or a .tar.zst file") from None
    except TarCheckError as exc:
        raise CliError(
            f"--layer {path}: the layer {exc}; give a directory, or a .tar.gz or .tar.zst of a tar archive"
        ) from None
    finally:
        progress.close()
    return digests


def pack_layer(spec: str, scratch: Path, compression: Compression = Compression.GZIP) -> tuple[Path, LayerDigests]:
    """A directory packed in ``compression``; a file digested as it is (its magic says which)."""
    path = Path(spec)
    if path.is_dir():
        suffix = "tar.zst" if compression is Compression.ZSTD else "tar.gz"
        out = scratch / f"layer-{len(list(scratch.iterdir()))}.{suffix}"
        progress = Progress(f"packing {path.name or spec}", directory_size(path))
        with out.open("wb") as handle:
            digests = pack_directory(path, handle, progress.advance, compression)
        progress.close()
        return out, digests
    if path.is_file():
        return path, _digest_file(path)
    raise CliError(f"--layer {spec}: no such directory or file")


async def _upload(
    stub: pb_grpc.AugmentServiceAsyncStub, path: Path, digests: LayerDigests, metadata: CallerMetadata
) -> pb.ContainerLayer:
    progress = Progress(f"uploading {path.name}", digests.gzip_size)

    async def messages() -> AsyncIterator[pb.UploadLayerRequest]:
        yield pb.UploadLayerRequest(
            gzip_digest=str(digests.gzip_digest),
            gzip_size=digests.gzip_size,
            tar_digest=str(digests.tar_digest),
        )
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, UPLOAD_CHUNK):
                yield pb.UploadLayerRequest(chunk=chunk)
                progress.advance(len(chunk))

    try:
        response = await stub.UploadLayer(messages(), metadata=metadata)
    finally:
        progress.close()
    return response.layer


async def send_layer(
    stub: pb_grpc.AugmentServiceAsyncStub,
    path: Path,
    digests: LayerDigests,
    inline_limit: int,
    metadata: CallerMetadata,
) -> pb.ContainerLayer:
    """The layer as the request names it: inline up to ``inline_limit`` bytes, else uploaded first."""
    if digests.gzip_size <= inline_limit:
        data = await asyncio.to_thread(path.read_bytes)
        return pb.ContainerLayer(
            location="data:" + base64.b64encode(data).decode(),
            gzip_digest=str(digests.gzip_digest),
            gzip_size=digests.gzip_size,
            tar_digest=str(digests.tar_digest),
            compression=str(digests.compression),
        )
    return await _upload(stub, path, digests, metadata)
