"""Token -> augmented image, with the caches a pull needs.

A token record never changes after creation (only revocation or expiry ends
it), so the augmented image computed from it is cached by token: in a bounded
in-process LRU, and in the shared content cache (Redis) when there is one, so
a replica that never saw the token serves it without asking the upstream. The
record itself is re-checked over gRPC once its short cache entry ages out,
which bounds how long a revoked token keeps working on this replica.
Concurrent first pulls of one token share a single computation, and whatever
is served is checked against the digests the service recorded at creation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from gateway.caches import decode_augmented, encode_augmented
from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import AugmentedImage
from wave_grpc.metrics import Metrics
from wave_grpc.pinning import augment_record, augmentations_from_record, fetch_pinned, matches_record
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.redaction import token_id
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.content import ContentCache
from wave_grpc.stores.tokens import expiry_seconds

log = logging.getLogger("gateway")


@dataclass(frozen=True, slots=True)
class TokenImage:
    token: str
    record: pb.ContainerRecord
    source: ImageRef
    tag: str
    image: AugmentedImage
    injected: dict[Digest, pb.ContainerLayer]

    @property
    def expires_at(self) -> float:
        return expiry_seconds(self.record)

    @property
    def weight(self) -> int:
        """Bytes this entry holds in memory, near enough to bound a cache by."""
        index = self.image.index
        blobs = sum(len(image.manifest.data) + len(image.config.data) for image in self.image.images)
        return blobs + (len(index.data) if index else 0) + self.record.ByteSize() + 512


def unknown_name() -> WaveError:
    """One answer for an unknown, expired or revoked token and for a live token under another
    image path, so that a probe learns nothing about which tokens exist."""
    return WaveError(
        Errors.NAME_UNKNOWN,
        "no image is served under this name: the container token is unknown, expired or revoked, "
        "or the image path is not the one the token was created for",
    )


class TokenResolver:
    def __init__(
        self,
        stub: pb_grpc.AugmentServiceAsyncStub,
        upstream: RegistryClient,
        content: ContentCache,
        *,
        record_ttl: float,
        max_entries: int,
        max_bytes: int,
        metrics: Metrics,
        service_address: str = "",
    ) -> None:
        self._service_address = service_address or "its configured address"
        self._record_hits = metrics.cache_requests.labels("record", "hit")
        self._record_misses = metrics.cache_requests.labels("record", "miss")
        self._stub = stub
        self._upstream = upstream
        self._content = content
        self._record_ttl = record_ttl
        self._max_entries = max_entries
        # Bounded in count and in bytes: a few tokens with huge configs must not grow the process.
        self._max_bytes = max_bytes
        self._bytes = 0
        self._images: OrderedDict[str, tuple[TokenImage, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[TokenImage]] = {}

    def _unknown(self, token: str) -> WaveError:
        return unknown_name()

    async def _fetch_record(self, token: str) -> pb.ContainerRecord:
        try:
            response = await self._stub.GetContainer(pb.GetContainerRequest(container_token=token), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise self._unknown(token) from None
            raise WaveError(
                Errors.SERVICE_UNAVAILABLE,
                f"the AugmentService at {self._service_address} ([gateway].service) did not answer a token "
                f"lookup ({exc.code().name}); retry later",
                retry_after=1.0,
            ) from None
        return response.container

    async def _augmented(self, token: str, record: pb.ContainerRecord) -> AugmentedImage:
        injected = [augmentation.layers for augmentation in augmentations_from_record(record)]
        ttl = max(1.0, expiry_seconds(record) - time.time())
        key = f"augmented:{token}"
        cached = await self._content.get(key)
        if cached is not None:
            try:
                image = decode_augmented(cached, injected)
            except (ValueError, KeyError, TypeError, IndexError):
                log.warning("cached augmented image for %s is unreadable; recomputing", token_id(token))
            else:
                if matches_record(image, record):
                    return image
                log.warning("cached augmented image for %s does not match its record; recomputing", token_id(token))
        image = augment_record(await fetch_pinned(self._upstream, record, self._content, ttl), record)
        if not matches_record(image, record):
            # Same pinned bytes, different result: this replica's rewrite differs
            # from the one that created the token. Refuse rather than serve bytes
            # another replica would not.
            raise WaveError(
                Errors.MANIFEST_INVALID,
                f"token {token_id(token)}: the augmented manifest computed here ({image.manifest.digest}) "
                f"differs from the one recorded at creation ({record.target_manifest_digest}); "
                "check that all replicas run one version",
            )
        await self._content.put(key, encode_augmented(image), ttl)
        return image

    async def _build(self, token: str) -> TokenImage:
        record = await self._fetch_record(token)
        cached = self._images.get(token)
        if cached is not None and cached[0].record == record:
            return cached[0]
        image = await self._augmented(token, record)
        source = ImageRef.parse(record.container_image)
        injected = {Digest.parse(layer.gzip_digest): layer for layer in record.container_config.layers}
        return TokenImage(token, record, source, source.tag or "latest", image, injected)

    async def resolve(self, token: str) -> TokenImage:
        now = time.monotonic()
        cached = self._images.get(token)
        if cached is not None:
            entry, checked_at = cached
            if entry.expires_at <= time.time():
                self._forget(token)
                raise self._unknown(token)
            if now - checked_at < self._record_ttl:
                self._images.move_to_end(token)
                self._record_hits.inc()
                return entry
        self._record_misses.inc()
        pending = self._inflight.get(token)
        if pending is None:
            pending = asyncio.ensure_future(self._build(token))
            self._inflight[token] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(token, None))
        try:
            entry = await asyncio.shield(pending)
        except WaveError as exc:
            if exc.kind is Errors.NAME_UNKNOWN:
                self._forget(token)
            raise
        if entry.expires_at <= time.time():
            raise self._unknown(token)
        self._remember(token, entry)
        return entry

    def _forget(self, token: str) -> None:
        old = self._images.pop(token, None)
        if old is not None:
            self._bytes -= old[0].weight

    def _remember(self, token: str, entry: TokenImage) -> None:
        self._forget(token)
        weight = entry.weight
        if weight > self._max_bytes // 4:
            return  # served, not kept: one entry may not take a quarter of the budget
        self._images[token] = (entry, time.monotonic())
        self._bytes += weight
        while len(self._images) > self._max_entries or self._bytes > self._max_bytes:
            _, (evicted, _checked) = self._images.popitem(last=False)
            self._bytes -= evicted.weight
