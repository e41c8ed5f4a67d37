"""The AugmentService: a typed ``grpc.aio`` servicer with thin RPC methods.

Each RPC admits its caller (service/callers.py), turns its request into values and
hands them on: a creation is parsed, resolved and built in service/creation.py, its
layers made ready in service/layers.py, an upload received in service/uploads.py, a
freeze run by service/freeze.py; what a stored record means is wave_grpc/record.py.
"""

from __future__ import annotations

import logging
import secrets
import string
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from wave_grpc.config import Config
from wave_grpc.errors import Errors, WaveError, brief, invalid_argument
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import AugmentedImage
from wave_grpc.metrics import Metrics
from wave_grpc.pinning import SourceResolver
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.record import ANONYMOUS, TokenRecord, listing_key, unknown_request, unknown_token
from wave_grpc.redaction import token_id
from wave_grpc.registry.client import RegistryClient
from wave_grpc.service.auth import Authenticator
from wave_grpc.service.callers import Callers
from wave_grpc.service.creation import (
    TokenBounds,
    build_record,
    parse_creation,
    pushed_digest,
    resolve_creation,
    resolve_image,
)
from wave_grpc.service.freeze import FreezeRunner, check_push_allowed, frozen_tag
from wave_grpc.service.layers import prepare_layer
from wave_grpc.service.renewal import answered_expiry, max_expiry, renewed_expiry
from wave_grpc.service.rpc import Malformed, add_to_server, rpc
from wave_grpc.service.sameness import request_fingerprint
from wave_grpc.service.uploads import receive_layer
from wave_grpc.stores.layers import LayerStore
from wave_grpc.stores.limits import LocalRateLimiter, RateLimiter
from wave_grpc.stores.tokens import TokenStore

__all__ = ["AugmentServicer", "Malformed", "add_to_server", "new_token"]

log = logging.getLogger(__name__)

TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 12  # 36**12 is about 2**62
REQUEST_ID_LENGTH = 32  # uuid4().hex
DEFAULT_PAGE = 100
MAX_PAGE = 1000
_ALLOCATION_TRIES = 5
_ANONYMOUS_LISTING_REFUSED = (
    "listing tokens needs a caller token: anonymous callers cannot list (an address may be shared by others); "
    "ask the operator for one ([service].tokens or an [auth] verifier) and pass it as 'authorization: Bearer "
    "<token>' (wave-grpc list --token)"
)

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


def new_token() -> str:
    """A uniform choice among the 36**12 tokens, drawn from the OS in one call, not one per
    character (a creation spent more on twelve urandom calls than on its SQLite insert)."""
    number = secrets.randbelow(len(TOKEN_ALPHABET) ** TOKEN_LENGTH)
    characters = []
    for _ in range(TOKEN_LENGTH):
        number, digit = divmod(number, len(TOKEN_ALPHABET))
        characters.append(TOKEN_ALPHABET[digit])
    return "".join(characters)


def _created(record: pb.ContainerRecord, *, cached: bool = False) -> pb.CreateContainerResponse:
    """A token's answer to CreateContainer: a new one, or a live one for an identical request."""
    return pb.CreateContainerResponse(
        container_token=record.container_token,
        target_image=record.target_image,
        expiration=record.expiration,
        container_image=record.container_image,
        request_id=record.request_id,
        source_digest=record.source_digest,
        target_digest=record.target_digest,
        cached=cached,
    )


def _summary(record: pb.ContainerRecord) -> pb.ContainerSummary:
    frozen = record.HasField("freeze")
    return pb.ContainerSummary(
        container_token="" if frozen else record.container_token,
        target_image=record.target_image,
        container_image=record.container_image,
        container_platform=record.container_platform,
        create_time=record.create_time,
        expiration=record.expiration,
        request_id=record.request_id,
        freeze=frozen,
    )


def _status(record: pb.ContainerRecord) -> pb.GetContainerStatusResponse:
    if not record.HasField("freeze"):
        # Augmentation is finished when CreateContainer answers: nothing is built later.
        return pb.GetContainerStatusResponse(
            request_id=record.request_id,
            status=pb.CONTAINER_STATUS_DONE,
            succeeded=True,
            create_time=record.create_time,
            duration=Duration(),
            expiration=record.expiration,
        )
    state = record.freeze
    duration = Duration()
    if state.status == pb.CONTAINER_STATUS_DONE:
        duration.FromSeconds(max(0, state.done_time.seconds - record.create_time.seconds))
    return pb.GetContainerStatusResponse(
        request_id=record.request_id,
        status=state.status,
        succeeded=state.succeeded,
        create_time=record.create_time,
        duration=duration,
        reason=state.reason,
        freeze=True,
        freeze_progress=state.progress,
    )


