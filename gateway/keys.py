"""Typed application keys: the resources ``create_app`` opens and closes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from gateway.resolver import TokenResolver
from wave_grpc.channel import Metadata
from wave_grpc.config import Config
from wave_grpc.metrics import Metrics
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.layers import LayerReader
from wave_grpc.stores.limits import RateLimiter

if TYPE_CHECKING:
    # The async stub type exists only in the generated .pyi.
    from wave_grpc.proto.wave.augment.v1.augment_pb2_grpc import AugmentServiceAsyncStub

CONFIG = web.AppKey("config", Config)
RESOLVER = web.AppKey("resolver", TokenResolver)
UPSTREAM = web.AppKey("upstream", RegistryClient)
LAYERS = web.AppKey("layers", LayerReader)
METRICS = web.AppKey("metrics", Metrics)
LIMITER = web.AppKey("limiter", RateLimiter)
# The metadata that proves the gateway to the service (empty without a gateway secret).
GATEWAY_PROOF: web.AppKey[Metadata] = web.AppKey("gateway_proof")
# The AugmentService, over the gateway's one gRPC channel (the Wave REST API calls it).
SERVICE: web.AppKey[AugmentServiceAsyncStub] = web.AppKey("service")
