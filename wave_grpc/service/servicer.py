"""The AugmentService: a typed ``grpc.aio`` servicer."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from wave_grpc.addresses import ip_literal
from wave_grpc.channel import CLIENT_ADDRESS_METADATA
from wave_grpc.config import Config
from wave_grpc.errors import Errors, WaveError, brief, invalid_argument
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import decode_data_location
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.metrics import Metrics
from wave_grpc.pinning import (
    ResolvedSource,
    SourceResolver,
    augment_record,
    history_created,
    parse_platforms,
    pinned_from,
)
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.redaction import token_id
from wave_grpc.registry.client import RegistryClient
from wave_grpc.registry.policy import check_layer_location
from wave_grpc.service.auth import Authenticator, bearer_token
from wave_grpc.service.freeze import FreezeRunner, build_target, check_push_allowed, frozen_tag
from wave_grpc.stores.layers import STORE_SCHEME, ExpectedLayer, LayerStore, iterate_bytes, store_location
from wave_grpc.stores.limits import LocalRateLimiter, RateLimiter
from wave_grpc.stores.tokens import ANONYMOUS, TokenStore, listing_key

log = logging.getLogger(__name__)

TOKEN_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_LENGTH = 12  # 36**12 is about 2**62
MAX_LAYERS = 100
MAX_INCLUDES = 10  # as Seqera Wave
REQUEST_ID_LENGTH = 32  # uuid4().hex
# C0 controls and DEL; tab stays allowed (a value may hold one, runtimes cope).
_CONTROL = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))
# An upload that sends nothing for this long is abandoned, so an idle client cannot pin a stream.
UPLOAD_IDLE_TIMEOUT = 60.0
MIN_AVERAGE_CHUNK = 16 << 10
DEFAULT_PAGE = 100
MAX_PAGE = 1000

SMALL_CHUNK_ALLOWANCE = 64  # messages before the average is judged

_S = TypeVar("_S", bound="AugmentServicer")
_In = TypeVar("_In")  # the request, or the request stream of a client-streaming RPC
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclass(frozen=True, slots=True)
class Malformed:
    """What a request's bytes decode to when they are not the message (see ``add_to_server``)."""

    message: str


