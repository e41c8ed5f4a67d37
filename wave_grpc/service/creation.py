"""A creation as a sequence of values: request -> :class:`Creation` -> :class:`ResolvedCreation` -> record.

1. :func:`parse_creation` checks what costs nothing first (sizes, counts, lengths of the
   request's fields, before anything is parsed, resolved or stored), then parses every
   field into a value. A request that cannot become a record is refused here.
2. :func:`resolve_creation` pins the source and the included images (the I/O).
3. :func:`build_record` is pure: the record, its augmented image computed once (so a
   broken upstream config is a creation error, not a pull-time surprise) and its digests.
The servicer stores the layers between 2 and 3 and the record after 3.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from wave_grpc.config import Config
from wave_grpc.errors import Errors, WaveError, brief, invalid_argument
from wave_grpc.image.digest import Digest
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import AugmentedImage
from wave_grpc.pinning import (
    MAX_PLATFORMS,
    ResolvedSource,
    SourceResolver,
    augment_record,
    history_created,
    parse_platforms,
    pinned_from,
)
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import TokenRecord
from wave_grpc.service.freeze import build_target

MAX_LAYERS = 100
MAX_INCLUDES = 10  # as Seqera Wave
# Field lengths no honest request comes near; checked before any field is parsed.
MAX_REFERENCE_LENGTH = 1024
MAX_PLATFORM_TEXT = MAX_PLATFORMS * 32
MAX_NAME_LENGTH = 1024  # workflow_id, build_repository
# C0 controls and DEL; tab stays allowed (a value may hold one, runtimes cope).
_CONTROL = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))
_HTTP = ("https://", "http://")


@dataclass(frozen=True, slots=True)
class Creation:
    """A CreateContainer request, bounded and parsed; nothing resolved or stored yet."""

    source: ImageRef
    platforms: tuple[Platform, ...]
    platform_given: bool
    # The config overrides with the request's layers, as given (inline bytes included).
    config: pb.ContainerConfig
    # Layers meant for one platform: index -> the normalised platform.
    layer_platforms: Mapping[int, Platform]
    includes: tuple[ImageRef, ...]
    freeze_target: ImageRef | None
    validate_only: bool
    workflow_id: str


@dataclass(frozen=True, slots=True)
class TokenBounds:
    """What one token's augmented image may be, so that no token costs a gateway more than
    a real image does: every bound is checked at creation, never discovered per pull."""

    max_layers: int
    max_manifest_size: int
    # The gateway keeps an augmented image only under a quarter of its content cache;
    # a bigger one would be rebuilt on every manifest request, so it is refused instead.
    max_image_size: int

    @classmethod
    def of(cls, config: Config) -> TokenBounds:
        return cls(
            max_layers=config.service.max_image_layers,
            max_manifest_size=config.service.max_manifest_size,
            max_image_size=config.gateway.content_cache_bytes // 4,
        )


@dataclass(frozen=True, slots=True)
class ResolvedCreation:
    """A creation with its source and includes pinned for every platform."""

    creation: Creation
    source: ResolvedSource
    includes: tuple[ResolvedSource, ...]

    @property
    def platforms(self) -> tuple[Platform, ...]:
        return tuple(p.platform for p in self.source.platforms)


def _check_sizes(request: pb.CreateContainerRequest, config: Config) -> None:
    """What costs nothing to check, checked before anything is parsed (see the module doc)."""
    for field, text, limit in (
        ("container_image", request.container_image, MAX_REFERENCE_LENGTH),
        ("container_platform", request.container_platform, MAX_PLATFORM_TEXT),
        ("workflow_id", request.workflow_id, MAX_NAME_LENGTH),
        ("build_repository", request.build_repository, MAX_NAME_LENGTH),
    ):
        if len(text) > limit:
            raise invalid_argument(field, f"is {len(text)} characters, over the limit of {limit}")
    cfg = request.container_config
    if len(cfg.layers) > MAX_LAYERS:
        raise invalid_argument("container_config.layers", f"at most {MAX_LAYERS} layers, got {len(cfg.layers)}")
    if len(request.container_includes) > MAX_INCLUDES:
        raise invalid_argument(
            "container_includes", f"at most {MAX_INCLUDES} images, got {len(request.container_includes)}"
        )
    for i, include in enumerate(request.container_includes):
        if len(include) > MAX_REFERENCE_LENGTH:
            raise invalid_argument(
                f"container_includes[{i}]", f"is {len(include)} characters, over the limit of {MAX_REFERENCE_LENGTH}"
            )
    # The overrides end up in the record as they are: a config bigger than the record may
    # be is refused now, before its entries are looked at one by one. Inline layer bytes
    # do not count (they are stored, and the record keeps only their digests).
    overrides = cfg.ByteSize() - sum(layer.ByteSize() for layer in cfg.layers)
    limit = config.service.max_record_size
    if overrides > limit:
        raise invalid_argument(
            "container_config",
            f"env, entrypoint, cmd and working_dir take {overrides} bytes, over the {limit}-byte record limit "
            "([service].max_record_size); put big values (scripts, long env values) into a layer",
        )


def _check_overrides(cfg: pb.ContainerConfig) -> None:
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


def _freeze_target(request: pb.CreateContainerRequest) -> ImageRef | None:
    if not request.freeze:
        if request.build_repository.strip():
            raise invalid_argument(
                "freeze", "is false but build_repository is given; set freeze to push there, or drop build_repository"
            )
        return None
    target = build_target(request.build_repository)
    for i, layer in enumerate(request.container_config.layers):
        if layer.location.strip().startswith(_HTTP):
            raise invalid_argument(
                f"container_config.layers[{i}].location",
                "a freeze copies every layer, and http(s) layer locations are only ever redirected to; "
                "upload the layer (UploadLayer) or send it inline",
            )
    return target


def parse_creation(request: pb.CreateContainerRequest, config: Config) -> Creation:
    """The request as a :class:`Creation`; sizes first, then each field's form."""
    _check_sizes(request, config)
    source = ImageRef.parse(request.container_image)
    platforms = parse_platforms(request.container_platform)
    _check_overrides(request.container_config)
    layer_platforms = {
        i: Platform.parse(layer.platform, field=f"container_config.layers[{i}].platform")
        for i, layer in enumerate(request.container_config.layers)
        if layer.platform.strip()
    }
    includes = tuple(
        ImageRef.parse(text, field=f"container_includes[{i}]") for i, text in enumerate(request.container_includes)
    )
    return Creation(
        source=source,
        platforms=platforms,
        platform_given=bool(request.container_platform.strip()),
        config=request.container_config,
        layer_platforms=layer_platforms,
        includes=includes,
        freeze_target=_freeze_target(request),
        validate_only=request.validate_only,
        workflow_id=request.workflow_id,
    )


