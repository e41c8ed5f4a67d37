"""The gateway's listening socket, guarded: a cap on open connections per process.

aiohttp has no connection limit of its own, and every idle connection holds a
file descriptor: a few thousand of them would stop the process from answering
anyone (the gRPC service in the same process included). Past the cap a new
connection gets an immediate ``503`` with ``Retry-After`` and is closed, so a
client sees a clear, retryable answer instead of a hang. The timeouts that end
idle and slow connections are aiohttp's ``keepalive_timeout`` (which also runs
before a connection's first request, so a request head must arrive in time)
and the body and send timeouts in the handlers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from prometheus_client import Gauge

log = logging.getLogger("gateway")

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 113\r\nConnection: close\r\n\r\n"
    b'{"errors":[{"code":"TOOMANYREQUESTS","message":"this gateway is at its connection limit; retry in a second"}]}'
)


class ConnectionGuard:
    def __init__(self, limit: int, gauge: Gauge | None = None) -> None:
        self.limit = limit
        self.active = 0
        self.refused = 0
        self._gauge = gauge

    def admit(self) -> None:
        self.active += 1
        if self._gauge is not None:
            self._gauge.inc()

    def release(self) -> None:
        self.active -= 1
        if self._gauge is not None:
            self._gauge.dec()


class _Counted(asyncio.Protocol):
    """Forwards every callback to the aiohttp protocol it wraps, counting the connection."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.active >= self._guard.limit:
            self._guard.refused += 1
            if self._guard.refused == 1 or self._guard.refused % 1000 == 0:
                log.warning("connection limit (%d) reached; %d refused so far", self._guard.limit, self._guard.refused)
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(_BUSY)
            transport.close()
            return
        self._admitted = True
        self._guard.admit()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self._guard.release()
            self._inner.connection_lost(exc)


async def serve_guarded(
    factory: Callable[[], asyncio.Protocol], sock: socket.socket, guard: ConnectionGuard
) -> asyncio.Server:
    """Accept on ``sock`` (already listening) with ``factory``'s protocols, at most ``guard.limit`` at once."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Counted(factory(), guard), sock=sock)
