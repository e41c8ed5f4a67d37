"""``create_app(config)``: the gateway as an aiohttp application, no globals."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from aiohttp import web

from gateway.errors import oci_errors
from gateway.keys import CONFIG, LAYERS, RESOLVER, UPSTREAM
from gateway.resolver import TokenResolver
from gateway.routes import add_routes
from wave_grpc.config import Config
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc
from wave_grpc.server import open_layer_store
from wave_grpc.upstream import RegistryClient


def create_app(config: Config, *, service_address: str | None = None) -> web.Application:
    """The gateway app. ``service_address`` overrides ``[gateway].service`` (tests use port 0 servers)."""
    app = web.Application(middlewares=[oci_errors])
    app[CONFIG] = config
    app[LAYERS] = open_layer_store(config)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        upstream = RegistryClient(config)
        await upstream.start()
        channel = grpc.aio.insecure_channel(service_address or config.gateway.service)
        app[UPSTREAM] = upstream
        app[RESOLVER] = TokenResolver(
            pb_grpc.AugmentServiceStub(channel),
            upstream,
            record_ttl=config.gateway.record_cache_ttl.total_seconds(),
            max_entries=config.gateway.rewrite_cache_size,
        )
        try:
            yield
        finally:
            await channel.close(grace=None)
            await upstream.close()

    app.cleanup_ctx.append(resources)
    add_routes(app)
    return app
