"""Run the AugmentService: ``serve(...) -> (server, port)``, health and reflection on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from wave_grpc.config import Config
from wave_grpc.metrics import Metrics
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.registry.client import RegistryClient
from wave_grpc.service.freeze import FreezeRunner
from wave_grpc.service.rpc_metrics import RpcMetrics
from wave_grpc.service.servicer import AugmentServicer, add_to_server
from wave_grpc.stores.blobcache import SiteCache
from wave_grpc.stores.gc import collect_layers, evict_cache
from wave_grpc.stores.layers import LayerStore
from wave_grpc.stores.open import open_layer_store, open_rate_limiter, open_site_cache, open_token_store
from wave_grpc.stores.tokens import TokenStore

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AugmentService"].full_name


def _server_credentials(config: Config) -> grpc.ServerCredentials:
    key, cert = Path(config.service.tls_key).read_bytes(), Path(config.service.tls_cert).read_bytes()
    if config.service.tls_client_ca:  # mutual TLS: a client without a certificate the CA signed is refused
        client_ca = Path(config.service.tls_client_ca).read_bytes()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


@dataclass
class RunningService:
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    tokens: TokenStore
    upstream: RegistryClient
    layers: LayerStore
    freezes: FreezeRunner
    # What serve opened before the server (registry client, stores, freeze runner), closed last-opened first.
    resources: contextlib.AsyncExitStack
    collector: asyncio.Task[None] | None = None
    resumer: asyncio.Task[None] | None = None

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful: report NOT_SERVING, let calls in flight finish, then release resources.

        Freezes being copied stop where they are; the next start resumes them.
        """
        for task in (self.collector, self.resumer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.resources.aclose()


def _grpc_server(config: Config, metrics: Metrics | None) -> grpc.aio.Server:
    size = config.service.max_message_size
    return grpc.aio.server(
        interceptors=[RpcMetrics(metrics)] if metrics is not None else [],
        options=[
            # grpcio shares busy ports by default; a second server must fail instead.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            # Idle client connections are closed (each holds a descriptor); a TLS or HTTP/2
            # handshake that does not finish in time is dropped.
            ("grpc.max_connection_idle_ms", int(config.service.idle_timeout.total_seconds() * 1000)),
            ("grpc.server_handshake_timeout_ms", 10_000),
        ],
        maximum_concurrent_rpcs=config.service.max_concurrent_rpcs,
    )


async def serve(config: Config, *, listen: str | None = None, metrics: Metrics | None = None) -> RunningService:
    """Start the service on ``listen`` (``host:0`` picks a free port).

    Resources open in order on one exit stack: a failure halfway (a busy port, a
    store that cannot be opened) closes those already open, last first.
    """
    async with contextlib.AsyncExitStack() as opened:
        upstream = RegistryClient(config, metrics=metrics)
        await upstream.start()
        opened.push_async_callback(upstream.close)
        # Creations of blobs = "cache" routes resolve through [cache].store (tags by HEAD).
        site = open_site_cache(config, upstream, metrics)
        if site is not None:
            opened.push_async_callback(site.close)
        tokens = open_token_store(config.service.store)
        opened.push_async_callback(tokens.close)
        layers = open_layer_store(config, upstream)
        opened.push_async_callback(layers.close)
        limiter = open_rate_limiter(config.service.store)
        servicer = AugmentServicer(config, tokens, layers, upstream, metrics=metrics, limiter=limiter)
        opened.push_async_callback(servicer.freezes.close)
        server = _grpc_server(config, metrics)
        add_to_server(servicer, server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        address = listen or config.service.listen
        try:
            if config.service.tls_cert:
                port = server.add_secure_port(address, _server_credentials(config))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address} for the AugmentService: {exc}") from None
        await server.start()
        resources = opened.pop_all()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    # Debug: `serve` prints its own "listening" line for each listener (wave_grpc/serving.py).
    log.debug("AugmentService listening on %s", address.rsplit(":", 1)[0] + f":{port}")
    running = RunningService(server, port, health, tokens, upstream, layers, servicer.freezes, resources)
    # Freezes a restart interrupted (or a replica that died) go on here.
    running.resumer = asyncio.create_task(servicer.freezes.resume_periodically(), name="freeze resumption")
    if config.layers.gc_interval is not None:
        running.collector = asyncio.create_task(
            collect_periodically(tokens, layers, config, metrics, site), name="layer garbage collection"
        )
    return running


async def collect_periodically(
    tokens: TokenStore, layers: LayerStore, config: Config, metrics: Metrics | None, site: SiteCache | None = None
) -> None:
    """Garbage-collect the layer store (and evict from the site cache) every [layers].gc_interval;
    a failed run is logged and retried."""
    assert config.layers.gc_interval is not None
    interval = config.layers.gc_interval.total_seconds()
    while True:
        await asyncio.sleep(interval)
        if site is not None:
            await _evict_site_cache(tokens, config, site)
        try:
            collected = await collect_layers(
                tokens, layers, config.layers.gc_grace.total_seconds(), lock_ttl=max(interval, 60.0)
            )
        except Exception:
            log.exception("layer garbage collection failed; retrying in %gs", interval)
            continue
        if collected is None:
            log.info("layer garbage collection: another replica is collecting")
            continue
        if metrics is not None:
            metrics.layers_collected.inc(len(collected.removed))
        log.info(
            "layer garbage collection removed %d layer(s), freed %d bytes, kept %d",
            len(collected.removed),
            collected.freed,
            collected.kept,
        )


async def _evict_site_cache(tokens: TokenStore, config: Config, site: SiteCache) -> None:
    try:
        evicted = await evict_cache(tokens, config, site)
    except Exception:
        log.exception("site cache eviction failed; retrying at the next collection")
        return
    if evicted is not None and evicted.removed:
        log.info("site cache: evicted %d blob(s), freed %d bytes", len(evicted.removed), evicted.freed)
