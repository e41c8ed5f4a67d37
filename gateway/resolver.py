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

import logging
import time
from dataclasses import dataclass, field

import grpc

from gateway.answers import PreparedAnswer
from gateway.caches import decode_augmented, encode_augmented
from wave_grpc.channel import Metadata
from wave_grpc.errors import Errors, WaveError
from wave_grpc.flight import BoundedCache, SingleFlight
from wave_grpc.image.digest import Digest
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import AugmentedImage
from wave_grpc.metrics import Metrics
from wave_grpc.pinning import augmented_from_upstream
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.record import TokenRecord, unknown_token_name
from wave_grpc.redaction import token_id
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.content import ContentCache

log = logging.getLogger("gateway")

# What one cached token costs the process beyond its payload, measured: bench/memory.py grew
# the serving process's RSS by 9.06 KiB per token over 10,000 tokens pulled once each, whose
# payload (manifest, config, record) is about 1.9 KiB; tracemalloc of the entry's own objects
# (record parsed, blobs, image values, the cache's tuple) reads 3.7 KiB for that payload, and the
# content cache's encoded copy and its prepared answers hold the rest. 6 KiB over the payload
# puts the accounting within 1.5x of the RSS growth (it was 2 KiB against 9, 4.3x).
ENTRY_OVERHEAD = 6 << 10


@dataclass(frozen=True, slots=True)
class TokenImage:
    """A live token's record and its augmented image: what every token route serves from."""

    record: TokenRecord
    image: AugmentedImage
    # Manifest answers by (reference, accepts an index), prepared on first use: at most two
    # per manifest of the image (gateway/handlers/manifests.py), kept as long as the entry.
    answers: dict[tuple[str, bool], PreparedAnswer] = field(default_factory=dict, compare=False, repr=False)

    @property
    def token(self) -> str:
        return self.record.token

    @property
    def source(self) -> ImageRef:
        return self.record.source

    @property
    def tag(self) -> str:
        return self.record.tag

    @property
    def injected(self) -> dict[Digest, pb.ContainerLayer]:
        return self.record.injected

    @property
    def expires_at(self) -> float:
        return self.record.expires_at

    @property
    def weight(self) -> int:
        """Bytes this entry holds in memory, near enough to bound a cache by: its payload
        (the blobs and the record) and ``ENTRY_OVERHEAD`` for the Python objects around it."""
        index = self.image.index
        blobs = sum(len(image.manifest.data) + len(image.config.data) for image in self.image.images)
        return blobs + (len(index.data) if index else 0) + self.record.message.ByteSize() + ENTRY_OVERHEAD


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
        proof: Metadata = (),
    ) -> None:
        self._service_address = service_address or "its configured address"
        # With it the service answers the owner too (pulls are counted per owner).
        self._proof = proof
        self._record_hits = metrics.cache_requests.labels("record", "hit")
        self._record_misses = metrics.cache_requests.labels("record", "miss")
        self._stub = stub
        self._upstream = upstream
        self._content = content
        self._record_ttl = record_ttl
        # Bounded in count and in bytes: a few tokens with huge configs must not grow the process.
        # An entry is (image, when its record was last checked); age is judged here, not by the cache.
        self._images: BoundedCache[str, tuple[TokenImage, float]] = BoundedCache(max_entries, max_weight=max_bytes)
        self._flight: SingleFlight[str, TokenImage] = SingleFlight()
        # Tokens the service did not know, for record_ttl: a repeated unknown token answers from
        # memory, as a live one under the wrong image path does, so timing tells them apart less.
        self._unknown: BoundedCache[str, bool] = BoundedCache(max(max_entries, 1), ttl=record_ttl)

    async def _fetch_record(self, token: str) -> TokenRecord:
        try:
            response = await self._stub.GetContainer(
                pb.GetContainerRequest(container_token=token), timeout=10, metadata=self._proof
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise unknown_token_name() from None
            raise WaveError(
                Errors.SERVICE_UNAVAILABLE,
                f"the AugmentService at {self._service_address} ([gateway].service) did not answer a token "
                f"lookup ({exc.code().name}); retry later",
                retry_after=1.0,
            ) from None
        return TokenRecord.of(response.container)

    async def _augmented(self, record: TokenRecord) -> AugmentedImage:
        ttl = max(1.0, record.expires_at - time.time())
        key = f"augmented:{record.token}"
        cached = await self._content.get(key)
        if cached is not None:
            try:
                image = decode_augmented(cached, record.injected_per_platform())
            except (ValueError, KeyError, TypeError, IndexError):
                log.warning("cached augmented image for %s is unreadable; recomputing", token_id(record.token))
            else:
                if record.matches(image):
                    return image
                log.warning(
                    "cached augmented image for %s does not match its record; recomputing", token_id(record.token)
                )
        image = await augmented_from_upstream(self._upstream, record, self._content, ttl)
        await self._content.put(key, encode_augmented(image), ttl)
        return image

    async def _build(self, token: str) -> TokenImage:
        record = await self._fetch_record(token)
        cached = self._images.get(token)
        if cached is not None and cached[0].record.message == record.message:
            return cached[0]
        return TokenImage(record, await self._augmented(record))

    async def resolve(self, token: str) -> TokenImage:
        if self._unknown.get(token) is not None:
            raise unknown_token_name()
        cached = self._images.get(token)
        if cached is not None:
            entry, checked_at = cached
            if entry.expires_at <= time.time():
                self._images.pop(token)
                raise unknown_token_name()
            if time.monotonic() - checked_at < self._record_ttl:
                self._record_hits.inc()
                return entry
        self._record_misses.inc()
        try:
            entry = await self._flight.run(token, lambda: self._build(token))
        except WaveError as exc:
            if exc.kind is Errors.NAME_UNKNOWN:
                self._images.pop(token)
                self._unknown.put(token, True)
            raise
        if entry.expires_at <= time.time():
            self._unknown.put(token, True)
            raise unknown_token_name()
        # Served, not kept, when one entry would take a quarter of the byte budget.
        self._images.put(token, (entry, time.monotonic()), weight=entry.weight)
        return entry
