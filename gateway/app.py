"""``create_app(config)``: the gateway as an aiohttp application, no globals.

Each resource is opened and closed by its own ``cleanup_ctx`` generator, in the
order they depend on each other. aiohttp closes, in reverse, exactly those that
opened, so a failure halfway through startup leaks nothing opened before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.clients import GUESSES, TokenGuesses
from gateway.keys import CONFIG, GATEWAY_PROOF, LAYERS, LIMITER, METRICS, RESOLVER, SERVICE, UPSTREAM
from gateway.resolver import TokenResolver
from gateway.routes import add_routes
from wave_grpc.channel import gateway_proof, service_channel
from wave_grpc.config import Config
from wave_grpc.metrics import Metrics
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.content import CountedCache, LocalContentCache, TieredContentCache
from wave_grpc.stores.open import open_layer_reader, open_rate_limiter, open_site_cache
from wave_grpc.stores.redis import RedisContentCache, redis_client

# Only the resolver reads the content cache: the key stays in this module.
CONTENT = web.AppKey("content", TieredContentCache)

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def _upstream(config: Config, metrics: Metrics) -> CleanupContext:
    async def upstream(app: web.Application) -> AsyncIterator[None]:
        client = RegistryClient(config, metrics=metrics)
        await client.start()
        # Routes with blobs = "cache" are served from [cache].store through the client.
        site = open_site_cache(config, client, metrics)
        app[UPSTREAM] = client
        try:
            yield
        finally:
            if site is not None:
                await site.close()
            await client.close()

    return upstream


async def _layer_reader(app: web.Application) -> AsyncIterator[None]:
    # A reader only: the gateway serves blobs the service wrote (an oci:// one talks through UPSTREAM).
    app[LAYERS] = open_layer_reader(app[CONFIG], app[UPSTREAM])
    yield


def _service(config: Config, service_address: str) -> CleanupContext:
    async def service(app: web.Application) -> AsyncIterator[None]:
        size = config.service.max_message_size
        channel = service_channel(
            service_address,
            config.gateway.service_tls_ca,
            cert_file=config.gateway.service_tls_cert,
            key_file=config.gateway.service_tls_key,
            options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)],
        )
        app[SERVICE] = pb_grpc.AugmentServiceStub(channel)
        try:
            yield
        finally:
            await channel.close(grace=None)

    return service


async def _content_cache(app: web.Application) -> AsyncIterator[None]:
    config, metrics = app[CONFIG], app[METRICS]
    local = CountedCache(LocalContentCache(config.gateway.content_cache_bytes), metrics, "local")
    if not config.gateway.shared_cache:
        app[CONTENT] = TieredContentCache(local, None)
        yield
        return
    redis, prefix = redis_client(config.gateway.shared_cache)
    try:
        shared = CountedCache(RedisContentCache(redis, prefix + "cache:"), metrics, "shared")
        app[CONTENT] = TieredContentCache(local, shared)
        yield
    finally:
        await redis.aclose()


def _resolver(service_address: str) -> CleanupContext:
    async def resolver(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        app[RESOLVER] = TokenResolver(
            app[SERVICE],
            app[UPSTREAM],
            app[CONTENT],
            record_ttl=config.gateway.record_cache_ttl.total_seconds(),
            max_entries=config.gateway.rewrite_cache_size,
            max_bytes=config.gateway.content_cache_bytes,
            metrics=app[METRICS],
            service_address=service_address,
            proof=app[GATEWAY_PROOF],
        )
        yield

    return resolver


def create_app(
    config: Config, *, service_address: str | None = None, metrics: Metrics | None = None
) -> web.Application:
    """The gateway app. ``service_address`` overrides ``[gateway].service`` (tests use port 0 servers)."""
    counted = metrics or Metrics()
    address = service_address or config.gateway.service
    # Wave REST bodies carry data: layers inline, up to [gateway].max_body_size.
    # No middlewares: each route's handler is observed where the route is added (gateway/observe.py).
    app = web.Application(client_max_size=config.gateway.max_body_size)
    app[CONFIG] = config
    app[METRICS] = counted
    app[LIMITER] = open_rate_limiter(config.gateway.shared_cache)
    secret = config.service.gateway_secret
    app[GATEWAY_PROOF] = gateway_proof(secret.value if secret is not None else "")
    app[GUESSES] = TokenGuesses(app[LIMITER], config.limits.token_misses_per_minute, counted)
    app.cleanup_ctx.extend(
        (_upstream(config, counted), _layer_reader, _service(config, address), _content_cache, _resolver(address))
    )
    add_routes(app, counted)
    return app
