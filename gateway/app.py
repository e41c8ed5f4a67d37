"""``create_app(config)``: the gateway as an aiohttp application, no globals."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import render_errors
from gateway.keys import CONFIG, LAYERS, LIMITER, METRICS, RESOLVER, SERVICE, UPSTREAM
from gateway.observe import count_requests
from gateway.resolver import TokenResolver
from gateway.routes import add_routes
from wave_grpc.channel import service_channel
from wave_grpc.config import Config
from wave_grpc.metrics import Metrics
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.content import CountedCache, LocalContentCache, TieredContentCache
from wave_grpc.stores.open import open_layer_store, open_rate_limiter
from wave_grpc.stores.redis import RedisContentCache, redis_client


def create_app(
    config: Config, *, service_address: str | None = None, metrics: Metrics | None = None
) -> web.Application:
    """The gateway app. ``service_address`` overrides ``[gateway].service`` (tests use port 0 servers)."""
    counted = metrics or Metrics()
    # Wave REST bodies carry data: layers inline, up to [gateway].max_body_size.
    app = web.Application(
        middlewares=[count_requests(counted), render_errors], client_max_size=config.gateway.max_body_size
    )
    app[CONFIG] = config
    app[METRICS] = counted
    app[LIMITER] = open_rate_limiter(config.gateway.shared_cache)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        upstream = RegistryClient(config, metrics=counted)
        await upstream.start()
        size = config.service.max_message_size
        channel = service_channel(
            service_address or config.gateway.service,
            config.gateway.service_tls_ca,
            options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)],
        )
        stub = pb_grpc.AugmentServiceStub(channel)
        app[SERVICE] = stub
        app[UPSTREAM] = upstream
        app[LAYERS] = open_layer_store(config, upstream)
        shared = None
        redis = None
        if config.gateway.shared_cache:
            redis, prefix = redis_client(config.gateway.shared_cache)
            shared = CountedCache(RedisContentCache(redis, prefix + "cache:"), counted, "shared")
        local = CountedCache(LocalContentCache(config.gateway.content_cache_bytes), counted, "local")
        content = TieredContentCache(local, shared)
        app[RESOLVER] = TokenResolver(
            stub,
            upstream,
            content,
            record_ttl=config.gateway.record_cache_ttl.total_seconds(),
            max_entries=config.gateway.rewrite_cache_size,
            max_bytes=config.gateway.content_cache_bytes,
            metrics=counted,
            service_address=service_address or config.gateway.service,
        )
        try:
            yield
        finally:
            await channel.close(grace=None)
            await upstream.close()
            if redis is not None:
                await redis.aclose()

    app.cleanup_ctx.append(resources)
    add_routes(app)
    return app
