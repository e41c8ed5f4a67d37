"""Running the service and the gateway: one process, or a gateway worker pool.

With ``[gateway] workers`` above 1 the parent binds the gateway's listening
socket itself and hands it to worker processes, which all accept on it. This
is the classic pre-fork model: one bind (so a busy port is an error, not a
silently shared port as with SO_REUSEPORT), and every core serves requests.
Workers share nothing in process; Redis (``shared_cache``) shares the caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace

from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.access_log import AccessLog
from gateway.app import create_app
from gateway.connections import ConnectionGuard, serve_guarded
from wave_grpc.admin import CHECK_TIMEOUT, Readiness, ReadinessCheck, create_admin_app, run_check
from wave_grpc.channel import service_channel
from wave_grpc.config import Config
from wave_grpc.config.registries import Secret
from wave_grpc.errors import WaveError
from wave_grpc.image.jsonbound import JsonLimits, use_limits
from wave_grpc.metrics import MULTIPROCESS_ENV, Metrics, enable_multiprocess, forget_process
from wave_grpc.service.server import SERVICE_NAME, RunningService, serve
from wave_grpc.stores.cachestores import FileCacheStore
from wave_grpc.stores.layers import FileLayerStore
from wave_grpc.stores.redis import redis_client, safe_url

log = logging.getLogger("wave_grpc")

# How `serve` hands its per-process gateway secret to its gateway workers (never a config key).
_WORKER_PROOF_ENV = "WAVE_GRPC_WORKER_GATEWAY_SECRET"


class ServeError(OSError):
    """A listening address could not be taken."""


def _bind(listen: str) -> socket.socket:
    host, port = listen.rsplit(":", 1)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), int(port)))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {listen} for the gateway: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class GatewayListener:
    """The gateway app on a listening socket: aiohttp's runner behind the connection guard."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self.runner = runner
        self.server = server

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()
        AccessLog.flush()


async def _gateway_on_socket(config: Config, sock: socket.socket, metrics: Metrics) -> GatewayListener:
    access_log = logging.getLogger("gateway.access") if config.gateway.access_log else None
    runner = web.AppRunner(
        create_app(config, metrics=metrics),
        access_log=access_log,
        access_log_class=AccessLog,
        # Also runs before a connection's first request: a request head that does not
        # arrive in time (a slow or idle client) ends the connection.
        keepalive_timeout=config.gateway.idle_timeout.total_seconds(),
        # A SIGTERM closes the listener at once and lets requests and streams in flight finish.
        shutdown_timeout=config.gateway.shutdown_grace.total_seconds(),
    )
    try:
        await runner.setup()
        assert runner.server is not None
        guard = ConnectionGuard(config.gateway.max_connections, metrics.live_connections)
        server = await serve_guarded(runner.server, sock, guard)
    except BaseException:
        # The app's resources that did open (its cleanup contexts) close again.
        await runner.cleanup()
        raise
    return GatewayListener(runner, server)