def tolerant(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer that turns undecodable bytes into :class:`Malformed` instead of
    raising: grpc would answer a raising deserializer with a bare INTERNAL/UNKNOWN."""

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Malformed(
                f"the request is not a valid {message_class.DESCRIPTOR.full_name} message (malformed protobuf bytes)"
            )

    return parse


def add_to_server(servicer: AugmentServicer, server: grpc.aio.Server) -> None:
    """Register the servicer like the generated ``add_AugmentServiceServicer_to_server``,
    with tolerant request deserializers."""
    service = pb.DESCRIPTOR.services_by_name["AugmentService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make = grpc.stream_unary_rpc_method_handler if method.client_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=tolerant(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def new_token() -> str:
    return "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(TOKEN_LENGTH))


def _rpc(
    method: Callable[[_S, _In, grpc.aio.ServicerContext[_Req, _Resp]], Awaitable[_Resp]],
) -> Callable[[_S, _In, grpc.aio.ServicerContext[_Req, _Resp]], Awaitable[_Resp]]:
    """Turn expected errors into their gRPC status and bugs into INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: _S, request: _In, context: grpc.aio.ServicerContext[_Req, _Resp]) -> _Resp:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            return await method(self, request, context)
        except WaveError as exc:
            log.info("%s: %s %s", method.__name__, exc.kind.grpc_status.name, exc.message)
            await context.abort(exc.kind.grpc_status, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("%s failed (incident %s)", method.__name__, incident)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the service log")
        raise AssertionError("unreachable")

    return wrapper


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(seconds))
    return ts


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
        self._auth = auth or Authenticator.from_config(config)
        self._metrics = metrics or Metrics()
        self._limiter = limiter or LocalRateLimiter()
        ttl = config.upstream.tag_cache_ttl
        self._sources = SourceResolver(upstream, ttl.total_seconds() if ttl is not None else None)
        self.freezes = freezes or FreezeRunner(config, tokens, layers, upstream, self._metrics)

    # -- callers ------------------------------------------------------------

    async def authenticate(
        self,
        context: grpc.aio.ServicerContext[_Req, _Resp],
        tower_access_token: str = "",
        tower_endpoint: str = "",
    ) -> str:
        """The caller's user id (wave_grpc/auth.py); 'authorization' metadata wins over tower_access_token."""
        token = bearer_token(context.invocation_metadata()) or tower_access_token.strip()
        return await self._auth.authenticate(token, tower_endpoint)

    def client_address(self, context: grpc.aio.ServicerContext[_Req, _Resp]) -> str:
        """The caller's address: its own, or the one a trusted proxy (the gateway) forwarded."""
        peer = context.peer() or ""
        kind, _, rest = peer.partition(":")
        address = rest.rsplit(":", 1)[0].strip("[]") if kind in ("ipv4", "ipv6") else kind or "unknown"
        if address in self._config.service.trusted_proxies:
            for key, value in context.invocation_metadata() or ():
                if key == CLIENT_ADDRESS_METADATA and isinstance(value, str) and ip_literal(value) is not None:
                    return str(ip_literal(value))
        return address

    async def _check_rate(self, counter: str, key: str, limit: int, config_key: str) -> None:
        if not limit:
            return
        wait = await self._limiter.hit(f"{counter}:{key}", limit)
        if wait is not None:
            self._metrics.rate_limited.labels(counter).inc()
            raise WaveError(
                Errors.TOO_MANY_REQUESTS,
                f"{key} is over {limit} {counter}s a minute ({config_key}); retry in {wait:.0f}s",
                retry_after=wait,
            )

    async def _admit(
        self,
        context: grpc.aio.ServicerContext[_Req, _Resp],
        tower_access_token: str,
        tower_endpoint: str,
        counter: str,
    ) -> tuple[str, str]:
        """The caller (user id, client address), past authentication and ``[limits].creates_per_minute``."""
        owner = await self.authenticate(context, tower_access_token, tower_endpoint)
        address = self.client_address(context)
        await self._check_rate(
            counter, listing_key(owner, address), self._config.limits.creates_per_minute, "[limits].creates_per_minute"
        )
        return owner, address

    async def _resolve(self, ref: ImageRef, platforms: tuple[Platform, ...], platform_given: bool) -> ResolvedSource:
        """The source, pinned; an image the registry does not have is the caller's argument to fix."""
        try:
            return await self._sources.resolve(ref, platforms, platform_given=platform_given)
        except WaveError as exc:
            if exc.kind in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN, Errors.BLOB_UNKNOWN):
                raise invalid_argument("container_image", exc.message) from None
            raise

    @staticmethod
    def _check_owner(record: pb.ContainerRecord, caller: str) -> None:
        """Only the creator may describe or revoke; a token created anonymously belongs to whoever holds it."""
        if record.owner != ANONYMOUS and record.owner != caller:
            raise WaveError(
                Errors.DENIED,
                "the container token belongs to another user; use the token of the caller that created it",
            )

    # -- layers -------------------------------------------------------------

    async def _prepare_layer(self, index: int, layer: pb.ContainerLayer) -> pb.ContainerLayer:
        field = f"container_config.layers[{index}]"
        location = layer.location.strip()
        if location.startswith("data:"):
            data = decode_data_location(location, f"{field}.location")
            if len(data) > self._config.service.inline_layer_limit:
                raise invalid_argument(
                    f"{field}.location",
                    f"inline layer is {len(data)} bytes, over the {self._config.service.inline_layer_limit} "
                    "byte limit; upload it with UploadLayer and pass the answered layer",
                )
            digests, _ = await self._layers.put(
                iterate_bytes(data),
                ExpectedLayer(field, layer.gzip_digest, layer.gzip_size, layer.tar_digest),
            )
            return pb.ContainerLayer(
                location=store_location(digests.gzip_digest),
                gzip_digest=str(digests.gzip_digest),
                gzip_size=digests.gzip_size,
                tar_digest=str(digests.tar_digest),
            )
        if location.startswith(STORE_SCHEME):
            digest = Digest.parse(location[len(STORE_SCHEME) :], field=f"{field}.location")
            # Marked referenced before the record exists: garbage collection keeps the layer
            # from now on, or it is already gone and the caller is told to upload it again.
            if not await self._layers.reference(digest):
                raise invalid_argument(
                    f"{field}.location",
                    f"layer {digest} is not in the layer store (never uploaded, or collected after "
                    "[layers].gc_grace without a token); upload it with UploadLayer again",
                )
            size = await self._layers.size(digest)
            tar_digest = await self._layers.tar_digest(digest)
            if size is None or tar_digest is None:
                raise invalid_argument(
                    f"{field}.location",
                    f"layer {digest} is not in the layer store; upload it with UploadLayer first",
                )
            for name, given, actual in (
                ("gzip_digest", layer.gzip_digest, str(digest)),
                ("tar_digest", layer.tar_digest, str(tar_digest)),
            ):
                if given and given != actual:
                    raise invalid_argument(f"{field}.{name}", f"given {given} but the stored layer has {actual}")
            if layer.gzip_size and layer.gzip_size != size:
                raise invalid_argument(f"{field}.gzip_size", f"given {layer.gzip_size} but the stored layer has {size}")
            return pb.ContainerLayer(
                location=location, gzip_digest=str(digest), gzip_size=size, tar_digest=str(tar_digest)
            )
        if location.startswith(("https://", "http://")):
            # Runtimes are sent to this URL: only hosts the operator listed.
            check_layer_location(self._config, location, f"{field}.location")
            Digest.parse(layer.gzip_digest, field=f"{field}.gzip_digest")
            Digest.parse(layer.tar_digest, field=f"{field}.tar_digest")
            if layer.gzip_size <= 0:
                raise invalid_argument(f"{field}.gzip_size", "is required (> 0) for an http(s) location")
            return pb.ContainerLayer(
                location=location,
                gzip_digest=layer.gzip_digest,
                gzip_size=layer.gzip_size,
                tar_digest=layer.tar_digest,
            )
        if not location:
            raise invalid_argument(
                f"{field}.location", "is empty; give data:<base64>, an http(s) URL or an uploaded layer"
            )
        raise invalid_argument(
            f"{field}.location",
            f"unsupported location {location[:32]!r}; use data:<base64>, http(s):// or {STORE_SCHEME}sha256:...",
        )

    @staticmethod
    def _layer_platforms(cfg: pb.ContainerConfig) -> dict[int, Platform]:
        """Layers meant for one platform: index -> the normalised platform."""
        return {
            i: Platform.parse(layer.platform, field=f"container_config.layers[{i}].platform")
            for i, layer in enumerate(cfg.layers)
            if layer.platform.strip()
        }

    @staticmethod
    def _include_refs(includes: Sequence[str]) -> list[ImageRef]:
        if len(includes) > MAX_INCLUDES:
            raise invalid_argument("container_includes", f"at most {MAX_INCLUDES} images, got {len(includes)}")
        return [ImageRef.parse(text, field=f"container_includes[{i}]") for i, text in enumerate(includes)]

    async def _resolve_include(self, index: int, ref: ImageRef, platforms: tuple[Platform, ...]) -> ResolvedSource:
        """An included image, pinned for every platform of the token; errors name its field."""
        field = f"container_includes[{index}]"
        try:
            return await self._sources.resolve(ref, platforms, platform_given=True)
        except WaveError as exc:
            if exc.kind in (Errors.INVALID_ARGUMENT, Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN, Errors.BLOB_UNKNOWN):
                raise invalid_argument(field, exc.message.removeprefix("container_platform: ")) from None
            raise

    @staticmethod
    def _check_config(cfg: pb.ContainerConfig) -> None:
        # NUL and control characters in a config value break runtimes (an exec
        # argv or an environment cannot hold NUL) or hide what a value says.
        for field, values in (
            ("env", cfg.env),
            ("entrypoint", cfg.entrypoint),
            ("cmd", cfg.cmd),
            ("working_dir", [cfg.working_dir]),
        ):
            for i, value in enumerate(values):
                bad = next((c for c in value if c in _CONTROL), None)
                if bad is not None:
                    where = f"container_config.{field}" + ("" if field == "working_dir" else f"[{i}]")
                    raise invalid_argument(
                        where, f"holds the control character U+{ord(bad):04X}; remove NUL and control characters"
                    )
        for i, entry in enumerate(cfg.env):
            name, sep, _ = entry.partition("=")
            if not sep or not name or any(c.isspace() for c in name):
                raise invalid_argument(f"container_config.env[{i}]", f"{brief(entry)} is not NAME=value")
        if cfg.working_dir and not cfg.working_dir.startswith("/"):
            raise invalid_argument("container_config.working_dir", f"{brief(cfg.working_dir)} must be an absolute path")
        if len(cfg.layers) > MAX_LAYERS:
            raise invalid_argument("container_config.layers", f"at most {MAX_LAYERS} layers, got {len(cfg.layers)}")

    # -- RPCs ---------------------------------------------------------------

    @_rpc
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
        owner, address = await self._admit(
            context,
            request.tower_access_token,
            request.tower_endpoint,
            "validate" if request.validate_only else "create",
        )
        ref = ImageRef.parse(request.container_image)
        platforms = parse_platforms(request.container_platform)
        self._check_config(request.container_config)
        layer_platforms = self._layer_platforms(request.container_config)
        include_refs = self._include_refs(request.container_includes)
        frozen: ImageRef | None = None
        if request.freeze:
            frozen = build_target(request.build_repository)
            check_push_allowed(self._upstream, frozen)
            for i, layer in enumerate(request.container_config.layers):
                if layer.location.strip().startswith(("https://", "http://")):
                    raise invalid_argument(
                        f"container_config.layers[{i}].location",
                        "a freeze copies every layer, and http(s) layer locations are only ever redirected to; "
                        "upload the layer (UploadLayer) or send it inline",
                    )
        elif request.build_repository.strip():
            raise invalid_argument(
                "freeze", "is false but build_repository is given; set freeze to push there, or drop build_repository"
            )
        resolved = await self._resolve(ref, platforms, bool(request.container_platform.strip()))
        actual = tuple(p.platform for p in resolved.platforms)
        for i, layer_platform in layer_platforms.items():
            if layer_platform not in actual:
                raise invalid_argument(
                    f"container_config.layers[{i}].platform",
                    f"{layer_platform} is not a requested platform; requested: {', '.join(map(str, actual))}",
                )
        includes = [await self._resolve_include(i, include, actual) for i, include in enumerate(include_refs)]
        if request.validate_only:
            # Everything but the layers (they are what the caller has not sent yet) is checked.
            return pb.CreateContainerResponse(
                container_image=str(ref), source_digest=str(resolved.top.digest), freeze=request.freeze
            )
        layers = [await self._prepare_layer(i, layer) for i, layer in enumerate(request.container_config.layers)]
        for i, layer_platform in layer_platforms.items():
            layers[i].platform = str(layer_platform)
        given = request.container_config
        # Built field by field: copying the request would copy inline layer bytes too.
        config = pb.ContainerConfig(
            entrypoint=given.entrypoint, cmd=given.cmd, env=given.env, working_dir=given.working_dir, layers=layers
        )

        now = self._clock()
        tag = ref.tag or "latest"
        record = pb.ContainerRecord(
            request_id=uuid.uuid4().hex,
            container_image=str(ref),
            source_digest=str(resolved.top.digest),
            source_manifest_digest=str(resolved.image.manifest.digest),
            container_platform=str(resolved.platform),
            container_config=config,
            create_time=_timestamp(now),
            expiration=_timestamp(now + self._config.service.token_ttl.total_seconds()),
            owner=owner,
            workflow_id=request.workflow_id,
            creator_address=address,
            history_created=history_created(resolved.config),
        )
        if len(actual) > 1 or includes:
            record.container_platform = ",".join(map(str, actual))
            record.includes.extend(
                pb.IncludedImage(image=str(include_ref), source_digest=str(include.top.digest))
                for include_ref, include in zip(include_refs, includes, strict=True)
            )
            record.platforms.extend(
                pb.PlatformTarget(
                    platform=str(p.platform),
                    source_manifest_digest=str(p.image.manifest.digest),
                    include_manifest_digests=[str(include.platforms[i].image.manifest.digest) for include in includes],
                )
                for i, p in enumerate(resolved.platforms)
            )
        # Compute the augmented image once now, so a broken upstream config is a
        # creation error rather than a pull-time surprise.
        augmented = augment_record(pinned_from(resolved, includes), record)
        for target, image in zip(record.platforms, augmented.images, strict=False):
            target.target_manifest_digest = str(image.manifest.digest)
        record.target_manifest_digest = str(augmented.manifest.digest)
        record.target_digest = str(augmented.top_level(accepts_index=True).digest)
        # Checked with the longest target image name, before anything is stored: a record the
        # gateways cannot fetch back would make every pull of the token fail.
        size = record.ByteSize() + len(self._config.gateway.public_host) + len(ref.repository) + 64
        limit = self._config.service.max_record_size
        if size > limit:
            raise invalid_argument(
                "container_config",
                f"the token record would be about {size} bytes, over the {limit}-byte limit "
                "([service].max_record_size); put big values (scripts, long env values) into a layer",
            )
        if frozen is not None:
            # One platform is pushed as its manifest; several as an index of them.
            pushed = augmented.index if len(augmented.images) > 1 and augmented.index else augmented.manifest
            return await self._store_freeze(record, ref, frozen, pushed.digest)
        for _ in range(5):
            token = new_token()
            record.container_token = token
            record.target_image = f"{self._config.gateway.public_host}/wt/{token}/{ref.repository}:{tag}"
            if await self._tokens.put(record):
                break
        else:
            raise WaveError(Errors.INTERNAL, "could not allocate a unique token")
        log.info(
            "created %s for %s (%s, %s) owner=%s",
            token_id(token),
            ref,
            record.source_digest,
            record.container_platform,
            owner,
        )
        return pb.CreateContainerResponse(
            container_token=token,
            target_image=record.target_image,
            expiration=record.expiration,
            container_image=str(ref),
            request_id=record.request_id,
            source_digest=record.source_digest,
            target_digest=record.target_digest,
        )

    async def _store_freeze(
        self, record: pb.ContainerRecord, ref: ImageRef, frozen: ImageRef, manifest_digest: Digest
    ) -> pb.CreateContainerResponse:
        """Keep the request (the copy's state, its layers referenced) and start the copy."""
        record.target_image = f"{frozen.registry}/{frozen.repository}:{frozen_tag(ref, manifest_digest)}"
        # The tag resolves to what is pushed under it: one platform's manifest, or the index.
        record.target_digest = str(manifest_digest)
        record.freeze.CopyFrom(
            pb.FreezeState(
                build_repository=f"{frozen.registry}/{frozen.repository}", status=pb.CONTAINER_STATUS_PENDING
            )
        )
        for _ in range(5):
            # The record's key, never answered: a freeze's record is not a pull capability.
            record.container_token = new_token()
            if await self._tokens.put(record):
                break
        else:
            raise WaveError(Errors.INTERNAL, "could not allocate a unique request key")
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

    async def _live_record(self, token: str) -> pb.ContainerRecord:
        if len(token) != TOKEN_LENGTH or any(c not in TOKEN_ALPHABET for c in token):
            raise invalid_argument("container_token", "is not a token (12 lowercase letters and digits)")
        record = await self._tokens.get(token)
        # A freeze's record has a key of the token's form, but it is never a token.
        if record is None or record.HasField("freeze"):
            raise WaveError(Errors.NAME_UNKNOWN, "the container token is unknown, expired or revoked")
        return record

    async def _owned_record(self, token: str, context: grpc.aio.ServicerContext[_Req, _Resp]) -> pb.ContainerRecord:
        """The live record, if the caller may act on it (describe, revoke)."""
        caller = await self.authenticate(context)
        record = await self._live_record(token)
        self._check_owner(record, caller)
        return record

    @_rpc
    async def GetContainer(
        self,
        request: pb.GetContainerRequest,
        context: grpc.aio.ServicerContext[pb.GetContainerRequest, pb.GetContainerResponse],
    ) -> pb.GetContainerResponse:
        # The token is itself the capability: whoever holds it may pull, so may describe.
        return pb.GetContainerResponse(container=await self._live_record(request.container_token))

    @_rpc
    async def RevokeContainer(
        self,
        request: pb.RevokeContainerRequest,
        context: grpc.aio.ServicerContext[pb.RevokeContainerRequest, pb.RevokeContainerResponse],
    ) -> pb.RevokeContainerResponse:
        await self._owned_record(request.container_token, context)
        if not await self._tokens.revoke(request.container_token):
            raise WaveError(Errors.NAME_UNKNOWN, "the container token is unknown, expired or revoked")
        log.info("revoked %s", token_id(request.container_token))
        return pb.RevokeContainerResponse(container_token=request.container_token)

    @_rpc
    async def DescribeContainer(
        self,
        request: pb.DescribeContainerRequest,
        context: grpc.aio.ServicerContext[pb.DescribeContainerRequest, pb.DescribeContainerResponse],
    ) -> pb.DescribeContainerResponse:
        return pb.DescribeContainerResponse(container=await self._owned_record(request.container_token, context))

    @_rpc
    async def ListContainers(
        self,
        request: pb.ListContainersRequest,
        context: grpc.aio.ServicerContext[pb.ListContainersRequest, pb.ListContainersResponse],
    ) -> pb.ListContainersResponse:
        caller = await self.authenticate(context)
        size = request.page_size or DEFAULT_PAGE
        if not 0 < size <= MAX_PAGE:
            raise invalid_argument("page_size", f"must be between 1 and {MAX_PAGE}, got {request.page_size}")
        text = request.page_token.strip()
        if text and not (text.isdigit() and len(text) < 10):
            raise invalid_argument("page_token", "is not a page token; pass the next_page_token of the last page")
        offset = int(text or 0)
        # One more than the page, to know whether another page follows.
        records = await self._tokens.listed(listing_key(caller, self.client_address(context)), offset, size + 1)
        return pb.ListContainersResponse(
            containers=[
                pb.ContainerSummary(
                    container_token="" if r.HasField("freeze") else r.container_token,
                    target_image=r.target_image,
                    container_image=r.container_image,
                    container_platform=r.container_platform,
                    create_time=r.create_time,
                    expiration=r.expiration,
                    request_id=r.request_id,
                    freeze=r.HasField("freeze"),
                )
                for r in records[:size]
            ],
            next_page_token=str(offset + size) if len(records) > size else "",
        )

    @_rpc
    async def InspectImage(
        self,
        request: pb.InspectImageRequest,
        context: grpc.aio.ServicerContext[pb.InspectImageRequest, pb.InspectImageResponse],
    ) -> pb.InspectImageResponse:
        # An inspection costs the upstream what a creation does: limited on its own count.
        await self._admit(context, request.tower_access_token, request.tower_endpoint, "inspect")
        ref = ImageRef.parse(request.container_image)
        platform = Platform.parse(request.container_platform)
        resolved = await self._resolve(ref, (platform,), bool(request.container_platform.strip()))
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

    @_rpc
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
            raise WaveError(Errors.NAME_UNKNOWN, f"container request {request_id} is unknown, expired or revoked")
        if record.HasField("freeze"):
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
        # Augmentation is finished when CreateContainer answers: nothing is built later.
        return pb.GetContainerStatusResponse(
            request_id=record.request_id,
            status=pb.CONTAINER_STATUS_DONE,
            succeeded=True,
            create_time=record.create_time,
            duration=Duration(),
            expiration=record.expiration,
        )

    @_rpc
    async def UploadLayer(
        self,
        request_iterator: AsyncIterator[pb.UploadLayerRequest],
        context: grpc.aio.ServicerContext[pb.UploadLayerRequest, pb.UploadLayerResponse],
    ) -> pb.UploadLayerResponse:
        await self.authenticate(context)
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise invalid_argument("chunk", "the upload stream is empty; send the tar.gz bytes in chunk")
        if isinstance(first, Malformed):
            raise invalid_argument("chunk", first.message)
        limit = self._config.service.max_layer_size
        declared = first.gzip_size
        if declared > limit:
            raise invalid_argument(
                "gzip_size",
                f"{declared} bytes is over this service's {limit} byte layer limit ([service].max_layer_size)",
            )
        expected = ExpectedLayer("layer", first.gzip_digest, declared, first.tar_digest)

        async def chunks() -> AsyncIterator[bytes]:
            # Sizes are enforced as bytes arrive, so an over-long stream is cut off
            # at the limit instead of filling the disk before the final check.
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
                    next_message = await asyncio.wait_for(anext(request_iterator, None), UPLOAD_IDLE_TIMEOUT)
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

        digests, created = await self._layers.put(chunks(), expected)
        log.info("stored layer %s (%d bytes, new=%s)", digests.gzip_digest, digests.gzip_size, created)
        return pb.UploadLayerResponse(
            layer=pb.ContainerLayer(
                location=store_location(digests.gzip_digest),
                gzip_digest=str(digests.gzip_digest),
                gzip_size=digests.gzip_size,
                tar_digest=str(digests.tar_digest),
            ),
            created=created,
        )