async def resolve_image(
    sources: SourceResolver, ref: ImageRef, platforms: tuple[Platform, ...], platform_given: bool
) -> ResolvedSource:
    """The source, pinned; an image the registry does not have is the caller's argument to fix."""
    try:
        return await sources.resolve(ref, platforms, platform_given=platform_given)
    except WaveError as exc:
        if exc.kind in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN, Errors.BLOB_UNKNOWN):
            raise invalid_argument("container_image", exc.message) from None
        raise


async def _resolve_include(
    sources: SourceResolver, index: int, ref: ImageRef, platforms: tuple[Platform, ...]
) -> ResolvedSource:
    """An included image, pinned for every platform of the token; errors name its field."""
    field = f"container_includes[{index}]"
    try:
        return await sources.resolve(ref, platforms, platform_given=True)
    except WaveError as exc:
        if exc.kind in (Errors.INVALID_ARGUMENT, Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN, Errors.BLOB_UNKNOWN):
            raise invalid_argument(field, exc.message.removeprefix("container_platform: ")) from None
        raise


async def resolve_creation(creation: Creation, sources: SourceResolver, bounds: TokenBounds) -> ResolvedCreation:
    source = await resolve_image(sources, creation.source, creation.platforms, creation.platform_given)
    actual = tuple(p.platform for p in source.platforms)
    for i, layer_platform in creation.layer_platforms.items():
        if layer_platform not in actual:
            raise invalid_argument(
                f"container_config.layers[{i}].platform",
                f"{layer_platform} is not a requested platform; requested: {', '.join(map(str, actual))}",
            )
    includes = [await _resolve_include(sources, i, ref, actual) for i, ref in enumerate(creation.includes)]
    resolved = ResolvedCreation(creation, source, tuple(includes))
    _check_layer_count(resolved, bounds)
    return resolved


def _check_layer_count(resolved: ResolvedCreation, bounds: TokenBounds) -> None:
    """Layers per platform, counted from what was resolved, before any layer is stored."""
    creation = resolved.creation
    for i, target in enumerate(resolved.source.platforms):
        base = target.layer_count
        included = sum(include.platforms[i].layer_count for include in resolved.includes)
        injected = sum(
            1
            for j in range(len(creation.config.layers))
            if creation.layer_platforms.get(j, target.platform) == target.platform
        )
        total = base + included + injected
        if total > bounds.max_layers:
            raise invalid_argument(
                "container_includes" if included else "container_config.layers",
                f"the {target.platform} image would have {total} layers ({base} of the source, {included} included, "
                f"{injected} injected), over the limit of {bounds.max_layers} ([service].max_image_layers)",
            )