def loop_factory(config: Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``[gateway] event_loop`` names, for ``asyncio.Runner`` (None: the standard one)."""
    if config.gateway.event_loop != "uvloop":
        return None
    try:
        import uvloop  # only a process that asks for it needs it
    except ImportError:
        raise ServeError(
            f'{config.source}: [gateway] event_loop = "uvloop", but uvloop is not installed; '
            'pip install uvloop, or set event_loop = "asyncio"'
        ) from None
    return uvloop.new_event_loop


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; answer the limit in force.

    Every connection holds a descriptor: the default soft limit (often 1024) is what
    a flood of idle connections exhausted.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


class WorkerPool:
    """Gateway worker processes accepting on one inherited socket; restarted if they die."""

    def __init__(self, config: Config, sock: socket.socket, count: int) -> None:
        self._config = config
        self._sock = sock
        self._count = count
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        fd = self._sock.fileno()
        argv = [sys.executable, "-m", "wave_grpc.cli", "gateway-worker"]
        argv += ["--config", self._config.source, "--fd", str(fd)]
        env = dict(os.environ)
        secret = self._config.service.gateway_secret
        if secret is not None and not self._config.service.gateway_secret_env:
            env[_WORKER_PROOF_ENV] = secret.value  # made by this process: the config file does not name it
        return subprocess.Popen(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL, env=env)

    def start(self) -> None:
        self._procs = [self._spawn() for _ in range(self._count)]
        log.info("gateway workers: %s", ", ".join(str(p.pid) for p in self._procs))

    async def watch(self) -> None:
        """Restart a worker that exits on its own (at most once a second)."""
        while not self._stopping:
            await asyncio.sleep(1)
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None and not self._stopping:
                    forget_process(proc.pid)
                    log.error("gateway worker %d exited with %s; restarting it", proc.pid, proc.returncode)
                    self._procs[i] = self._spawn()

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                await asyncio.to_thread(proc.wait, grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


def _readiness(config: Config, service: RunningService | None, gateway: bool) -> list[ReadinessCheck]:
    """What this process needs to answer, each named with its address and config key."""
    checks: list[ReadinessCheck] = []
    if service is not None:
        checks.append(
            ReadinessCheck("token store", safe_url(config.service.store), "[service].store", service.tokens.ping)
        )
    if gateway:

        async def augment_service() -> None:
            async with service_channel(
                config.gateway.service,
                config.gateway.service_tls_ca,
                cert_file=config.gateway.service_tls_cert,
                key_file=config.gateway.service_tls_key,
            ) as channel:
                answer = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=CHECK_TIMEOUT
                )
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError(f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)}")

        checks.append(ReadinessCheck("AugmentService", config.gateway.service, "[gateway].service", augment_service))
        if config.gateway.shared_cache:

            async def shared_cache() -> None:
                client, _ = redis_client(config.gateway.shared_cache)
                try:
                    await client.ping()
                finally:
                    await client.aclose()

            checks.append(
                ReadinessCheck(
                    "shared cache", safe_url(config.gateway.shared_cache), "[gateway].shared_cache", shared_cache
                )
            )
    return checks


async def _start_admin(config: Config, metrics: Metrics, readiness: Readiness) -> web.AppRunner:
    host, _, port = config.admin.listen.rpartition(":")
    runner = web.AppRunner(create_admin_app(metrics, readiness), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    except OSError as exc:
        await runner.cleanup()
        raise ServeError(
            f"cannot listen on {config.admin.listen} for the admin endpoints ([admin].listen): {exc.strerror}"
        ) from None
    return runner


def _stop_on_signals() -> asyncio.Event:
    """An event set by the first SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _use_upstream_parse_limits(config: Config) -> None:
    """Every parse of upstream JSON in this process measures it against ``[upstream]``'s limits."""
    upstream = config.upstream
    use_limits(JsonLimits(upstream.max_json_values, upstream.max_json_depth, upstream.max_layers))


def _warn_on_open_file_limit(config: Config) -> None:
    limit = raise_open_file_limit()
    if limit < config.gateway.max_connections + 256:
        log.warning(
            "open-file limit %d leaves little room above [gateway].max_connections = %d; raise the limit (ulimit -n)",
            limit,
            config.gateway.max_connections,
        )


async def _start_service(
    config: Config, metrics: Metrics, opened: contextlib.AsyncExitStack, ready: Callable[[str], None]
) -> RunningService:
    service = await serve(config, metrics=metrics)
    opened.push_async_callback(service.stop, config.service.shutdown_grace.total_seconds())
    if isinstance(service.layers, FileLayerStore):
        store = service.layers
        metrics.sample("wave_grpc_layer_store_bytes", "Bytes of layers in the layer store", lambda: store.stored_bytes)
    ready(f"AugmentService listening on {config.service.listen.rsplit(':', 1)[0]}:{service.port}")
    try:
        await service.tokens.ping()
    except WaveError as exc:
        log.warning("%s; creations and pulls fail until it answers", exc.message)
    return service


def _sample_site_cache(config: Config, metrics: Metrics) -> None:
    """``wave_grpc_blob_cache_stored_bytes``: a file:// site cache's size, read from the directory at
    each scrape (the service and every gateway process fill it; none knows the total); 0 when no
    route caches. An oci:// store's size is its registry's to tell, so it is not exported."""
    if config.cache.store_url.scheme != "file":
        return
    caching = any(route.blobs == "cache" for route in config.registries)
    store = FileCacheStore(config.cache.file_root)
    metrics.sample(
        "wave_grpc_blob_cache_stored_bytes",
        "Bytes of blobs in a file:// site cache",
        lambda: store.stored_bytes if caching else 0,
    )


async def _start_gateway(config: Config, metrics: Metrics, opened: contextlib.AsyncExitStack, workers: int) -> None:
    """The gateway on its listening socket: in this process, or in ``workers`` worker processes."""
    sock = _bind(config.gateway.listen)
    opened.callback(sock.close)
    if workers <= 1:
        runner = await _gateway_on_socket(config, sock, metrics)
        opened.push_async_callback(runner.cleanup)
        return
    if config.source.startswith("<"):
        raise ServeError("gateway workers need a config file: pass --config")
    pool = WorkerPool(config, sock, workers)
    pool.start()
    # Each worker drains for [gateway].shutdown_grace; a little more before it is killed.
    opened.push_async_callback(pool.stop, config.gateway.shutdown_grace.total_seconds() + 5)
    watcher = asyncio.create_task(pool.watch())
    opened.callback(watcher.cancel)


def with_gateway_secret(config: Config, only: str | None) -> Config:
    """The config with the secret the gateway proves itself with: [service].gateway_secret_env's,
    or, when one process runs both faces and none is named, a random one for this process."""
    if config.service.gateway_secret is not None:
        return config
    if only is None:
        return replace(config, service=replace(config.service, gateway_secret=Secret(secrets.token_urlsafe(32))))
    if only == "gateway":
        log.warning(
            "no [service].gateway_secret_env: the service cannot tell this gateway from any other caller, so "
            "REST callers' addresses are not forwarded and [limits].pulls_per_minute counts pulls per token; "
            "name an environment variable holding one secret in both the service's and the gateway's config"
        )
    return config


async def _warn_if_unanswered(checks: list[ReadinessCheck]) -> None:
    """One warning at start per dependency that does not answer (a gateway alone: its AugmentService)."""
    for failed in await asyncio.gather(*(run_check(check) for check in checks)):
        if failed is not None:
            log.warning(
                "the %s at %s (%s) is not answering: %s; pulls fail until it does",
                failed["dependency"],
                failed["address"],
                failed["key"],
                failed["problem"],
            )


async def run_servers(config: Config, only: str | None, ready: Callable[[str], None] = print) -> None:
    """Run what ``serve`` asks for until SIGTERM or SIGINT, then shut down gracefully.

    Everything opens on one exit stack, so a failure halfway (a busy port) closes
    what was already open, and shutdown closes in reverse order of opening.
    """
    stop = _stop_on_signals()
    config = with_gateway_secret(config, only)
    _warn_on_open_file_limit(config)
    _use_upstream_parse_limits(config)
    workers = config.gateway.workers or os.cpu_count() or 1
    gateway = only in (None, "gateway")
    pooled = gateway and workers > 1
    async with contextlib.AsyncExitStack() as opened:
        if pooled:
            # Before any metric exists: the workers inherit the directory and write there too.
            enable_multiprocess(opened.enter_context(tempfile.TemporaryDirectory(prefix="wave-grpc-metrics-")))
        metrics = Metrics()
        _sample_site_cache(config, metrics)
        readiness = Readiness()
        if config.admin.listen:
            # First open, last closed: /readyz answers 503 while starting and while draining.
            admin = await _start_admin(config, metrics, readiness)
            opened.push_async_callback(admin.cleanup)
            ready(f"admin endpoints on {config.admin.listen} (/metrics, /healthz, /readyz)")
        service = await _start_service(config, metrics, opened, ready) if only in (None, "service") else None
        if gateway:
            await _start_gateway(config, metrics, opened, workers if pooled else 1)
            ready(
                f"gateway listening on {config.gateway.listen} with {workers} worker(s) "
                f"(images named {config.gateway.public_host}/wt/...)"
            )
        checks = _readiness(config, service, gateway)
        readiness.started(checks)
        # What is alive now lives as long as the process: kept out of every later collection,
        # a full one scans only what requests left (it paused the loop 50-65 ms at 1,000 creations/s).
        gc.freeze()
        if only == "gateway":
            warned = asyncio.create_task(_warn_if_unanswered(checks), name="dependency check at start")
            opened.callback(warned.cancel)
        # Closed first: from the first SIGTERM on, readiness is 503 while the listeners
        # close and in-flight requests and streams finish (up to each face's shutdown_grace).
        opened.callback(readiness.drain)
        await stop.wait()
        log.info("shutting down")


async def run_gateway_worker(config: Config, fd: int) -> None:
    """One worker of the pool: serve the inherited socket until SIGTERM."""
    stop = _stop_on_signals()
    raise_open_file_limit()
    _use_upstream_parse_limits(config)
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory:
        enable_multiprocess(directory)
    inherited = os.environ.pop(_WORKER_PROOF_ENV, "")
    if inherited and config.service.gateway_secret is None:
        config = replace(config, service=replace(config.service, gateway_secret=Secret(inherited)))
    with socket.socket(fileno=fd) as sock:
        runner = await _gateway_on_socket(config, sock, Metrics())
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
