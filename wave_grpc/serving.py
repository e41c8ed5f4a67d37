"""Running the service and the gateway: one process, or a gateway worker pool.

With ``[gateway] workers`` above 1 the parent binds the gateway's listening
socket itself and hands it to worker processes, which all accept on it. This
is the classic pre-fork model: one bind (so a busy port is an error, not a
silently shared port as with SO_REUSEPORT), and every core serves requests.
Workers share nothing in process; Redis (``shared_cache``) shares the caches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

from aiohttp import web

from gateway.access_log import AccessLog
from gateway.app import create_app
from gateway.connections import ConnectionGuard, serve_guarded
from wave_grpc.config import Config
from wave_grpc.service.server import serve

log = logging.getLogger("wave_grpc")


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


async def _gateway_on_socket(config: Config, sock: socket.socket) -> GatewayListener:
    access_log = logging.getLogger("gateway.access") if config.gateway.access_log else None
    runner = web.AppRunner(
        create_app(config),
        access_log=access_log,
        access_log_class=AccessLog,
        # Also runs before a connection's first request: a request head that does not
        # arrive in time (a slow or idle client) ends the connection.
        keepalive_timeout=config.gateway.idle_timeout.total_seconds(),
    )
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(config.gateway.max_connections)
    server = await serve_guarded(runner.server, sock, guard)
    return GatewayListener(runner, server)


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
        return subprocess.Popen(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self._procs = [self._spawn() for _ in range(self._count)]
        log.info("gateway workers: %s", ", ".join(str(p.pid) for p in self._procs))

    async def watch(self) -> None:
        """Restart a worker that exits on its own (at most once a second)."""
        while not self._stopping:
            await asyncio.sleep(1)
            for i, proc in enumerate(self._procs):
                if proc.poll() is not None and not self._stopping:
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


async def run_servers(config: Config, only: str | None, ready: Callable[[str], None] = print) -> None:
    """Run what ``serve`` asks for until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limit = raise_open_file_limit()
    if limit < config.gateway.max_connections + 256:
        log.warning(
            "open-file limit %d leaves little room above [gateway].max_connections = %d; raise the limit (ulimit -n)",
            limit,
            config.gateway.max_connections,
        )
    service = None
    runner: GatewayListener | None = None
    pool: WorkerPool | None = None
    watcher: asyncio.Task[None] | None = None
    sock: socket.socket | None = None
    try:
        if only in (None, "service"):
            service = await serve(config)
            ready(f"AugmentService listening on {config.service.listen.rsplit(':', 1)[0]}:{service.port}")
        if only in (None, "gateway"):
            sock = _bind(config.gateway.listen)
            workers = config.gateway.workers or os.cpu_count() or 1
            if workers == 1:
                runner = await _gateway_on_socket(config, sock)
            else:
                if config.source.startswith("<"):
                    raise ServeError("gateway workers need a config file: pass --config")
                pool = WorkerPool(config, sock, workers)
                pool.start()
                watcher = asyncio.create_task(pool.watch())
            ready(
                f"gateway listening on {config.gateway.listen} with {workers} worker(s) "
                f"(images named {config.gateway.public_host}/wt/...)"
            )
        await stop.wait()
        log.info("shutting down")
    finally:
        if watcher is not None:
            watcher.cancel()
        if pool is not None:
            await pool.stop()
        if runner is not None:
            await runner.cleanup()
        if sock is not None:
            sock.close()
        if service is not None:
            await service.stop()


async def run_gateway_worker(config: Config, fd: int) -> None:
    """One worker of the pool: serve the inherited socket until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    raise_open_file_limit()
    sock = socket.socket(fileno=fd)
    runner = await _gateway_on_socket(config, sock)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        sock.close()
