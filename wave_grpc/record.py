"""What a token record means: the one place that reads a ``ContainerRecord``.

The stored form is the protobuf message (its bytes are the record format every replica
and every store shares). Everything else asks :class:`TokenRecord` what the message
says: when it expires and whether it is live, which platforms it serves, which layers
each platform's image gets and which digests the augmented image must have, who owns
it and whose listing it belongs to. A record is read once per lookup; nothing re-parses
it field by field elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.compression import Compression
from wave_grpc.image.digest import Digest
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.image.rewrite import Augmentation, AugmentedImage, IncludedLayers, InjectedLayer
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.redaction import token_id

# The owner of a record created by a caller without a token.
ANONYMOUS = "anonymous"

# How an unknown, expired or revoked token is answered by the service (the gateway
# answers every kind of miss alike, see ``unknown_token_name``).
_GONE = "the container token is unknown, expired or revoked"


def unknown_token() -> WaveError:
    """The one answer for a token that is unknown, expired or revoked (or a freeze's key)."""
    return WaveError(Errors.NAME_UNKNOWN, _GONE)


def unknown_request(request_id: str) -> WaveError:
    return WaveError(Errors.NAME_UNKNOWN, f"container request {request_id} is unknown, expired or revoked")


def unknown_token_name() -> WaveError:
    """One answer for an unknown, expired or revoked token and for a live token under another
    image path, so that a probe learns nothing about which tokens exist."""
    return WaveError(
        Errors.NAME_UNKNOWN,
        f"no image is served under this name: {_GONE}, or the image path is not the one the token was created for",
    )


def listing_key(owner: str, client_address: str) -> str:
    """Whose tokens a listing shows: the user's, or an anonymous caller's from one address."""
    return owner if owner != ANONYMOUS else f"{ANONYMOUS}@{client_address}"


def record_listing_key(record: pb.ContainerRecord) -> str:
    return listing_key(record.owner, record.creator_address)


def expiry_seconds(record: pb.ContainerRecord) -> float:
    """The record's expiry as epoch seconds (what the stores index it by)."""
    return record.expiration.seconds + record.expiration.nanos / 1e9


def set_expiry(record: pb.ContainerRecord, expires_at: float) -> None:
    """Write ``expires_at`` (epoch seconds) as the record's expiration (a renewal)."""
    record.expiration.FromNanoseconds(round(expires_at * 1e9))


def record_platforms(record: pb.ContainerRecord) -> tuple[pb.PlatformTarget, ...]:
    """The record's platforms: its ``platforms`` list, or the one its single fields describe."""
    if record.platforms:
        return tuple(record.platforms)
    return (
        pb.PlatformTarget(
            platform=record.container_platform,
            source_manifest_digest=record.source_manifest_digest,
            target_manifest_digest=record.target_manifest_digest,
        ),
    )


@dataclass(frozen=True, slots=True, eq=False)
class TokenRecord:
    """A ``ContainerRecord`` read once: its meaning as values."""

    message: pb.ContainerRecord
    source: ImageRef
    platforms: tuple[pb.PlatformTarget, ...]
    expires_at: float
    # Injected layers by digest: the blobs a pull may ask for that the layer store answers.
    injected: dict[Digest, pb.ContainerLayer]

    @classmethod
    def of(cls, message: pb.ContainerRecord) -> TokenRecord:
        layers = message.container_config.layers
        return cls(
            message=message,
            source=ImageRef.parse(message.container_image),
            platforms=record_platforms(message),
            expires_at=expiry_seconds(message),
            injected={Digest.parse(layer.gzip_digest): layer for layer in layers},
        )

    @property
    def token(self) -> str:
        return self.message.container_token

    @property
    def tag(self) -> str:
        """The tag the token's image is served under (the source's, or ``latest``)."""
        return self.source.tag or "latest"

    @property
    def is_freeze(self) -> bool:
        """A freeze's record has a key of the token's form, but it is never a pull capability."""
        return self.message.HasField("freeze")

    def is_live(self, now: float) -> bool:
        return self.expires_at > now

    def owned_by(self, caller: str) -> bool:
        """Only the creator may describe or revoke; a token created anonymously belongs to whoever holds it."""
        return self.message.owner in (ANONYMOUS, caller)

    @property
    def listing_key(self) -> str:
        return record_listing_key(self.message)

    def without_identity(self) -> pb.ContainerRecord:
        """The record as any token holder may see it: without its owner and the creator's address."""
        message = pb.ContainerRecord()
        message.CopyFrom(self.message)
        message.ClearField("owner")
        message.ClearField("creator_address")
        return message

    def described_to(self, caller: str) -> pb.ContainerRecord:
        """What DescribeContainer shows ``caller``: the creator's address only to its authenticated
        owner (a token created anonymously is described to whoever holds it)."""
        if caller != ANONYMOUS and self.message.owner == caller:
            return self.message
        message = pb.ContainerRecord()
        message.CopyFrom(self.message)
        message.ClearField("creator_address")
        return message

    @property
    def pull_key(self) -> str:
        """Whose count a pull adds to (``[limits].pulls_per_minute``): the owner's listing, or,
        when the service did not tell this gateway the owner (no gateway secret), the token's."""
        if not self.message.owner:
            return f"token:{token_id(self.token)}"
        return self.listing_key

    @property
    def index_digest(self) -> str | None:
        """The pinned upstream index, when the source is one (its digest differs from the first manifest's)."""
        first = self.platforms[0].source_manifest_digest
        return self.message.source_digest if self.message.source_digest != first else None

    @property
    def includes(self) -> tuple[ImageRef, ...]:
        return tuple(ImageRef.parse(included.image) for included in self.message.includes)

    def injected_layers(self, platform: Platform) -> tuple[InjectedLayer, ...]:
        """The layers injected into one platform's image: its own and every platform's, in order."""
        return tuple(
            InjectedLayer(
                Digest.parse(layer.gzip_digest),
                layer.gzip_size,
                Digest.parse(layer.tar_digest),
                Compression.of_record(layer.compression),
            )
            for layer in self.message.container_config.layers
            if not layer.platform or layer.platform == str(platform)
        )

    def injected_per_platform(self) -> list[tuple[InjectedLayer, ...]]:
        return [self.injected_layers(Platform.parse(target.platform)) for target in self.platforms]

    def augmentations(self, includes: Sequence[tuple[IncludedLayers, ...]] = ()) -> list[Augmentation]:
        """One augmentation per platform: its injected layers, the shared config overrides,
        and its platform's included layers."""
        cfg = self.message.container_config
        created = self.message.history_created or self.message.create_time.ToJsonString()
        augmentations = []
        for i, target in enumerate(self.platforms):
            platform = Platform.parse(target.platform)
            # The base annotations name the pinned source (a record made by an older service has no digest).
            augmentations.append(
                Augmentation(
                    layers=self.injected_layers(platform),
                    platform=platform,
                    created=created,
                    entrypoint=tuple(cfg.entrypoint),
                    cmd=tuple(cfg.cmd),
                    env=tuple(cfg.env),
                    working_dir=cfg.working_dir,
                    includes=includes[i] if i < len(includes) else (),
                    base_name=self.message.container_image,
                    base_digest=target.source_manifest_digest,
                )
            )
        return augmentations

    def matches(self, image: AugmentedImage) -> bool:
        """Does this augmented image have the digests recorded at creation, on every platform?"""
        return (
            len(image.images) == len(self.platforms)
            and all(
                str(platform.manifest.digest) == target.target_manifest_digest
                for platform, target in zip(image.images, self.platforms, strict=True)
            )
            and str(image.top_level(accepts_index=True).digest) == self.message.target_digest
        )
