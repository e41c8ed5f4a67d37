"""UploadLayer: a client stream of tar.gz chunks, verified and stored as one layer.

Sizes are enforced as bytes arrive, so an over-long stream is cut off at the limit instead
of filling the disk before the final check; a stream that stalls or dribbles is abandoned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from wave_grpc.errors import Errors, WaveError, invalid_argument
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.service.layers import record_layer
from wave_grpc.service.rpc import Malformed
from wave_grpc.stores.layers import ExpectedLayer, LayerStore, store_location

log = logging.getLogger("wave_grpc.service.servicer")

# An upload that sends nothing for this long is abandoned, so an idle client cannot pin a stream.
UPLOAD_IDLE_TIMEOUT = 60.0
MIN_AVERAGE_CHUNK = 16 << 10
SMALL_CHUNK_ALLOWANCE = 64  # messages before the average is judged


async def _chunks(
    first: pb.UploadLayerRequest,
    rest: AsyncIterator[pb.UploadLayerRequest | Malformed],
    declared: int,
    limit: int,
) -> AsyncIterator[bytes]:
    received = 0
    messages = 0
    message = first
    while True:
        messages += 1
        # Tiny messages cost a gRPC frame, a hash call and a write each: a stream of
        # them is a way to burn CPU, not to upload.
        if messages > SMALL_CHUNK_ALLOWANCE and received < messages * MIN_AVERAGE_CHUNK:
            raise invalid_argument(
                "chunk",
                f"the upload's messages average under {MIN_AVERAGE_CHUNK} bytes; send chunks of at least "
                "16 KiB (wave-grpc augment sends 1 MiB)",
            )
        if message.chunk:
            received += len(message.chunk)
            if declared and received > declared:
                raise invalid_argument(
                    "gzip_size", f"given {declared} but more bytes arrived; send the layer's exact size"
                )
            if received > limit:
                raise invalid_argument(
                    "chunk", f"the layer is over this service's {limit} byte limit ([service].max_layer_size)"
                )
            yield message.chunk
        try:
            next_message = await asyncio.wait_for(anext(rest, None), UPLOAD_IDLE_TIMEOUT)
        except TimeoutError:
            raise WaveError(
                Errors.INVALID_ARGUMENT,
                f"chunk: nothing arrived for {UPLOAD_IDLE_TIMEOUT:g}s; the upload was abandoned, send it again",
            ) from None
        if next_message is None:
            return
        if isinstance(next_message, Malformed):
            raise invalid_argument("chunk", next_message.message)
        message = next_message


async def receive_layer(
    stream: AsyncIterator[pb.UploadLayerRequest | Malformed], store: LayerStore, limit: int
) -> pb.UploadLayerResponse:
    """Store the streamed layer (``limit``: ``[service].max_layer_size``) and answer its record form."""
    first = await anext(aiter(stream), None)
    if first is None:
        raise invalid_argument("chunk", "the upload stream is empty; send the tar.gz bytes in chunk")
    if isinstance(first, Malformed):
        raise invalid_argument("chunk", first.message)
    declared = first.gzip_size
    if declared > limit:
        raise invalid_argument(
            "gzip_size",
            f"{declared} bytes is over this service's {limit} byte layer limit ([service].max_layer_size)",
        )
    expected = ExpectedLayer("layer", first.gzip_digest, declared, first.tar_digest)
    digests, created = await store.put(_chunks(first, stream, declared, limit), expected)
    log.info("stored layer %s (%d bytes, new=%s)", digests.gzip_digest, digests.gzip_size, created)
    return pb.UploadLayerResponse(layer=record_layer(store_location(digests.gzip_digest), digests), created=created)
