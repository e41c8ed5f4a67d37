"""A creation's layers made ready for its record: inline bytes stored, uploaded ones referenced,
http(s) locations checked. Each answers the ``ContainerLayer`` the record keeps (digests, size,
a location the gateway serves or redirects to), never the request's bytes."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from wave_grpc.config import Config
from wave_grpc.errors import invalid_argument, shown
from wave_grpc.image.compression import ZSTD_MAGIC, Compression, sniff
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import LayerDigests, decode_data_location
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.registry.policy import check_layer_location
from wave_grpc.stores.layers import STORE_SCHEME, ExpectedLayer, LayerStore, iterate_bytes, store_location


def _given_compression(field: str, layer: pb.ContainerLayer) -> Compression | None:
    """The caller's ``compression``, if any; an unknown one names the values there are."""
    if not layer.compression:
        return None
    try:
        return Compression(layer.compression)
    except ValueError:
        raise invalid_argument(
            f"{field}.compression", f"{layer.compression!r} is not a layer compression; give gzip or zstd (or nothing)"
        ) from None


def _check_compression(field: str, layer: pb.ContainerLayer, actual: Compression) -> None:
    given = _given_compression(field, layer)
    if given is not None and given is not actual:
        raise invalid_argument(f"{field}.compression", f"given {given} but the bytes are {actual}")


def record_layer(location: str, digests: LayerDigests) -> pb.ContainerLayer:
    """The record's form of a verified layer."""
    return pb.ContainerLayer(
        location=location,
        gzip_digest=str(digests.gzip_digest),
        gzip_size=digests.gzip_size,
        tar_digest=str(digests.tar_digest),
        compression=str(digests.compression),
    )


async def _stored_compression(store: LayerStore, digest: Digest) -> Compression:
    """A stored blob's compression, by its first bytes' magic (it was verified when stored)."""
    head = b""
    chunks = store.read(digest)
    try:
        async for chunk in chunks:
            head += chunk
            if len(head) >= len(ZSTD_MAGIC):
                break
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    return sniff(head) or Compression.GZIP


async def _inline(
    field: str, location: str, layer: pb.ContainerLayer, store: LayerStore, limit: int
) -> pb.ContainerLayer:
    data = decode_data_location(location, f"{field}.location")
    if len(data) > limit:
        raise invalid_argument(
            f"{field}.location",
            f"inline layer is {len(data)} bytes, over the {limit} "
            "byte limit; upload it with UploadLayer and pass the answered layer",
        )
    _given_compression(field, layer)
    digests, _ = await store.put(
        iterate_bytes(data), ExpectedLayer(field, layer.gzip_digest, layer.gzip_size, layer.tar_digest)
    )
    _check_compression(field, layer, digests.compression)
    return record_layer(store_location(digests.gzip_digest), digests)


async def _uploaded(field: str, location: str, layer: pb.ContainerLayer, store: LayerStore) -> pb.ContainerLayer:
    digest = Digest.parse(location[len(STORE_SCHEME) :], field=f"{field}.location")
    # Marked referenced before the record exists: garbage collection keeps the layer
    # from now on, or it is already gone and the caller is told to upload it again.
    if not await store.reference(digest):
        raise invalid_argument(
            f"{field}.location",
            f"layer {digest} is not in the layer store (never uploaded, or collected after "
            "[layers].gc_grace without a token); upload it with UploadLayer again",
        )
    size = await store.size(digest)
    tar_digest = await store.tar_digest(digest)
    if size is None or tar_digest is None:
        raise invalid_argument(
            f"{field}.location", f"layer {digest} is not in the layer store; upload it with UploadLayer first"
        )
    for name, given, actual in (
        ("gzip_digest", layer.gzip_digest, str(digest)),
        ("tar_digest", layer.tar_digest, str(tar_digest)),
    ):
        if given and given != actual:
            raise invalid_argument(f"{field}.{name}", f"given {shown(given)} but the stored layer has {actual}")
    if layer.gzip_size and layer.gzip_size != size:
        raise invalid_argument(f"{field}.gzip_size", f"given {layer.gzip_size} but the stored layer has {size}")
    compression = await _stored_compression(store, digest)
    _check_compression(field, layer, compression)
    return record_layer(location, LayerDigests(digest, size, tar_digest, compression))


def _remote(field: str, location: str, layer: pb.ContainerLayer, config: Config) -> pb.ContainerLayer:
    # Runtimes are sent to this URL: only hosts the operator listed.
    check_layer_location(config, location, f"{field}.location")
    Digest.parse(layer.gzip_digest, field=f"{field}.gzip_digest")
    Digest.parse(layer.tar_digest, field=f"{field}.tar_digest")
    if layer.gzip_size <= 0:
        raise invalid_argument(f"{field}.gzip_size", "is required (> 0) for an http(s) location")
    # The service never sees these bytes: the caller says how they are compressed.
    compression = _given_compression(field, layer) or Compression.GZIP
    return pb.ContainerLayer(
        location=location,
        gzip_digest=layer.gzip_digest,
        gzip_size=layer.gzip_size,
        tar_digest=layer.tar_digest,
        compression=str(compression),
    )


async def prepare_layer(index: int, layer: pb.ContainerLayer, store: LayerStore, config: Config) -> pb.ContainerLayer:
    """The record's form of the request's layer ``index``; bad input names the field."""
    field = f"container_config.layers[{index}]"
    location = layer.location.strip()
    if location.startswith("data:"):
        return await _inline(field, location, layer, store, config.service.inline_layer_limit)
    if location.startswith(STORE_SCHEME):
        return await _uploaded(field, location, layer, store)
    if location.startswith(("https://", "http://")):
        return _remote(field, location, layer, config)
    if not location:
        raise invalid_argument(f"{field}.location", "is empty; give data:<base64>, an http(s) URL or an uploaded layer")
    raise invalid_argument(
        f"{field}.location",
        f"unsupported location {location[:32]!r}; use data:<base64>, http(s):// or {STORE_SCHEME}sha256:...",
    )