def _check_image_size(augmented: AugmentedImage, bounds: TokenBounds) -> None:
    blobs = [image.manifest for image in augmented.images] + ([augmented.index] if augmented.index else [])
    for blob in blobs:
        if len(blob.data) > bounds.max_manifest_size:
            raise invalid_argument(
                "container_config",
                f"the augmented {blob.media_type} would be {len(blob.data)} bytes, over the "
                f"{bounds.max_manifest_size}-byte limit ([service].max_manifest_size); include fewer images or layers",
            )
    size = sum(len(blob.data) for blob in blobs) + sum(len(image.config.data) for image in augmented.images)
    if size > bounds.max_image_size:
        raise invalid_argument(
            "container_platform",
            f"the augmented manifests and configs would take {size} bytes, more than a gateway keeps for one image "
            f"({bounds.max_image_size} bytes, a quarter of [gateway].content_cache_bytes); ask for fewer platforms",
        )


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(seconds))
    return ts


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked: the verified user id (or ``anonymous``) and the client address."""

    owner: str
    address: str


def _record(
    resolved: ResolvedCreation, layers: list[pb.ContainerLayer], caller: Caller, now: float, config: Config
) -> pb.ContainerRecord:
    creation, source = resolved.creation, resolved.source
    given = creation.config
    # Built field by field: copying the request would copy inline layer bytes too.
    overrides = pb.ContainerConfig(
        entrypoint=given.entrypoint, cmd=given.cmd, env=given.env, working_dir=given.working_dir, layers=layers
    )
    record = pb.ContainerRecord(
        request_id=uuid.uuid4().hex,
        container_image=str(creation.source),
        source_digest=str(source.top.digest),
        source_manifest_digest=str(source.image.manifest.digest),
        container_platform=str(source.platform),
        container_config=overrides,
        create_time=timestamp(now),
        expiration=timestamp(now + config.service.token_ttl.total_seconds()),
        owner=caller.owner,
        workflow_id=creation.workflow_id,
        creator_address=caller.address,
        history_created=history_created(source.config),
    )
    platforms = resolved.platforms
    if len(platforms) > 1 or resolved.includes:
        record.container_platform = ",".join(map(str, platforms))
        record.includes.extend(
            pb.IncludedImage(image=str(ref), source_digest=str(include.top.digest))
            for ref, include in zip(creation.includes, resolved.includes, strict=True)
        )
        record.platforms.extend(
            pb.PlatformTarget(
                platform=str(p.platform),
                source_manifest_digest=str(p.image.manifest.digest),
                include_manifest_digests=[
                    str(include.platforms[i].image.manifest.digest) for include in resolved.includes
                ],
            )
            for i, p in enumerate(source.platforms)
        )
    return record


def build_record(
    resolved: ResolvedCreation, layers: list[pb.ContainerLayer], caller: Caller, now: float, config: Config
) -> tuple[pb.ContainerRecord, AugmentedImage]:
    """The record (without its token or target name) and its augmented image, digests recorded."""
    for i, layer_platform in resolved.creation.layer_platforms.items():
        layers[i].platform = str(layer_platform)
    record = _record(resolved, layers, caller, now, config)
    augmented = augment_record(pinned_from(resolved.source, resolved.includes), TokenRecord.of(record))
    for target, image in zip(record.platforms, augmented.images, strict=False):
        target.target_manifest_digest = str(image.manifest.digest)
    record.target_manifest_digest = str(augmented.manifest.digest)
    record.target_digest = str(augmented.top_level(accepts_index=True).digest)
    _check_image_size(augmented, TokenBounds.of(config))
    # Checked with the longest target image name, before anything is stored: a record the
    # gateways cannot fetch back would make every pull of the token fail.
    size = record.ByteSize() + len(config.gateway.public_host) + len(resolved.creation.source.repository) + 64
    limit = config.service.max_record_size
    if size > limit:
        raise invalid_argument(
            "container_config",
            f"the token record would be about {size} bytes, over the {limit}-byte limit "
            "([service].max_record_size); put big values (scripts, long env values) into a layer",
        )
    return record, augmented


def pushed_digest(augmented: AugmentedImage) -> Digest:
    """What a freeze pushes under its tag: one platform's manifest, or the index of several."""
    pushed = augmented.index if len(augmented.images) > 1 and augmented.index else augmented.manifest
    return pushed.digest
