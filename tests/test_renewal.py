"""How far a renewal moves a token's expiry (wave_grpc/service/renewal.py), on values."""

from __future__ import annotations

from datetime import timedelta

import pytest

from wave_grpc.config import parse_config
from wave_grpc.errors import WaveError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.record import TokenRecord
from wave_grpc.service.renewal import answered_expiry, renewed_expiry

HOUR = 3600
CREATED = 1_700_000_000
CONFIG = parse_config({"service": {"token_ttl": "1h", "max_token_lifetime": "3h"}}, "c.toml")


def _record(expires_at: int) -> TokenRecord:
    message = pb.ContainerRecord(container_image="docker.io/library/alpine:latest", container_platform="linux/amd64")
    message.create_time.FromSeconds(CREATED)
    message.expiration.FromSeconds(expires_at)
    return TokenRecord.of(message)


def test_a_duration_sets_now_plus_it_up_to_the_maximum() -> None:
    now = CREATED + 600
    assert renewed_expiry(_record(CREATED + HOUR), now, timedelta(hours=2), CONFIG) == now + 2 * HOUR
    with pytest.raises(WaveError, match=r"^duration: renewing for 3:00:00 would end after .*max_token_lifetime"):
        renewed_expiry(_record(CREATED + HOUR), now, timedelta(hours=3), CONFIG)
    with pytest.raises(WaveError, match="must be positive"):
        renewed_expiry(_record(CREATED + HOUR), now, timedelta(0), CONFIG)


def test_without_a_duration_the_ttl_is_capped_never_shortens_and_stops_at_the_maximum() -> None:
    assert renewed_expiry(_record(CREATED + HOUR), CREATED + HOUR // 2, None, CONFIG) == CREATED + 3 * HOUR // 2
    assert renewed_expiry(_record(CREATED + 2 * HOUR), CREATED + 60, None, CONFIG) == CREATED + 2 * HOUR
    near_the_end = CREATED + 2 * HOUR + 1800
    assert renewed_expiry(_record(CREATED + 2 * HOUR + 1900), near_the_end, None, CONFIG) == CREATED + 3 * HOUR
    with pytest.raises(WaveError, match=r"^container_token: the token already expires at .*max_token_lifetime"):
        renewed_expiry(_record(CREATED + 3 * HOUR), near_the_end, None, CONFIG)


def test_an_identical_creation_gives_the_token_what_a_new_one_would_have() -> None:
    assert answered_expiry(_record(CREATED + HOUR), CREATED + 600, CONFIG) == CREATED + 600 + HOUR
    assert answered_expiry(_record(CREATED + 2 * HOUR), CREATED + 600, CONFIG) is None
    assert answered_expiry(_record(CREATED + 2 * HOUR), CREATED + 2 * HOUR + 1800, CONFIG) == CREATED + 3 * HOUR


def test_the_token_ttl_may_not_pass_the_maximum_lifetime() -> None:
    with pytest.raises(ValueError, match=r"token_ttl: .* is longer than max_token_lifetime"):
        parse_config({"service": {"token_ttl": "40d"}}, "c.toml")