class AugmentServicer(pb_grpc.AugmentServiceServicer):
    def __init__(
        self,
        config: Config,
        tokens: TokenStore,
        layers: LayerStore,
        upstream: RegistryClient,
        clock: Callable[[], float] = time.time,
        auth: Authenticator | None = None,
        metrics: Metrics | None = None,
        limiter: RateLimiter | None = None,
        freezes: FreezeRunner | None = None,
    ) -> None:
        self._config = config
        self._tokens = tokens
        self._layers = layers
        self._upstream = upstream
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._callers = Callers(
            config, auth or Authenticator.from_config(config), limiter or LocalRateLimiter(), self._metrics
        )
        ttl = config.upstream.tag_cache_ttl
        self._sources = SourceResolver(upstream, ttl.total_seconds() if ttl is not None else None)
        self.freezes = freezes or FreezeRunner(config, tokens, layers, upstream, self._metrics)

    # -- records --------------------------------------------------------------

    async def _put_new(self, record: pb.ContainerRecord, target_image: Callable[[str], str]) -> str:
        """Store ``record`` under a fresh token (``target_image`` names the image for it)."""
        for _ in range(_ALLOCATION_TRIES):
            token = new_token()
            record.container_token = token
            record.target_image = target_image(token)
            if await self._tokens.put(record):
                return token
        raise WaveError(Errors.INTERNAL, "could not allocate a unique token")

    async def _live_record(self, token: str) -> TokenRecord:
        if len(token) != TOKEN_LENGTH or any(c not in TOKEN_ALPHABET for c in token):
            raise invalid_argument("container_token", "is not a token (12 lowercase letters and digits)")
        message = await self._tokens.get(token)
        if message is None:
            raise unknown_token()
        record = TokenRecord.of(message)
        if record.is_freeze:
            raise unknown_token()
        return record

    async def _owned_record(
        self, token: str, context: grpc.aio.ServicerContext[_Req, _Resp], caller: str | None = None
    ) -> TokenRecord:
        """The live record, if the caller (authenticated here unless given) may act on it (describe, revoke)."""
        caller = caller if caller is not None else await self._callers.authenticate(context)
        record = await self._live_record(token)
        if not record.owned_by(caller):
            raise WaveError(
                Errors.DENIED,
                "the container token belongs to another user; use the token of the caller that created it",
            )
        return record

    # -- creation -------------------------------------------------------------

    @rpc
    async def CreateContainer(
        self,
        request: pb.CreateContainerRequest,
        context: grpc.aio.ServicerContext[pb.CreateContainerRequest, pb.CreateContainerResponse],
    ) -> pb.CreateContainerResponse:
        counted = self._metrics.containers_created
        try:
            response = await self._create(request, context)
        except WaveError as exc:
            counted.labels(exc.kind.oci_code.lower()).inc()
            raise
        except Exception:
            counted.labels("internal").inc()
            raise
        counted.labels("validated" if request.validate_only else "created").inc()
        return response

    async def _create(
        self,
        request: pb.CreateContainerRequest,
        context: grpc.aio.ServicerContext[pb.CreateContainerRequest, pb.CreateContainerResponse],
    ) -> pb.CreateContainerResponse:
        # A check before packing (validate_only) is limited like a creation, on its own count.
        counter = "validate" if request.validate_only else "create"
        caller = await self._callers.admit(context, request.tower_access_token, request.tower_endpoint, counter)
        creation = parse_creation(request, self._config)
        if creation.freeze_target is not None:
            check_push_allowed(self._upstream, creation.freeze_target, source=creation.source)
            if not creation.validate_only:
                await self._callers.check_rate(
                    "freeze",
                    listing_key(caller.owner, caller.address),
                    self._config.limits.freezes_per_hour,
                    "[limits].freezes_per_hour",
                    window=3600,
                )
        resolved = await resolve_creation(creation, self._sources, TokenBounds.of(self._config))
        if creation.validate_only:
            # Everything but the layers (they are what the caller has not sent yet) is checked.
            return pb.CreateContainerResponse(
                container_image=str(creation.source),
                source_digest=str(resolved.source.top.digest),
                freeze=request.freeze,
            )
        layers = [
            await prepare_layer(i, layer, self._layers, self._config) for i, layer in enumerate(creation.config.layers)
        ]
        record, augmented = build_record(resolved, layers, caller, self._clock(), self._config)
        if creation.freeze_target is not None:
            return await self._store_freeze(record, creation.source, creation.freeze_target, augmented)
        record.request_fingerprint = request_fingerprint(record)
        same = await self._same_request(record)
        if same is not None:
            return same
        host, source = self._config.gateway.public_host, creation.source
        token = await self._put_new(record, lambda t: f"{host}/wt/{t}/{source.repository}:{source.tag or 'latest'}")
        log.info(
            "created %s for %s (%s, %s) owner=%s",
            token_id(token),
            creation.source,
            record.source_digest,
            record.container_platform,
            caller.owner,
        )
        return _created(record)

    async def _same_request(self, record: pb.ContainerRecord) -> pb.CreateContainerResponse | None:
        """The caller's live token for an identical request (service/sameness.py), or None.

        It lives at least as long as a new token would (never past its maximum lifetime).
        """
        found = await self._tokens.get_by_fingerprint(record.request_fingerprint)
        if found is None:
            return None
        existing = TokenRecord.of(found)
        expiry = answered_expiry(existing, self._clock(), self._config)
        renewed = await self._tokens.renew(existing.token, expiry) if expiry is not None else found
        if renewed is None:  # revoked or expired just now: a new token, as if none matched
            return None
        log.info("answered %s again for an identical request", token_id(existing.token))
        return _created(renewed, cached=True)

    async def _store_freeze(
        self, record: pb.ContainerRecord, ref: ImageRef, frozen: ImageRef, augmented: AugmentedImage
    ) -> pb.CreateContainerResponse:
        """Keep the request (the copy's state, its layers referenced) and start the copy."""
        manifest_digest = pushed_digest(augmented)
        target_image = f"{frozen.registry}/{frozen.repository}:{frozen_tag(ref, manifest_digest)}"
        # The tag resolves to what is pushed under it: one platform's manifest, or the index.
        record.target_digest = str(manifest_digest)
        record.freeze.CopyFrom(
            pb.FreezeState(
                build_repository=f"{frozen.registry}/{frozen.repository}", status=pb.CONTAINER_STATUS_PENDING
            )
        )
        # The record's key, never answered: a freeze's record is not a pull capability.
        await self._put_new(record, lambda _key: target_image)
        self.freezes.submit(record.container_token)
        log.info("freeze %s of %s to %s requested", record.request_id, ref, record.target_image)
        return pb.CreateContainerResponse(
            target_image=record.target_image,
            container_image=str(ref),
            request_id=record.request_id,
            source_digest=record.source_digest,
            target_digest=record.target_digest,
            freeze=True,
        )

    # -- tokens ---------------------------------------------------------------

    @rpc
    async def GetContainer(
        self,
        request: pb.GetContainerRequest,
        context: grpc.aio.ServicerContext[pb.GetContainerRequest, pb.GetContainerResponse],
    ) -> pb.GetContainerResponse:
        # The token is itself the capability: whoever holds it may pull, so may read the record,
        # but who made it and from where only the gateway learns (it counts pulls per owner).
        record = await self._live_record(request.container_token)
        shown = record.message if self._callers.is_gateway(context) else record.without_identity()
        return pb.GetContainerResponse(container=shown)

    @rpc
    async def RevokeContainer(
        self,
        request: pb.RevokeContainerRequest,
        context: grpc.aio.ServicerContext[pb.RevokeContainerRequest, pb.RevokeContainerResponse],
    ) -> pb.RevokeContainerResponse:
        await self._owned_record(request.container_token, context)
        if not await self._tokens.revoke(request.container_token):
            raise unknown_token()
        log.info("revoked %s", token_id(request.container_token))
        return pb.RevokeContainerResponse(container_token=request.container_token)

    @rpc
    async def DescribeContainer(
        self,
        request: pb.DescribeContainerRequest,
        context: grpc.aio.ServicerContext[pb.DescribeContainerRequest, pb.DescribeContainerResponse],
    ) -> pb.DescribeContainerResponse:
        caller = await self._callers.authenticate(context)
        record = await self._owned_record(request.container_token, context, caller)
        return pb.DescribeContainerResponse(container=record.described_to(caller))

    @rpc
    async def ListContainers(
        self,
        request: pb.ListContainersRequest,
        context: grpc.aio.ServicerContext[pb.ListContainersRequest, pb.ListContainersResponse],
    ) -> pb.ListContainersResponse:
        caller = await self._callers.authenticate(context)
        if caller == ANONYMOUS:
            # An address is no identity (a NAT, a login node, a proxy shares it), and a listing hands out pull tokens.
            raise WaveError(Errors.DENIED, _ANONYMOUS_LISTING_REFUSED)
        size = request.page_size or DEFAULT_PAGE
        if not 0 < size <= MAX_PAGE:
            raise invalid_argument("page_size", f"must be between 1 and {MAX_PAGE}, got {request.page_size}")
        text = request.page_token.strip()
        if text and not (text.isdigit() and len(text) < 10):
            raise invalid_argument("page_token", "is not a page token; pass the next_page_token of the last page")
        offset = int(text or 0)
        listing = listing_key(caller, "")
        # One more than the page, to know whether another page follows.
        records = await self._tokens.listed(listing, offset, size + 1)
        return pb.ListContainersResponse(
            containers=[_summary(r) for r in records[:size]],
            next_page_token=str(offset + size) if len(records) > size else "",
        )

    @rpc
    async def InspectImage(
        self,
        request: pb.InspectImageRequest,
        context: grpc.aio.ServicerContext[pb.InspectImageRequest, pb.InspectImageResponse],
    ) -> pb.InspectImageResponse:
        # An inspection costs the upstream what a creation does: limited on its own count.
        await self._callers.admit(context, request.tower_access_token, request.tower_endpoint, "inspect")
        ref = ImageRef.parse(request.container_image)
        platform = Platform.parse(request.container_platform)
        resolved = await resolve_image(self._sources, ref, (platform,), bool(request.container_platform.strip()))
        manifest = resolved.image.manifest
        return pb.InspectImageResponse(
            container_image=str(ref),
            registry=ref.registry,
            image_name=ref.repository,
            reference=str(ref.digest) if ref.digest is not None else ref.tag or "latest",
            digest=str(resolved.top.digest),
            container_platform=str(resolved.platform),
            manifest_media_type=manifest.media_type,
            manifest_digest=str(manifest.digest),
            manifest=manifest.data,
            config=resolved.image.config,
        )

    @rpc
    async def GetContainerStatus(
        self,
        request: pb.GetContainerStatusRequest,
        context: grpc.aio.ServicerContext[pb.GetContainerStatusRequest, pb.GetContainerStatusResponse],
    ) -> pb.GetContainerStatusResponse:
        # Like Wave's status endpoint this needs no caller token: the request id is
        # known only to the creator, and the answer carries neither token nor image.
        request_id = request.request_id.strip()
        if len(request_id) != REQUEST_ID_LENGTH or any(c not in "0123456789abcdef" for c in request_id):
            raise invalid_argument(
                "request_id", f"{brief(request_id)} is not a request id (32 lowercase hex characters)"
            )
        record = await self._tokens.get_by_request_id(request_id)
        if record is None:
            raise unknown_request(request_id)
        return _status(record)

    @rpc
    async def UploadLayer(
        self,
        request_iterator: AsyncIterator[pb.UploadLayerRequest],
        context: grpc.aio.ServicerContext[pb.UploadLayerRequest, pb.UploadLayerResponse],
    ) -> pb.UploadLayerResponse:
        await self._callers.authenticate(context)
        return await receive_layer(request_iterator, self._layers, self._config.service.max_layer_size)

    @rpc
    async def RenewContainer(
        self,
        request: pb.RenewContainerRequest,
        context: grpc.aio.ServicerContext[pb.RenewContainerRequest, pb.RenewContainerResponse],
    ) -> pb.RenewContainerResponse:
        record = await self._owned_record(request.container_token, context)
        duration = request.duration.ToTimedelta() if request.HasField("duration") else None
        expiry = renewed_expiry(record, self._clock(), duration, self._config)
        renewed = await self._tokens.renew(record.token, expiry)
        if renewed is None:
            raise unknown_token()
        log.info("renewed %s until %s", token_id(record.token), renewed.expiration.ToJsonString())
        response = pb.RenewContainerResponse(container_token=record.token, expiration=renewed.expiration)
        response.max_expiration.FromSeconds(int(max_expiry(record, self._config)))
        return response
